"""Training input: batch streams over shard sets (see ``shards.format``).

Two streams, both split explicitly by rank and DataLoader worker:

- ``BatchStream``: infinite and resampled. Each rank draws blocks independently with
  replacement, in chunks seeded by (seed, rank, world_size, chunk) and dealt whole to
  DataLoader workers, so no rank can run out of batches before another and a stream can start
  at any batch without reading the ones before (``start``); the trainer counts steps.
- ``EpochStream``: exact epochs. Epoch e is one permutation of every image, seeded by
  (seed, e) and identical on every rank, cut into equal numbers of batches per rank, so a
  world of ranks sees each image exactly once (or, optionally, pads or drops a remainder).

Rank and world size are plain arguments: this module never reads the launch environment, and
its loaders must never go through ``accelerator.prepare`` (which would re-shard or broadcast).

Bad data (``on_error``): by default a missing, truncated or corrupt shard raises a one-line
``ShardError`` naming the file, at construction when indexing finds it (every tar header is
read then) and otherwise when a block fails to decode. With ``on_error="skip"`` such a shard is
dropped at construction with a ``ShardWarning`` naming it (see ``skipped_shards``), a block that
fails to decode later is skipped with a warning naming shard and block, and every batch carries
three extra keys (plain Python values, so they cost no shared-memory tensor between processes
and no device sync): ``"skipped_blocks"`` and ``"skipped_images"``, what the worker that made
the batch skipped since its previous batch (a bad block met by two workers is counted by each),
and ``"skipped_block_ids"``, the (shard, start, images) of each block that worker found bad
since then: what a caller collects to count every bad block once, whatever the workers and
ranks (``distsim.training.streams``). When nothing readable is left, the stream raises.

Verified reads (``verify_blocks=True``, the default): before a block is first decoded, its
bytes are checked against the CRC32 its manifest records, so a flipped byte or a zeroed block is
a bad block as above (raised, or skipped and counted), never silently trained on or scored. A
stream (in each worker) checks a block again only when its shard file changed (inode, size or
mtime): hashing every re-read of the resampled stream would cost about 15% of its throughput,
checking each block once costs one ``fstat`` per read after the first pass. ``verify=True``
additionally checks each shard's sha256 at construction (reading every byte once). Sets written
before block checksums existed load with one ``UnverifiedShardsWarning`` per set and process,
and are read unverified.

Decoding never unpickles: every ``.npy`` member is loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from distsim.data.shardsets import (
    SUPPORTED_IMAGE_DTYPES,
    OnError,
    ShardWarning,
    check_on_error,
    index_shard_set,
)
from shards.format import (
    IMAGE_KEY,
    BlockRef,
    Manifest,
    ShardError,
    decode_block,
    read_block,
)

# The most a resampled stream's chunk holds in memory (per DataLoader worker).
CHUNK_BYTES = 1 << 30
_TORCH_DTYPES = {**SUPPORTED_IMAGE_DTYPES, "int64": torch.int64}  # images and labels
Remainder = Literal["split", "pad", "drop"]
_REMAINDER = ("split", "pad", "drop")

Arrays = tuple[np.ndarray, dict[str, np.ndarray]]  # images (K, C, H, W), labels {name: (K, ...)}


def _batch_tensor(shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    torch_dtype = _TORCH_DTYPES[dtype]
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch_dtype)
    # In a DataLoader worker, allocate in shared memory (as default_collate does): sending the
    # batch to the main process then costs no extra copy.
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * torch_dtype.itemsize)
    return torch.empty(0, dtype=torch_dtype).set_(storage, 0, shape)


class _ShardStream(IterableDataset):
    """What both streams share: validation, the block index, and reading with on_error."""

    def __init__(
        self,
        directory: str | Path,
        manifest: Manifest,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        labels: Sequence[str],
        on_error: OnError,
        verify: bool,
        verify_blocks: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1 or seed < 0:
            raise ValueError(f"need batch_size >= 1 and seed >= 0, got {batch_size}, {seed}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        check_on_error(on_error)
        unknown = [name for name in labels if name not in manifest.labels]
        if unknown:
            raise ValueError(f"{directory}: no label(s) {unknown}; it has {list(manifest.labels)}")
        self.directory = Path(directory)
        self.manifest = manifest
        self.batch_size = batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.labels = tuple(labels)
        self.on_error: OnError = on_error
        self.verify_blocks = verify_blocks
        # Indexed once here, in the main process, so a corrupt shard fails before training starts
        # and workers inherit the index instead of re-reading every tar header.
        self.blocks, self.skipped_shards = index_shard_set(
            directory, manifest, on_error=on_error, verify=verify
        )
        self._counts = np.array([b.count for b in self.blocks], np.int64)  # (blocks,)
        self._ends = np.cumsum(self._counts)  # (blocks,) last image + 1, over readable blocks
        self._members = tuple(f"{name}.npy" for name in (IMAGE_KEY, *self.labels))
        # Worker-local, like all state below (each worker holds its own copy of the dataset).
        # Blocks whose bytes matched their checksum, per shard, with the shard file's (inode,
        # size, mtime) then: unchanged bytes re-read later are not hashed again.
        self._verified: dict[int, tuple[tuple[int, int, int], set[int]]] = {}
        # Skipped since the last yielded batch.
        self._skipped_blocks = 0
        self._skipped_images = 0
        self._bad_blocks: list[tuple[int, int, int]] = []  # (shard, start, images)

    @property
    def num_images(self) -> int:
        """Images in the readable shards (the manifest's count less skipped shards)."""
        return int(self._ends[-1])

    def _read(self, ref: BlockRef) -> Arrays | None:
        """A decoded block, or None when it is bad and on_error is "skip"."""
        path = self.directory / self.manifest.shards[ref.shard].name
        # Opening per block costs microseconds next to reading ~0.5 MB, and keeps file
        # descriptors bounded however many shards a set has.
        try:
            with open(path, "rb") as f:
                checked = self._checked(ref, os.fstat(f.fileno())) if self.verify_blocks else None
                verify = checked is not None and ref.start not in checked
                data = read_block(f, ref, self._members, verify=verify)
            if checked is not None:
                checked.add(ref.start)  # its bytes matched (or it has no checksum to match)
            return decode_block(data, self.manifest)
        except (ValueError, OSError, EOFError) as e:  # ShardError is a ValueError
            message = f"{path}: block {ref.key}: {e}"
            if self.on_error == "raise":
                raise ShardError(message) from None
            warnings.warn(f"{message}; skipping its {ref.count} images", ShardWarning, 2)
            self._skipped_blocks += 1  # the caller counts the images it loses
            self._bad_blocks.append((ref.shard, ref.start, ref.count))
            return None

    def _checked(self, ref: BlockRef, stat: os.stat_result) -> set[int]:
        """The blocks (start offsets) of ``ref``'s shard already checked against its file as
        the file is now (``stat``); the caller adds ``ref`` once it is."""
        file = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        seen = self._verified.get(ref.shard)
        if seen is None or seen[0] != file:  # first read, or the file changed since
            seen = self._verified[ref.shard] = (file, set())
        return seen[1]

    def _new_batch(self, size: int) -> dict[str, Any]:
        """Uninitialised {"image": (size, C, H, W), label: (size, *shape)} tensors to fill."""
        m = self.manifest
        specs = [(IMAGE_KEY, m.image_shape, m.image_dtype)]
        specs += [(k, m.labels[k].shape, m.labels[k].dtype) for k in self.labels]
        return {k: _batch_tensor((size, *shape), dtype) for k, shape, dtype in specs}

    def _finish(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.on_error == "skip":
            batch["skipped_blocks"] = self._skipped_blocks
            batch["skipped_images"] = self._skipped_images
            batch["skipped_block_ids"] = self._bad_blocks
            self._skipped_blocks = self._skipped_images = 0
            self._bad_blocks = []
        return batch


def chunk_position(index: int, num_workers: int, batches_per_chunk: int) -> tuple[int, int]:
    """(chunk, batch within the chunk) that a rank's batch number ``index`` (0-based) comes from.

    Batch ``index`` is made by DataLoader "role" ``index % num_workers`` (see ``BatchStream``),
    whose ``index // num_workers``-th batch it is; role r owns chunks r, r + W, r + 2W, ...
    (W = ``num_workers``), each played whole, in order. So a chunk's batches all come from one
    worker, which decodes it once, and ``num_workers=1`` (or 0) gives chunk ``index // K``.
    """
    workers, k = max(1, num_workers), batches_per_chunk
    role, local = index % workers, index // workers
    return role + workers * (local // k), local % k


class BatchStream(_ShardStream):
    """Endless batches {"image": (B, C, H, W) image tensor, label: (B, *shape)} from a shard set.

    Images stay in their stored dtype (uint8 for eyes: 4x less host-to-device traffic than
    float); the trainer converts on the device. For ``on_error`` and the extra batch keys in
    skip mode, see the module docstring.

    Chunks. A rank's stream is cut into chunks of K = ``batches_per_chunk`` =
    max(1, ceil(min(shuffle_buffer * block_size, CHUNK_BYTES / bytes per image) / batch_size))
    batches. Chunk c has its own
    generator, seeded by (seed, rank, world_size, c): it picks blocks uniformly, with
    replacement, until it holds at least K * batch_size images (about ``shuffle_buffer`` blocks,
    so a batch mixes that many), permutes them and cuts the first K * batch_size into its K
    batches (the few left over are dropped). Blocks are whole, so uniform blocks give every
    image the same frequency, also those of a shard's smaller last block (picking blocks in
    proportion to their size, as a uniform image index would, makes an image's frequency
    proportional to its block's size).
    A chunk is therefore a pure function of (seed, rank, world_size, c, the shard set).

    Order, workers and resume. The DataLoader reads its workers round-robin from worker 0, so
    with W workers (W = 1 for ``num_workers=0``) the rank's batch g comes from worker
    (g - start) % W. Worker w of a stream started at ``start`` plays role r = (w + start) % W
    and makes batches g = start + w, start + w + W, ...; role r owns chunks c = r (mod W), and
    ``chunk_position`` maps g to its (chunk, batch) (role r's l-th batch is batch l % K of
    chunk r + W * (l // K)). So every chunk is decoded by one worker only, and batch g is the
    same whatever ``start`` is: ``start=s`` yields exactly the batches ``start=0`` yields from
    its s-th (0-based) on, bitwise, with the same (shard set, batch_size, rank, world_size,
    seed, labels, shuffle_buffer, num_workers). Starting costs at most the decoding of one
    chunk per worker, skipped batches of which are not even gathered; earlier chunks are never
    touched. The order depends on ``num_workers``: resume with the same value. (Changing it
    only permutes batches within windows of W * K: window m holds chunks m W ... m W + W - 1.)
    Each ``iter()`` of a loader restarts at ``start``; the trainer counts its batches.

    Skip mode: a block that fails to decode is counted (``skipped_blocks``, ``skipped_images``,
    once per worker), never read again by that worker, and its draw is replaced by the chunk's
    next draw, so chunks stay deterministic (for a given set of bad blocks) and resume exactly.

    ``max_images=n`` draws from the first n (readable) images of the set only, in manifest
    order, e.g. a gaze estimator trained on N and on 4N images of one set. The block holding
    the n-th image is cut after it; blocks are still drawn uniformly, so the cut block's images
    come exactly as often as any other.
    """

    def __init__(
        self,
        directory: str | Path,
        manifest: Manifest,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        labels: Sequence[str] = ("gaze",),
        shuffle_buffer: int = 4,
        *,
        on_error: OnError = "raise",
        verify: bool = False,
        verify_blocks: bool = True,
        start: int = 0,
        max_images: int | None = None,
    ) -> None:
        if shuffle_buffer < 0:
            raise ValueError(f"need shuffle_buffer >= 0, got {shuffle_buffer}")
        if isinstance(start, bool) or not isinstance(start, int | np.integer) or start < 0:
            raise ValueError(f"need an integer start >= 0, got {start!r}")
        super().__init__(
            directory,
            manifest,
            batch_size,
            rank,
            world_size,
            seed,
            labels,
            on_error,
            verify,
            verify_blocks,
        )
        self.shuffle_buffer = shuffle_buffer
        self.start = int(start)
        if max_images is not None:
            self._keep_first(max_images)
        # About shuffle_buffer blocks a chunk, but never more than CHUNK_BYTES of images and
        # labels, whatever a manifest's block_size says: a set of a few small blocks may name
        # a block size of millions.
        m = manifest
        per_image = math.prod(m.image_shape) * np.dtype(m.image_dtype).itemsize
        per_image += sum(math.prod(m.labels[k].shape) * np.dtype(m.labels[k].dtype).itemsize
                         for k in self.labels)  # fmt: skip
        blocks_images = min(shuffle_buffer * m.block_size, max(1, CHUNK_BYTES // per_image))
        self.batches_per_chunk = max(1, -(-blocks_images // batch_size))  # exact ceil

    def _keep_first(self, n: int) -> None:
        if not 1 <= n <= self.num_images:
            raise ValueError(
                f"{self.directory}: max_images {n}, but the set has {self.num_images} images"
            )
        keep = int(np.searchsorted(self._ends, n, "left")) + 1  # blocks holding them
        before = int(self._ends[keep - 2]) if keep > 1 else 0
        last = dataclasses.replace(self.blocks[keep - 1], count=n - before)
        self.blocks = [*self.blocks[: keep - 1], last]
        self._counts = np.array([b.count for b in self.blocks], np.int64)  # (blocks,)
        self._ends = np.cumsum(self._counts)  # (blocks,)

    def _read(self, ref: BlockRef) -> Arrays | None:
        part = super()._read(ref)
        if part is not None and len(part[0]) > ref.count:  # the block max_images cuts
            images, labels = part
            return images[: ref.count], {k: v[: ref.count] for k, v in labels.items()}
        return part

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        if worker is None:
            return self.worker_batches(0, 1)
        return self.worker_batches(worker.id, worker.num_workers)

    def worker_batches(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        """What DataLoader worker ``worker`` of ``num_workers`` yields (``__iter__`` in it)."""
        workers = max(1, num_workers)
        if not 0 <= worker < workers:
            raise ValueError(f"worker {worker} is not in [0, {workers})")
        bad: set[int] = set()  # blocks that failed to decode, never read again here
        current, chunk = -1, None
        index = self.start + worker  # this worker's first batch, then every workers-th
        while True:
            c, i = chunk_position(index, workers, self.batches_per_chunk)
            if c != current:
                current, chunk = c, self._chunk(c, bad)
            pool, order = chunk
            take = order[i * self.batch_size : (i + 1) * self.batch_size]
            batch = self._new_batch(self.batch_size)
            for k, values in pool.items():
                # Gathered straight into the batch tensors ("clip" skips take's bounds buffer).
                np.take(values, take, axis=0, out=batch[k].numpy(), mode="clip")
            yield self._finish(batch)
            index += workers

    def _chunk(self, c: int, bad: set[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Chunk ``c``: ({"image": (N, C, H, W), label: (N, ...)} decoded, (K * B,) order)."""
        rng = np.random.default_rng([self.seed, self.rank, self.world_size, c])
        need = self.batches_per_chunk * self.batch_size
        parts: list[Arrays] = []
        decoded: dict[int, Arrays] = {}  # a block drawn twice in a chunk is read once
        n = 0
        while n < need:
            # Uniform over blocks: every image then comes equally often, whatever its block's
            # size (weighting blocks by size would favour images of big blocks).
            block = int(rng.integers(len(self.blocks)))
            if block in bad:
                continue  # replaced by the next draw, as when it first failed
            part = decoded.get(block)
            if part is None:
                part = self._read(self.blocks[block])
                if part is None:
                    self._skipped_images += self.blocks[block].count
                    bad.add(block)
                    if len(bad) == len(self.blocks):
                        raise ShardError(f"{self.directory}: every block failed to decode")
                    continue
                decoded[block] = part
            parts.append(part)
            n += len(part[0])
        order = rng.permutation(n)[:need]
        pool = {IMAGE_KEY: np.concatenate([p[0] for p in parts])}
        for k in self.labels:
            pool[k] = np.concatenate([p[1][k] for p in parts])
        return pool, order


def rank_batches(
    num_images: int, batch_size: int, world_size: int, rank: int, remainder: Remainder = "split"
) -> tuple[int, list[int]]:
    """Where rank ``rank`` starts in an epoch's image order, and its batch sizes.

    Every rank gets the same number of batches. ``"split"``: ranks take contiguous runs of
    floor or ceil(N / world) images, each cut into full batches then smaller last ones, so each
    image is used exactly once; ValueError when a rank would get an empty batch (fewer images
    than batches, e.g. N < world). ``"pad"``: every batch is full and positions past N wrap
    to the start of the order (N_pad = S * world * batch - N images are seen twice).
    ``"drop"``: every batch is full and the last N mod (world * batch) images are not used.
    Positions are taken modulo N.
    """
    n, b, w = num_images, batch_size, world_size
    if remainder == "split":
        q, extra = divmod(n, w)
        mine = q + (rank < extra)
        steps = math.ceil(math.ceil(n / w) / b)
        if q < steps:
            raise ValueError(
                f"cannot split {n} images into {steps} non-empty batches on each of {w} "
                "ranks; use remainder='pad' or 'drop', or a smaller world"
            )
        sizes = []
        left = mine
        for i in range(steps):  # as full as possible, leaving >= 1 image per later batch
            sizes.append(min(b, left - (steps - i - 1)))
            left -= sizes[-1]
        assert left == 0 and min(sizes) >= 1
        return rank * q + min(rank, extra), sizes
    if remainder == "pad":
        steps = math.ceil(n / (w * b))
    elif remainder == "drop":
        steps = n // (w * b)
        if steps == 0:
            raise ValueError(f"remainder='drop' leaves no batch: {n} images < {w} x {b}")
    else:
        raise ValueError(f"remainder must be one of {_REMAINDER}, got {remainder!r}")
    return rank * steps * b, [b] * steps


def worker_batches(num_batches: int, num_workers: int, worker: int) -> tuple[int, int]:
    """(first, count) of a rank's batches that worker ``worker`` makes: contiguous runs, so each
    worker reads its own blocks instead of every worker decoding every block."""
    q, extra = divmod(num_batches, num_workers)
    return worker * q + min(worker, extra), q + (worker < extra)


class EpochStream(_ShardStream):
    """Exact epochs: each image once per epoch over all ranks, equal batch counts per rank.

    The order of epoch e depends only on (seed, e) and is the same on every rank: blocks are
    permuted, then images are permuted within consecutive windows of ``shuffle_blocks`` blocks
    (a window is a few thousand images: the shuffle is local in the file but global over the
    set, and each worker decodes each block it needs once). Ranks take contiguous runs of the
    order and ``rank_batches`` cuts them (``remainder``: "split" uses every image exactly once
    and gives ranks with fewer images a smaller last batch; "pad" and "drop" keep every batch
    full, see ``padded`` and ``dropped``). A rank's batches are dealt to DataLoader workers in
    contiguous runs; the DataLoader interleaves them, so smaller batches come near the end.
    Within a batch, rows are grouped by block (which images form a batch is what is random).
    This is split by images, not shards: any shard count and sizes work for any world.

    ``len(stream)`` is the number of batches on this rank. Call ``set_epoch`` before each pass
    (as with DistributedSampler); the value lives in shared memory, so persistent workers see
    it. ``with_index`` adds "index": (B,) int64, each image's position in the shard set (manifest
    order), so outputs can be written back in order. With ``on_error="skip"`` the images of a
    bad block are left out of their batch (which then can be smaller, even empty) so batch
    counts stay equal across ranks.
    """

    def __init__(
        self,
        directory: str | Path,
        manifest: Manifest,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        labels: Sequence[str] = ("gaze",),
        *,
        epoch: int = 0,
        shuffle: bool = True,
        shuffle_blocks: int = 16,
        remainder: Remainder = "split",
        with_index: bool = False,
        on_error: OnError = "raise",
        verify: bool = False,
        verify_blocks: bool = True,
    ) -> None:
        if shuffle_blocks < 1 or epoch < 0:
            raise ValueError(f"need shuffle_blocks >= 1, epoch >= 0, got {shuffle_blocks}, {epoch}")
        if remainder not in _REMAINDER:
            raise ValueError(f"remainder must be one of {_REMAINDER}, got {remainder!r}")
        super().__init__(
            directory,
            manifest,
            batch_size,
            rank,
            world_size,
            seed,
            labels,
            on_error,
            verify,
            verify_blocks,
        )
        self.shuffle, self.shuffle_blocks = shuffle, shuffle_blocks
        self.remainder: Remainder = remainder
        if with_index and "index" in self.labels:
            raise ValueError(
                f"{directory}: has a label called 'index', which with_index would overwrite"
            )
        self.with_index = with_index
        n = self.num_images
        self._start, self._sizes = rank_batches(n, batch_size, world_size, rank, remainder)
        total = len(self._sizes) * world_size * batch_size
        self.padded = total - n if remainder == "pad" else 0  # images seen twice per epoch
        self.dropped = n - total if remainder == "drop" else 0  # images unseen per epoch
        self._epoch = torch.tensor(epoch, dtype=torch.int64).share_memory_()
        self._starts = self._ends - self._counts  # (blocks,) first dense image id of each block
        # Position of each block's first image in the whole set, skipped shards included.
        shard_first = np.cumsum([0] + [s.count for s in manifest.shards])
        within = np.zeros(len(self.blocks), np.int64)
        for i in range(1, len(self.blocks)):
            same = self.blocks[i].shard == self.blocks[i - 1].shard
            within[i] = within[i - 1] + self.blocks[i - 1].count if same else 0
        self._set_first = shard_first[[b.shard for b in self.blocks]] + within  # (blocks,)

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """(N,) int64 dense image ids (readable blocks, set order) in epoch ``epoch``'s order."""
        nb = len(self.blocks)
        if not self.shuffle:
            return np.arange(self.num_images, dtype=np.int64)
        rng = np.random.default_rng([self.seed, epoch])
        blocks = rng.permutation(nb)
        parts = []
        for i in range(0, nb, self.shuffle_blocks):
            group = blocks[i : i + self.shuffle_blocks]
            ids = np.concatenate([np.arange(self._starts[g], self._ends[g]) for g in group])
            rng.shuffle(ids)
            parts.append(ids)
        return np.concatenate(parts)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        first, count = worker_batches(len(self._sizes), workers, worker_id)
        sizes = self._sizes[first : first + count]
        if not sizes:
            return
        n = self.num_images
        begin = self._start + sum(self._sizes[:first])
        ids = self.order(self.epoch)[(begin + np.arange(sum(sizes))) % n]  # (M,) dense ids
        block = np.searchsorted(self._ends, ids, "right")  # (M,)
        offset = ids - self._starts[block]  # (M,) row in its block
        # The last of this worker's batches that needs each block: decoded blocks are dropped
        # after it, so memory stays about one shuffle window.
        last_use = np.full(len(self.blocks), -1)
        np.maximum.at(last_use, block, np.repeat(np.arange(len(sizes)), sizes))
        cache: dict[int, Arrays | None] = {}
        pos = 0
        for j, size in enumerate(sizes):
            # Rows grouped by block (the batch is a random subset either way), so each block's
            # rows are gathered with one copy into a contiguous slice of the batch.
            by_block = pos + np.argsort(block[pos : pos + size], kind="stable")
            bb, oo = block[by_block], offset[by_block]
            pos += size
            batch = self._new_batch(size)
            images = batch[IMAGE_KEY].numpy()  # (B, C, H, W) views to fill
            labels = {k: batch[k].numpy() for k in self.labels}
            good = np.ones(size, bool)
            blocks, starts = np.unique(bb, return_index=True)
            ends = [*starts[1:].tolist(), size]
            for b, lo, hi in zip(blocks.tolist(), starts.tolist(), ends, strict=True):
                if b not in cache:
                    cache[b] = self._read(self.blocks[b])
                part = cache[b]
                if part is None:
                    good[lo:hi] = False
                else:
                    rows = oo[lo:hi]
                    np.take(part[0], rows, axis=0, out=images[lo:hi], mode="clip")
                    for k in self.labels:
                        np.take(part[1][k], rows, axis=0, out=labels[k][lo:hi], mode="clip")
                if last_use[b] == j:
                    del cache[b]
            if not good.all():
                self._skipped_images += int(size - good.sum())  # only this worker's share
                keep = torch.from_numpy(good)
                batch = {k: v[keep] for k, v in batch.items()}
                bb, oo = bb[good], oo[good]
            if self.with_index:
                batch["index"] = torch.from_numpy(self._set_first[bb] + oo)  # (B,)
            yield self._finish(batch)
