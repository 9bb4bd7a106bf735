"""Training input: infinite, resampled batch streams over shard sets (see ``shards.format``).

Rank and world size are plain arguments: this module never reads the launch environment, and
its loaders must never go through ``accelerator.prepare`` (which would re-shard or broadcast).
Every (rank, worker) draws blocks independently with replacement, so the streams are infinite
and no rank can run out of batches before another; the trainer counts steps.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards.format import (
    IMAGE_KEY,
    MANIFEST_NAME,
    BlockRef,
    Manifest,
    ShardError,
    decode_block,
    index_shard,
    read_block,
    read_manifest,
)

# numpy dtype name -> torch dtype the loader yields.
SUPPORTED_IMAGE_DTYPES = {"uint8": torch.uint8, "uint16": torch.uint16, "float32": torch.float32}


def open_shards(directory: str | Path) -> Manifest:
    """Read a shard set's manifest; ShardError (a ValueError) with one line on any problem."""
    manifest = read_manifest(directory)
    if manifest.image_dtype not in SUPPORTED_IMAGE_DTYPES:
        raise ShardError(
            f"{directory}: image dtype {manifest.image_dtype} is not supported by "
            f"the loader ({', '.join(SUPPORTED_IMAGE_DTYPES)})"
        )
    return manifest


def check_pair(
    synthetic: Manifest, synthetic_dir: str | Path, real: Manifest, real_dir: str | Path
) -> None:
    """Refuse a synthetic/real pair whose images cannot go through the same refiner."""

    def shape(m: Manifest) -> str:
        return "x".join(map(str, m.image_shape))

    if synthetic.image_shape != real.image_shape:
        raise ValueError(
            f"real shards {real_dir} have images {shape(real)} but synthetic shards "
            f"{synthetic_dir} have {shape(synthetic)}; convert them to the same size"
        )
    if synthetic.image_dtype != real.image_dtype:
        raise ValueError(
            f"real shards {real_dir} have {real.image_dtype} images but synthetic "
            f"shards {synthetic_dir} have {synthetic.image_dtype}; convert them to "
            "the same dtype"
        )


class BatchStream(IterableDataset):
    """Endless batches {"image": (B, C, H, W) image tensor, label: (B, *shape)} from a shard set.

    Images stay in their stored dtype (uint8 for eyes: 4x less host-to-device traffic than
    float); the trainer converts on the device. Each (rank, DataLoader worker) seeds its own
    generator from (seed, rank, worker id, world_size), picks blocks with probability
    proportional to their size (i.e. images uniformly, with replacement), and shuffles images
    through a pool of ``shuffle_buffer`` blocks so a batch mixes many blocks. The stream is a
    deterministic function of (seed, rank, world_size, num_workers).
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
    ) -> None:
        super().__init__()
        if batch_size < 1 or shuffle_buffer < 0 or seed < 0:
            raise ValueError(
                f"need batch_size >= 1, shuffle_buffer >= 0 and seed >= 0, got "
                f"{batch_size}, {shuffle_buffer}, {seed}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        unknown = [name for name in labels if name not in manifest.labels]
        if unknown:
            raise ValueError(f"{directory}: no label(s) {unknown}; it has {list(manifest.labels)}")
        self.directory = Path(directory)
        self.manifest = manifest
        self.batch_size = batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.labels = tuple(labels)
        self.shuffle_buffer = shuffle_buffer
        # Indexed once here, in the main process, so a corrupt shard fails before training starts
        # and workers inherit the index instead of re-reading every tar header.
        self.blocks: list[BlockRef] = [
            ref
            for i, info in enumerate(manifest.shards)
            for ref in index_shard(self.directory / info.name, i, manifest)
        ]
        self._ends = np.cumsum([b.count for b in self.blocks])  # (blocks,) last image + 1
        self._members = tuple(f"{name}.npy" for name in (IMAGE_KEY, *self.labels))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = get_worker_info()
        worker_id = worker.id if worker is not None else 0
        rng = np.random.default_rng([self.seed, self.rank, worker_id, self.world_size])
        keep = self.batch_size + self.shuffle_buffer * self.manifest.block_size
        m = self.manifest
        images = np.empty((0, *m.image_shape), m.image_dtype)  # (N, C, H, W) the shuffle pool
        labels = {k: np.empty((0, *m.labels[k].shape), m.labels[k].dtype) for k in self.labels}
        while True:
            parts = [(images, labels)]
            n = len(images)
            while n < keep:  # keep >= batch_size
                # A uniform image index picks its block: blocks weighted by size.
                block = int(np.searchsorted(self._ends, rng.integers(self._ends[-1]), "right"))
                parts.append(self._read(self.blocks[block]))
                n += len(parts[-1][0])
            order = rng.permutation(n)
            images = np.concatenate([p[0] for p in parts])[order]
            labels = {k: np.concatenate([p[1][k] for p in parts])[order] for k in self.labels}
            b = self.batch_size
            batch = {IMAGE_KEY: torch.from_numpy(images[:b])}
            batch.update((k, torch.from_numpy(v[:b])) for k, v in labels.items())
            yield batch
            images, labels = images[b:], {k: v[b:] for k, v in labels.items()}

    def _read(self, ref: BlockRef) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        path = self.directory / self.manifest.shards[ref.shard].name
        # Opening per block costs microseconds next to reading ~0.5 MB, and keeps file
        # descriptors bounded however many shards a set has.
        try:
            with open(path, "rb") as f:
                return decode_block(read_block(f, ref, self._members), self.manifest)
        except (ShardError, OSError) as e:
            raise ShardError(f"{path}: block {ref.key}: {e}") from None


def make_loader(
    directory: str | Path,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    num_workers: int = 1,
    labels: Sequence[str] = ("gaze",),
    pin_memory: bool = False,
    shuffle_buffer: int = 4,
) -> DataLoader:
    """A DataLoader over ``BatchStream``; batches are already formed, so batch_size=None."""
    manifest = open_shards(directory)
    stream = BatchStream(
        directory, manifest, batch_size, rank, world_size, seed, labels, shuffle_buffer
    )
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def default_cache_dir() -> Path:
    return Path(os.environ.get("DISTSIM_CACHE") or Path.home() / ".cache" / "distsim")


def ensure_builtin_shards(
    domain: str, count: int, seed: int, cache_dir: Path | None = None, *, progress: bool = True
) -> Path:
    """Shard set of the built-in eye simulator, created under ``cache_dir`` on first use.

    The trainer calls this on the main process before the other ranks, so normally only one
    process converts. Creation is still safe under races: each caller writes into its own temp
    directory and renames it into place; a loser of the rename uses the winner's set.
    """
    from distsim.sim.eyes import SIM_VERSION
    from shards.cli import convert_sim_eyes  # the writer side is needed only on a cache miss

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    # The simulator version is in the name: a changed renderer never reuses stale shards.
    final = root / f"sim-eyes-v{SIM_VERSION}-{domain}-n{count}-s{seed}"
    if (final / MANIFEST_NAME).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        convert_sim_eyes(tmp, domain, count, seed, progress=progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MANIFEST_NAME).is_file():
                raise ShardError(
                    f"{final}: exists but is not a complete shard set; delete it to rebuild"
                ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename won
    return final
