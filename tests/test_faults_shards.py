"""Faults on the shard side (issue 13, "nothing lost, nothing silently wrong"): a manifest that
contradicts itself is refused as a whole. Every set is written by the real writer into
``tmp_path`` and then damaged on disk."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from distsim.data import (
    ShardWarning,
    make_loader,
    open_shards,
)
from shards.cli import main
from shards.format import (
    MANIFEST_NAME,
    ShardError,
    read_manifest,
)
from shards.writer import ShardSetWriter
from tests.fixtures_sources import assert_one_line_error

Edit = Callable[[dict], object]  # changes a manifest's JSON in place

LABELS = {
    "gaze": ((3,), "float32", "unit gaze vector"),
    "idx": ((), "int64", "position in the set"),
}


def write_set(out: Path, count: int = 300, shard_size: int = 128, block_size: int = 32) -> Path:
    """Random 8x8 images with a gaze label and "idx" (each image's position): 300 images give
    shards of 128, 128 and 44 images in blocks of 32 (4, 4 and 2 blocks)."""
    rng = np.random.default_rng(0)
    gaze = rng.normal(size=(count, 3)).astype(np.float32)
    with ShardSetWriter(
        out, (8, 8), "uint8", LABELS, {"name": "test"}, shard_size, block_size
    ) as writer:
        writer.add(
            rng.integers(0, 256, (count, 8, 8), np.uint8), {"gaze": gaze, "idx": np.arange(count)}
        )
    return out


def edit_manifest(directory: Path, change: Edit) -> None:
    d = json.loads((directory / MANIFEST_NAME).read_text())
    change(d)
    (directory / MANIFEST_NAME).write_text(json.dumps(d))


# --- 3. the manifest is checked as a whole -------------------------------------------------------


def _set(key: str, value: object) -> Edit:
    return lambda d: d.__setitem__(key, value)


def _shard(i: int, key: str, value: object) -> Edit:
    return lambda d: d["shards"][i].__setitem__(key, value)


def _duplicate_first(d: dict) -> None:
    # Shards 0 and 1 hold 128 images each, so the counts still add up.
    d["shards"][1] = dict(d["shards"][0])


BAD_MANIFESTS = {
    "duplicate": (_duplicate_first, "shard shard-000000.tar is listed twice"),
    "absolute": (None, "is not a file name inside the set's directory"),  # set below
    "dotdot": (_shard(0, "name", "../set/shard-000000.tar"), "is not a file name inside"),
    "subdir": (_shard(0, "name", "sub/shard-000000.tar"), "is not a file name inside"),
    "itself": (_shard(0, "name", MANIFEST_NAME), "is not a file name inside"),
    "block_size_big": (_set("block_size", 10_000_000), "does not fit block_size 10000000"),
    "block_size_small": (_set("block_size", 16), "does not fit block_size 16"),
    "block_size_zero": (_set("block_size", 0), "block_size 0 must be positive"),
    "count_zero": (
        lambda d: (d.__setitem__("count", 0), d.__setitem__("shards", [])),
        "count 0 with 0 shards: the set is empty",
    ),
    "shard_count_negative": (
        lambda d: (_shard(2, "count", -44)(d), d.__setitem__("count", 212)),
        "has count -44",
    ),
    "blocks_zero": (_shard(2, "blocks", 0), "blocks 0"),
    "bytes_zero": (_shard(2, "bytes", 0), "bytes 0"),
    "sha256": (_shard(2, "sha256", "abc"), "sha256 'abc' is not 64 hex digits"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_contradictory_manifest_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    out = write_set(tmp_path / "set")
    change, problem = BAD_MANIFESTS[case]
    if case == "absolute":
        change = _shard(0, "name", str(out / "shard-000000.tar"))
    edit_manifest(out, change)
    where = f"{out / MANIFEST_NAME}: "
    for open_set in (
        read_manifest,
        open_shards,
        lambda d: open_shards(d, on_error="skip"),
        lambda d: make_loader(d, 32, 0, 1, 0, num_workers=0),
    ):
        with pytest.raises(ShardError) as error:
            open_set(out)
        text = str(error.value)
        assert isinstance(error.value, ValueError)
        assert text.startswith(where) and problem in text and "\n" not in text, text
    assert main(["inspect", str(out)]) == 2
    assert_one_line_error(capsys.readouterr().err, where, problem)


def test_block_size_that_disagrees_with_the_blocks_is_refused_at_indexing(
    tmp_path: Path,
) -> None:
    # Shards of 128 in blocks of 100 and 28: a manifest saying 64 fits its counts (128 in 2
    # blocks) but not the blocks on disk, which indexing reads before any buffer is sized.
    out = write_set(tmp_path / "set", count=256, shard_size=128, block_size=100)
    edit_manifest(out, _set("block_size", 64))
    shard = out / "shard-000000.tar"
    message = f"{shard}: block 00000000 holds 100 images, which disagrees with"
    with pytest.raises(ShardError, match=re.escape(message)):
        make_loader(out, 32, 0, 1, 0, num_workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ShardError, match="no readable shard left"):
            make_loader(out, 32, 0, 1, 0, num_workers=0, on_error="skip")
    assert [w.category for w in caught] == [ShardWarning, ShardWarning]  # skipped, like corrupt
    assert str(caught[0].message).startswith(message)
