"""distsim.data: endless resampled batch streams over shard sets, and the built-in cache."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import shards.cli
from distsim.data import (
    BatchStream,
    check_pair,
    ensure_builtin_shards,
    make_loader,
    open_shards,
)
from distsim.sim import eyes
from shards.format import MANIFEST_NAME, ShardError
from shards.writer import ShardSetWriter

COUNT, SEED = 600, 1


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "set"
    shards.cli.convert_sim_eyes(
        out, "synthetic", COUNT, SEED, shard_size=256, block_size=64, progress=False
    )
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
        loader = make_loader(shard_dir, 48, rank, 2, seed=0, num_workers=2)
        batches = take(iter(loader), steps)
        assert len(batches) == steps
        assert all(b["image"].shape == (48, 1, 35, 55) for b in batches)
        # Batches alternate between the two workers, which draw different streams.
        assert not torch.equal(batches[0]["image"], batches[1]["image"])
        firsts.append(batches[0]["image"])
    assert not torch.equal(*firsts)
    again = take(iter(make_loader(shard_dir, 48, 1, 2, seed=0, num_workers=2)), steps)
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
    with pytest.raises(ShardError, match="has no manifest.json: conversion incomplete"):
        make_loader(out, 8, 0, 1, seed=0)


def test_loader_names_corrupt_shard(tmp_path: Path) -> None:
    out = tmp_path / "set"
    shards.cli.convert_sim_eyes(
        out, "synthetic", 200, 0, shard_size=100, block_size=64, progress=False
    )
    shard = out / "shard-000001.tar"
    with open(shard, "r+b") as f:  # zeroed first header: tar sees an empty archive
        f.write(bytes(512))
    with pytest.raises(ValueError, match=re.escape(f"{shard}: holds 0 blocks")):
        stream(out)

    shards.cli.convert_sim_eyes(
        out, "synthetic", 200, 0, shard_size=100, block_size=64, progress=False
    )
    with open(shard, "r+b") as f:  # garbage in the first .npy header, after indexing
        s = stream(out, batch_size=64)
        f.seek(512)
        f.write(b"garbage!" * 8)
    with pytest.raises(
        ValueError, match=re.escape(f"{shard}: block 00000002: image.npy does not decode")
    ):
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
    assert path == tmp_path / "cache" / "sim-eyes-v2-real-n100-s5"
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
    final = tmp_path / "sim-eyes-v2-synthetic-n50-s0"
    convert = shards.cli.convert_sim_eyes

    def racing(out: Path, *args, **kwargs):  # another rank finishes first, mid-conversion
        convert(final, *args, **kwargs)
        return convert(out, *args, **kwargs)

    monkeypatch.setattr(shards.cli, "convert_sim_eyes", racing)
    assert ensure_builtin_shards("synthetic", 50, 0, tmp_path, progress=False) == final
    assert open_shards(final).count == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]  # no temp dir left
