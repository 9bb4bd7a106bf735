"""distsim.data: resampled and exact-epoch batch streams, bad-data handling, built-in cache."""

from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import math
import os
import re
import tarfile
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

import shards.sources.sim_eyes
from distsim.data import (
    BatchStream,
    EpochStream,
    ShardWarning,
    check_pair,
    chunk_position,
    ensure_builtin_shards,
    make_epoch_loader,
    make_loader,
    open_shards,
    rank_batches,
    worker_batches,
)
from shards.format import MANIFEST_NAME, Manifest, ShardError, ShardInfo, file_sha256
from shards.sim import eyes
from shards.sources.sim_eyes import convert_sim_eyes
from shards.writer import ShardSetWriter

COUNT, SEED = 600, 1


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "set"
    convert_sim_eyes(out, "synthetic", COUNT, SEED, shard_size=256, block_size=64, progress=False)
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return eyes.generate("synthetic", COUNT, SEED)


def stream(
    directory: Path,
    batch_size: int = 32,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    labels: tuple[str, ...] = ("gaze",),
) -> BatchStream:
    return BatchStream(
        directory, open_shards(directory), batch_size, rank, world_size, seed, labels
    )


def write_indexed_set(out: Path, sizes: Sequence[int], block_size: int, seed: int = 0) -> Path:
    """Shards of exactly ``sizes`` images (8x8 noise) with label "idx": each image's position."""
    rng = np.random.default_rng(seed)
    with ShardSetWriter(
        out, (8, 8), "uint8", {"idx": ((), "int64", "position in the set")}, {}, 1, block_size
    ) as writer:
        start = 0
        for n in sizes:
            # The writer closes a shard when it holds shard_size images: this gives uneven ones.
            writer.shard_size = n
            writer.add(
                rng.integers(0, 256, (n, 8, 8), np.uint8), {"idx": np.arange(start, start + n)}
            )
            start += n
    return out


def take(batches, n: int) -> list[dict[str, torch.Tensor]]:
    return list(itertools.islice(batches, n))


def test_batch_shapes_and_dtypes(shard_dir: Path) -> None:
    (batch,) = take(iter(stream(shard_dir, labels=("gaze", "pupil"))), 1)
    assert set(batch) == {"image", "gaze", "pupil"}
    assert batch["image"].shape == (32, 1, 35, 55) and batch["image"].dtype == torch.uint8
    assert batch["gaze"].shape == (32, 3) and batch["gaze"].dtype == torch.float32
    assert batch["pupil"].shape == (32, 2) and batch["pupil"].dtype == torch.float32


def test_batches_hold_images_of_the_set_with_their_labels(
    shard_dir: Path, reference: dict[str, np.ndarray]
) -> None:
    where = {image.tobytes(): i for i, image in enumerate(reference["image"])}
    assert len(where) == COUNT  # the simulator never repeats an image, so bytes identify it
    seen = set()
    for batch in take(iter(stream(shard_dir, batch_size=100, labels=("gaze", "pitchyaw"))), 12):
        index = [where[image[0].numpy().tobytes()] for image in batch["image"]]
        np.testing.assert_array_equal(batch["gaze"].numpy(), reference["gaze"][index])
        np.testing.assert_array_equal(batch["pitchyaw"].numpy(), reference["pitchyaw"][index])
        seen.update(index)
    # 1200 draws with replacement from 600 images reach most of them, in every shard.
    assert len(seen) > COUNT // 2
    assert {i // 256 for i in seen} == {0, 1, 2}


def test_stream_is_deterministic_and_differs_by_rank(shard_dir: Path) -> None:
    a = take(iter(stream(shard_dir, rank=0, world_size=2)), 4)
    b = take(iter(stream(shard_dir, rank=0, world_size=2)), 4)
    c = take(iter(stream(shard_dir, rank=1, world_size=2)), 4)
    d = take(iter(stream(shard_dir, rank=0, world_size=2, seed=1)), 4)
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(a[0]["image"], c[0]["image"])
    assert not torch.equal(a[0]["image"], d[0]["image"])


def test_two_ranks_two_workers_yield_equal_batch_counts(shard_dir: Path) -> None:
    steps = 7
    firsts = []
    for rank in range(2):
        # Closing stops the persistent workers now rather than whenever GC gets to them.
        with make_loader(shard_dir, 48, rank, 2, seed=0, num_workers=2) as loader:
            batches = take(iter(loader), steps)
        assert len(batches) == steps
        assert all(b["image"].shape == (48, 1, 35, 55) for b in batches)
        # Batches alternate between the two workers, which draw different streams.
        assert not torch.equal(batches[0]["image"], batches[1]["image"])
        firsts.append(batches[0]["image"])
    assert not torch.equal(*firsts)
    with make_loader(shard_dir, 48, 1, 2, seed=0, num_workers=2) as loader:
        again = take(iter(loader), steps)
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(batches, again, strict=True))


def test_loader_refuses_incomplete_set(tmp_path: Path, reference: dict[str, np.ndarray]) -> None:
    out = tmp_path / "partial"
    with (
        pytest.raises(RuntimeError),
        ShardSetWriter(
            out, (35, 55), "uint8", {"gaze": ((3,), "float32", "")}, {}, block_size=64
        ) as writer,
    ):
        writer.add(reference["image"][:100], {"gaze": reference["gaze"][:100]})
        raise RuntimeError("interrupted")
    for on_error in ("raise", "skip"):  # skipping never applies to the manifest itself
        with pytest.raises(ShardError, match="has no manifest.json: conversion incomplete"):
            make_loader(out, 8, 0, 1, seed=0, on_error=on_error)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_error must be one of"):
        open_shards(out, on_error="ignore")  # type: ignore[arg-type]


def test_loader_names_corrupt_shard(tmp_path: Path) -> None:
    out = tmp_path / "set"
    convert_sim_eyes(out, "synthetic", 200, 0, shard_size=100, block_size=64, progress=False)
    shard = out / "shard-000001.tar"
    with open(shard, "r+b") as f:  # zeroed first header: tar sees an empty archive
        f.write(bytes(512))
    with pytest.raises(ValueError, match=re.escape(f"{shard}: holds 0 blocks")):
        stream(out)

    convert_sim_eyes(out, "synthetic", 200, 0, shard_size=100, block_size=64, progress=False)
    with open(shard, "r+b") as f:  # garbage in the first .npy header, after indexing
        s = stream(out, batch_size=64)
        f.seek(512)
        f.write(b"garbage!" * 8)
    # The block's checksum catches it before anything is decoded.
    with pytest.raises(ValueError, match=re.escape(f"{shard}: block 00000002: crc32 ")):
        take(iter(s), 20)


def test_unknown_label_and_bad_rank(shard_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"no label\(s\) \['depth'\]"):
        stream(shard_dir, labels=("depth",))
    with pytest.raises(ValueError, match="rank 2 is not in"):
        stream(shard_dir, rank=2, world_size=2)


def test_check_pair_names_both_dirs(tmp_path: Path, shard_dir: Path) -> None:
    real_dir = tmp_path / "real"
    with ShardSetWriter(real_dir, (36, 60), "uint8", {}, {}) as writer:
        writer.add(np.zeros((3, 36, 60), np.uint8), {})
    synthetic, real = open_shards(shard_dir), open_shards(real_dir)
    check_pair(synthetic, shard_dir, synthetic, shard_dir)
    with pytest.raises(ValueError) as error:
        check_pair(synthetic, shard_dir, real, real_dir)
    assert str(error.value) == (
        f"real shards {real_dir} have images 1x36x60 but synthetic shards {shard_dir} have "
        "1x35x55; convert them to the same size"
    )
    with pytest.raises(ValueError, match="float32 images"):
        check_pair(
            synthetic, shard_dir, dataclasses.replace(synthetic, image_dtype="float32"), real_dir
        )


def test_ensure_builtin_shards_creates_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISTSIM_CACHE", str(tmp_path / "cache"))
    path = ensure_builtin_shards("real", 100, 5, progress=False)
    assert path == tmp_path / "cache" / "sim-eyes-v3-real-n100-s5"
    m = open_shards(path)
    assert m.count == 100 and m.labels_for_evaluation_only
    stamp = os.stat(path / MANIFEST_NAME).st_mtime_ns
    os.utime(path / MANIFEST_NAME, ns=(stamp - 10**9, stamp - 10**9))  # beats coarse clocks
    assert ensure_builtin_shards("real", 100, 5, tmp_path / "cache") == path
    assert os.stat(path / MANIFEST_NAME).st_mtime_ns == stamp - 10**9
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [path.name]


def test_ensure_builtin_shards_loser_of_a_race_uses_the_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "sim-eyes-v3-synthetic-n50-s0"
    convert = convert_sim_eyes

    def racing(out: Path, *args, **kwargs):  # another rank finishes first, mid-conversion
        convert(final, *args, **kwargs)
        return convert(out, *args, **kwargs)

    monkeypatch.setattr(shards.sources.sim_eyes, "convert_sim_eyes", racing)
    assert ensure_builtin_shards("synthetic", 50, 0, tmp_path, progress=False) == final
    assert open_shards(final).count == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]  # no temp dir left


# --- resampled stream: chunks and exact resume -------------------------------------------------

# B=8, 2 blocks of 16 in the shuffle pool: K = 4 batches per chunk; 490 images in 34 blocks.
RB, RBLOCK, RBUFFER, RK = 8, 16, 2, 4
RESUME_STARTS = (0, 1, RK - 1, RK, RK + 1, 2 * RK + 3, 7)  # 7: not divisible by 2 or 3 workers
RESUME_TAKE = 2 * RK + 5


@pytest.fixture(scope="module")
def resume_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_indexed_set(tmp_path_factory.mktemp("resume") / "set", (300, 150, 40), RBLOCK)


def resampled(directory: Path, start: int = 0, **kwargs) -> BatchStream:
    args = {"batch_size": RB, "rank": 0, "world_size": 1, "seed": 5, "labels": ("idx",)}
    args |= kwargs
    return BatchStream(
        directory,
        open_shards(directory, on_error=args.get("on_error", "raise")),
        args.pop("batch_size"),
        args.pop("rank"),
        args.pop("world_size"),
        args.pop("seed"),
        args.pop("labels"),
        args.pop("shuffle_buffer", RBUFFER),
        start=start,
        **args,
    )


def round_robin(stream: BatchStream, num_workers: int):
    """What a DataLoader with ``num_workers`` workers yields, in-process: its workers' streams
    read in turn from worker 0 (each worker holds its own copy of the dataset)."""
    workers = max(1, num_workers)
    its = [
        (copy.deepcopy(stream) if workers > 1 else stream).worker_batches(w, num_workers)
        for w in range(workers)
    ]
    for w in itertools.cycle(range(workers)):
        yield next(its[w])


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], torch.Tensor):
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k
            else:  # skip mode's counts
                assert x[k] == y[k], k


def ids(batches: list[dict]) -> list[tuple[int, ...]]:
    return [tuple(b["idx"].tolist()) for b in batches]


def test_chunk_position_deals_whole_chunks_to_one_worker_each() -> None:
    for workers, k in itertools.product(range(5), range(1, 6)):
        w = max(1, workers)
        chunks = 3 * w
        total = chunks * k
        where = [chunk_position(g, workers, k) for g in range(total)]
        # A bijection onto (chunk, batch) of the first 3W chunks: nothing repeated or left out.
        assert sorted(where) == [(c, i) for c in range(chunks) for i in range(k)]
        for g, (c, _) in enumerate(where):
            assert c % w == g % w  # chunk c belongs to the role that makes batch g
        for role in range(w):
            # Each role plays its chunks whole and in order: batch i of chunk c is its
            # (c // W * K + i)-th batch, so a worker decodes each chunk once, from any start.
            mine = where[role::w]
            assert mine == sorted(mine)
            assert [c // w * k + i for c, i in mine] == list(range(len(mine)))
        if w == 1:
            assert where == [(g // k, g % k) for g in range(total)]


def test_resampled_stream_resumes_exactly_in_process(resume_set: Path) -> None:
    """Every start and worker count: ``worker_batches`` interleaved as the DataLoader does."""
    assert resampled(resume_set).batches_per_chunk == RK
    n = RESUME_TAKE
    for workers in (0, 1, 2, 3, 4):
        ref = take(round_robin(resampled(resume_set), workers), 3 * RK + 2 + n)
        assert len(set(ids(ref))) == len(ref)  # batches differ, so the comparison means something
        for start in range(3 * RK + 3):
            got = take(round_robin(resampled(resume_set, start), workers), n)
            assert_same_batches(got, ref[start : start + n])


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 on 2 cores
@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
def test_loader_resumes_exactly_at_any_start(resume_set: Path, num_workers: int) -> None:
    def batches(start: int, n: int) -> list[dict]:
        with make_loader(
            resume_set, RB, 0, 1, 5, num_workers, ("idx",), shuffle_buffer=RBUFFER, start=start
        ) as loader:
            return take(iter(loader), n)

    n = RESUME_TAKE
    ref = batches(0, max(RESUME_STARTS) + n)
    # The DataLoader reads its workers round-robin from worker 0, as round_robin assumes.
    assert_same_batches(ref, take(round_robin(resampled(resume_set), num_workers), len(ref)))
    for start in RESUME_STARTS:
        assert_same_batches(batches(start, n), ref[start : start + n])
    # Images travel with their labels: one image per idx, wherever it is met.
    seen: dict[int, bytes] = {}
    for batch in ref:
        assert batch["image"].shape == (RB, 1, 8, 8) and batch["image"].dtype == torch.uint8
        for i, image in zip(batch["idx"].tolist(), batch["image"], strict=True):
            assert seen.setdefault(i, image.numpy().tobytes()) == image.numpy().tobytes()


def test_num_workers_only_permutes_batches_within_windows(resume_set: Path) -> None:
    # Window m of W * K batches holds chunks mW .. mW + W - 1 whatever W is.
    one = ids(take(round_robin(resampled(resume_set), 1), 12 * RK))
    for workers in (2, 3, 4):
        w = ids(take(round_robin(resampled(resume_set), workers), 12 * RK))
        assert w != one
        size = workers * RK
        for lo in range(0, 12 * RK - size + 1, size):
            assert sorted(w[lo : lo + size]) == sorted(one[lo : lo + size])


def test_resampled_stream_depends_on_seed_rank_and_world_only(resume_set: Path) -> None:
    def first(**kwargs) -> list[tuple[int, ...]]:
        return ids(take(iter(resampled(resume_set, **kwargs)), 2 * RK))

    base = first()
    assert base == first()  # same arguments, same batches
    others = [
        first(seed=6),
        first(rank=1, world_size=2),
        first(world_size=2),
        first(rank=1, world_size=3),
    ]
    for other in others:
        assert other != base and not set(other) & set(base)
    assert len({tuple(o) for o in others}) == len(others)
    # Chunks are drawn independently: batch K is not a reshuffle of chunk 0's images.
    assert not set(base[RK]) <= {i for b in base[:RK] for i in b}


def test_resampled_stream_is_uniform_and_batches_mix_blocks(resume_set: Path) -> None:
    stream = resampled(resume_set, batch_size=16, shuffle_buffer=4)  # K = 4, 64 images a chunk
    batches = take(iter(stream), 3000)
    counts = np.zeros(490, np.int64)
    mixed = []
    for batch in batches:
        idx = batch["idx"].numpy()
        np.add.at(counts, idx, 1)
        mixed.append(len(np.unique(np.searchsorted(stream._ends, idx, "right"))))
    assert (counts > 0).all()  # 48000 draws reach every image
    total = counts.sum()
    for lo, hi in ((0, 300), (300, 450), (450, 490)):  # each shard in proportion to its size
        assert abs(counts[lo:hi].sum() / total - (hi - lo) / 490) < 0.035
    # Every image equally often, also in the smaller last block of each shard (12, 6 and 8
    # images): drawing blocks in proportion to their size would give those 0.75, 0.375, 0.5.
    assert sorted(stream._counts.tolist())[:3] == [6, 8, 12]
    rate = np.add.reduceat(counts, stream._ends - stream._counts) / stream._counts  # (blocks,)
    rate /= rate.mean()
    assert rate.min() > 0.75 and rate.max() < 1.25
    # A batch of 16 is a random subset of ~4 blocks, not a block's run of images.
    assert np.mean(mixed) > 2.5 and min(mixed) >= 2


def test_resampled_start_is_validated(resume_set: Path) -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="need an integer start >= 0"):
            resampled(resume_set, start=bad)  # type: ignore[arg-type]
    assert resampled(resume_set, start=np.int64(3)).start == 3
    # Starting far in costs no decoding of the batches before: one chunk per worker.
    stream = resampled(resume_set, start=10**9)
    calls = []
    read = stream._read
    stream._read = lambda ref: calls.append(ref) or read(ref)  # type: ignore[method-assign]
    take(iter(stream), RK)
    assert len(calls) <= 8  # ~2 blocks of 16 for a chunk of 32 images


def test_skip_mode_is_deterministic_and_resumes_exactly(tmp_path: Path) -> None:
    directory = uneven(tmp_path)
    shard = directory / "shard-000000.tar"
    flip_byte(shard, member_offset(shard, "00000003.idx.npy") + 1)  # block 3: images 96..127
    kwargs = {"batch_size": 32, "seed": 0, "shuffle_buffer": 4, "on_error": "skip"}  # K = 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShardWarning)
        for workers in (0, 2):
            ref = take(round_robin(resampled(directory, **kwargs), workers), 40)
            again = take(round_robin(resampled(directory, **kwargs), workers), 40)
            assert_same_batches(ref, again)  # skip counts included
            assert sum(b["skipped_blocks"] for b in ref) == max(1, workers)  # once per worker
            assert sum(b["skipped_images"] for b in ref) == 32 * max(1, workers)
            assert all(not 96 <= i < 128 for batch in ref for i in batch["idx"].tolist())
            assert all(len(b["idx"]) == 32 for b in ref)
            for start in (1, 3, 4, 9, 22):
                got = take(round_robin(resampled(directory, start, **kwargs), workers), 16)
                for x, y in zip(got, ref[start : start + 16], strict=True):
                    assert torch.equal(x["image"], y["image"]) and torch.equal(x["idx"], y["idx"])
        # Through real worker processes too (their warnings go to stderr).
        with make_loader(
            directory, 32, 0, 1, 0, 2, ("idx",), shuffle_buffer=4, on_error="skip", start=5
        ) as loader:
            got = take(iter(loader), 16)
        ref = take(round_robin(resampled(directory, **kwargs), 2), 21)
    for x, y in zip(got, ref[5:], strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["idx"], y["idx"])


def test_skip_mode_raises_when_every_block_fails(tmp_path: Path) -> None:
    directory = write_indexed_set(tmp_path / "set", (40,), block_size=16)
    stream = resampled(directory, on_error="skip")
    shard = directory / "shard-000000.tar"
    shard.write_bytes(bytes(shard.stat().st_size))  # after indexing: every block fails to decode
    with (
        pytest.warns(ShardWarning, match="skipping its"),
        pytest.raises(ShardError, match="every block failed to decode"),
    ):
        take(iter(stream), 1)


# --- exact epochs -------------------------------------------------------------------------------


@pytest.mark.parametrize("remainder", ["split", "pad", "drop"])
def test_rank_batches_cover_the_epoch(remainder: str) -> None:
    for n, b, w in itertools.product(
        (1, 2, 5, 31, 32, 33, 64, 100, 803), (1, 2, 7, 32), (1, 2, 3, 8)
    ):
        try:
            plans = [rank_batches(n, b, w, r, remainder) for r in range(w)]
        except ValueError:
            # Only where no equal split exists: fewer images than batches, or nothing to keep.
            assert (remainder == "split" and n // w < math.ceil(math.ceil(n / w) / b)) or (
                remainder == "drop" and n < w * b
            )
            continue
        assert len({len(sizes) for _, sizes in plans}) == 1  # same batch count on every rank
        assert all(1 <= s <= b for _, sizes in plans for s in sizes)
        seen = [p % n for start, sizes in plans for p in range(start, start + sum(sizes))]
        if remainder == "split":
            assert sorted(seen) == list(range(n))
        elif remainder == "pad":
            assert set(seen) == set(range(n)) and all(s == b for _, z in plans for s in z)
            assert len(seen) - n < w * b
        else:
            assert len(set(seen)) == len(seen) and n - len(seen) < w * b


def test_worker_batches_deal_contiguous_runs() -> None:
    for batches, workers in itertools.product(range(12), range(1, 5)):
        runs = [worker_batches(batches, workers, w) for w in range(workers)]
        assert [i for first, count in runs for i in range(first, first + count)] == list(
            range(batches)
        )


def uneven(tmp_path: Path) -> Path:
    return write_indexed_set(tmp_path / "set", (700, 90, 13), block_size=32)


def test_epoch_loaders_see_every_sample_once_over_ranks_and_workers(tmp_path: Path) -> None:
    directory = uneven(tmp_path)
    loaders = [
        make_epoch_loader(
            directory, 32, r, 2, seed=3, num_workers=2, labels=("idx",), with_index=True
        )
        for r in range(2)
    ]
    epochs = []
    for epoch in range(2):
        ids, counts = [], []
        for loader in loaders:
            loader.set_epoch(epoch)
            batches = list(loader)
            counts.append(len(batches))
            for batch in batches:
                assert batch["image"].shape[1:] == (1, 8, 8)
                torch.testing.assert_close(batch["idx"], batch["index"])
                ids += batch["idx"].tolist()
        assert counts == [len(loaders[0]), len(loaders[1])] == [13, 13]
        assert sorted(ids) == list(range(803))
        epochs.append(ids)
    for loader in loaders:
        loader.close()
    assert epochs[0] != epochs[1]
    # An epoch is a function of (seed, epoch): a fresh in-process stream makes rank 0's share
    # of epoch 1 again (in plan order; two workers interleaved their halves of it).
    again = EpochStream(directory, open_shards(directory), 32, 0, 2, 3, ("idx",), epoch=1)
    again_ids = [i for batch in again for i in batch["idx"].tolist()]
    assert again_ids != epochs[1][:402] and sorted(again_ids) == sorted(epochs[1][:402])
    assert again_ids[:32] == epochs[1][:32]


def test_epoch_stream_pad_and_drop(tmp_path: Path) -> None:
    directory = uneven(tmp_path)
    m = open_shards(directory)
    pad = [EpochStream(directory, m, 100, r, 3, 0, ("idx",), remainder="pad") for r in range(3)]
    ids = [i for s in pad for batch in s for i in batch["idx"].tolist()]
    assert pad[0].padded == 900 - 803 and len(ids) == 900 and set(ids) == set(range(803))
    drop = [EpochStream(directory, m, 100, r, 3, 0, ("idx",), remainder="drop") for r in range(3)]
    ids = [i for s in drop for batch in s for i in batch["idx"].tolist()]
    assert drop[0].dropped == 803 - 600 and len(set(ids)) == len(ids) == 600
    with pytest.raises(ValueError, match="cannot split 3 images into 1 non-empty batches on each"):
        EpochStream(
            write_indexed_set(tmp_path / "tiny", (3,), 2),
            open_shards(tmp_path / "tiny"),
            4,
            0,
            4,
            0,
            (),
        )


# --- bad data -----------------------------------------------------------------------------------


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def member_offset(shard: Path, name: str) -> int:
    with tarfile.open(shard) as tar:
        return tar.getmember(name).offset_data


def test_truncated_shard_raises_or_is_skipped(tmp_path: Path) -> None:
    directory = uneven(tmp_path)
    shard = directory / "shard-000001.tar"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    with pytest.raises(ShardError, match=re.escape(f"{shard}: ") + ".*truncated"):
        make_loader(directory, 32, 0, 1, 0, num_workers=0, labels=("idx",))
    with pytest.warns(ShardWarning, match=re.escape(f"{shard}: ") + ".*skipping its 90 images"):
        loader = make_epoch_loader(
            directory, 32, 0, 1, 0, num_workers=0, labels=("idx",), on_error="skip"
        )
    assert loader.dataset.skipped_shards == ["shard-000001.tar"]
    ids = [i for batch in loader for i in batch["idx"].tolist()]
    assert sorted(ids) == [*range(700), *range(790, 803)]
    with pytest.warns(ShardWarning):
        stream = iter(
            make_loader(directory, 32, 0, 1, 0, num_workers=0, labels=("idx",), on_error="skip")
        )
    assert all(not 700 <= i < 790 for batch in take(stream, 10) for i in batch["idx"].tolist())


def test_all_shards_bad_raises_even_when_skipping(tmp_path: Path) -> None:
    directory = uneven(tmp_path)
    for shard in directory.glob("shard-*.tar"):
        shard.write_bytes(b"")
    with pytest.warns(ShardWarning), pytest.raises(ShardError, match="no readable shard left"):
        make_loader(directory, 32, 0, 1, 0, num_workers=0, labels=("idx",), on_error="skip")


def test_corrupt_block_raises_naming_the_shard_or_is_skipped_and_counted(tmp_path: Path) -> None:
    directory = uneven(tmp_path)
    shard = directory / "shard-000000.tar"
    # Block 3's label header: indexing reads only image headers, so this shows up when decoding.
    flip_byte(shard, member_offset(shard, "00000003.idx.npy") + 1)
    for num_workers in (0, 1):
        loader = make_epoch_loader(directory, 32, 0, 1, 0, num_workers, labels=("idx",))
        with pytest.raises(ShardError) as error:
            list(loader)
        # One line that names the file and block, also when it came from a worker process.
        assert str(error.value).startswith(f"{shard}: block 00000003: crc32 ")
        assert "\n" not in str(error.value)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = make_epoch_loader(
            directory, 32, 0, 1, 0, num_workers=0, labels=("idx",), on_error="skip"
        )
        batches = list(loader)
    (warning,) = caught  # once: the block is decoded once per epoch
    assert warning.category is ShardWarning
    message = str(warning.message)
    assert message.startswith(f"{shard}: block 00000003: crc32 ")
    assert message.endswith("; skipping its 32 images")
    assert len(batches) == len(loader) == 26
    assert sum(b["skipped_blocks"] for b in batches) == 1
    assert sum(b["skipped_images"] for b in batches) == 32
    ids = sorted(i for batch in batches for i in batch["idx"].tolist())
    assert ids == [i for i in range(803) if not 96 <= i < 128]
    # From worker processes the counts arrive the same way (their warnings go to stderr).
    with make_epoch_loader(directory, 32, 0, 1, 0, 2, labels=("idx",), on_error="skip") as loader:
        batches = list(loader)
    assert len(batches) == 26 and sum(b["skipped_images"] for b in batches) == 32
    assert sum(len(b["idx"]) for b in batches) == 803 - 32

    with pytest.warns(ShardWarning, match="block 00000003"):
        stream = BatchStream(
            directory, open_shards(directory), 64, 0, 1, 0, ("idx",), on_error="skip"
        )
        batches = take(iter(stream), 40)
    assert sum(b["skipped_blocks"] for b in batches) == 1  # never drawn again
    assert all(not 96 <= i < 128 for batch in batches for i in batch["idx"].tolist())


def test_flipped_pixel_is_caught_by_block_checksums_and_verify(tmp_path: Path) -> None:
    directory = uneven(tmp_path)
    shard = directory / "shard-000002.tar"
    flip_byte(shard, member_offset(shard, "00000025.image.npy") + 200)  # past the npy header
    with pytest.raises(ShardError, match=re.escape(f"{shard}: block 00000025: crc32 ")):
        list(EpochStream(directory, open_shards(directory), 32, 0, 1, 0, ()))
    # Without the block checksums it decodes: only they or the sha256 can see it.
    unchecked = EpochStream(directory, open_shards(directory), 32, 0, 1, 0, (), verify_blocks=False)
    assert len(list(unchecked)) == 26
    with pytest.raises(ShardError, match=re.escape(f"{shard}: sha256 differs")):
        make_loader(directory, 32, 0, 1, 0, num_workers=0, verify=True, labels=())
    with pytest.warns(ShardWarning, match=re.escape(f"{shard}: sha256 differs")):
        loader = make_epoch_loader(directory, 32, 0, 1, 0, 0, (), verify=True, on_error="skip")
    assert len(loader) == 25 and loader.dataset.num_images == 790


def test_pickled_object_array_is_refused_not_unpickled(tmp_path: Path) -> None:
    directory = uneven(tmp_path)
    marker = tmp_path / "unpickled"
    # Unpickling this array would call Path.touch(marker).
    toucher = type("Toucher", (), {"__reduce__": lambda self: (Path.touch, (marker,))})
    evil = np.empty((13, 1, 8, 8), object)
    evil.fill(toucher())
    buffer = io.BytesIO()
    np.save(buffer, evil, allow_pickle=True)
    shard = directory / "shard-000002.tar"
    rewritten = tmp_path / "evil.tar"
    with (
        tarfile.open(shard) as src,
        tarfile.open(rewritten, "w", format=tarfile.USTAR_FORMAT) as dst,
    ):
        for member in src:
            data = src.extractfile(member).read()
            if member.name.endswith(".image.npy"):
                data = buffer.getvalue()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    rewritten.replace(shard)
    # The manifest vouches for the new bytes (size, sha256, block checksums), so only decoding
    # stands between us and pickle.
    crcs: dict[str, int] = {}
    with tarfile.open(shard) as tar:
        for member in tar:  # file order, as the writer chains them
            key = member.name.split(".")[0]
            crcs[key] = zlib.crc32(tar.extractfile(member).read(), crcs.get(key, 0))
    m = open_shards(directory)
    infos = [
        dataclasses.replace(
            s,
            bytes=shard.stat().st_size,
            sha256=file_sha256(shard),
            block_crc32=tuple(crcs.values()),
        )
        if s.name == shard.name
        else s
        for s in m.shards
    ]
    (directory / MANIFEST_NAME).write_text(dataclasses.replace(m, shards=infos).to_json())
    loader = make_epoch_loader(directory, 32, 0, 1, 0, 0, ("idx",), shuffle=False)
    with pytest.raises(ShardError, match="Object arrays cannot be loaded when allow_pickle=False"):
        list(loader)
    assert not marker.exists()
    assert isinstance(m, Manifest) and all(isinstance(s, ShardInfo) for s in infos)


def test_epoch_stream_refuses_a_label_that_with_index_would_overwrite(tmp_path: Path) -> None:
    from shards.writer import ShardSetWriter

    out = tmp_path / "set"
    spec = {"index": ((), "int64", "a label that happens to be called index")}
    with ShardSetWriter(out, (1, 4, 4), "uint8", spec, {"name": "t"}) as w:
        w.add(np.zeros((8, 1, 4, 4), np.uint8), {"index": np.arange(8)})
    m = open_shards(out)
    with pytest.raises(ValueError, match="label called 'index'"):
        EpochStream(out, m, 4, 0, 1, 0, labels=("index",), with_index=True)
