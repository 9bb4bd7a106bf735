"""Faults on the shard side: damaged bytes
are caught when a block is read, ``convert`` deletes only what it wrote, and a manifest that
contradicts itself is refused as a whole. Every set is written by the real writer into
``tmp_path`` and then damaged on disk."""

from __future__ import annotations

import itertools
import json
import os
import re
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import torch

import shards.format
from distsim.data import (
    BatchStream,
    EpochStream,
    ShardWarning,
    make_epoch_loader,
    make_loader,
    open_shards,
)
from shards.cli import main
from shards.format import (
    MANIFEST_NAME,
    ShardError,
    UnverifiedShardsWarning,
    block_crc32,
    read_manifest,
)
from shards.sources import SOURCES
from shards.writer import JOURNAL_NAME, ShardSetWriter
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


def member(shard: Path, name: str) -> tuple[int, int]:
    """(file offset, size) of a tar member's data."""
    with tarfile.open(shard) as tar:
        info = tar.getmember(name)
        return info.offset_data, info.size


def take(batches: Iterable[dict], n: int) -> list[dict]:
    return list(itertools.islice(batches, n))


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def edit_manifest(directory: Path, change: Edit) -> None:
    d = json.loads((directory / MANIFEST_NAME).read_text())
    change(d)
    (directory / MANIFEST_NAME).write_text(json.dumps(d))


def epoch_ids(directory: Path, **kwargs: bool) -> list[int]:
    """Every "idx" of one epoch, sorted."""
    stream = EpochStream(directory, open_shards(directory), 64, 0, 1, 0, ("idx",), **kwargs)
    return sorted(i for batch in stream for i in batch["idx"].tolist())


# --- 1. verified reads --------------------------------------------------------------------------


def test_manifest_records_each_blocks_crc32(tmp_path: Path) -> None:
    out = write_set(tmp_path / "set")
    m = read_manifest(out)
    assert m.block_checksums and [len(s.block_crc32 or ()) for s in m.shards] == [4, 4, 2]
    # CRC32 of the block's members, chained in file order: anyone can recompute it.
    crcs: dict[str, int] = {}
    with tarfile.open(out / "shard-000001.tar") as tar:
        for info in tar:
            key = info.name.split(".")[0]
            crcs[key] = zlib.crc32(tar.extractfile(info).read(), crcs.get(key, 0))
    assert tuple(crcs.values()) == m.shards[1].block_crc32


def test_flipped_pixel_byte_raises_naming_shard_and_block(tmp_path: Path) -> None:
    out = write_set(tmp_path / "set")
    shard = out / "shard-000001.tar"
    offset, size = member(shard, "00000005.image.npy")  # shard 1's second block
    flip_byte(shard, offset + size - 1)  # a pixel: the .npy header still parses
    assert epoch_ids(out, verify_blocks=False) == list(range(300))  # what slipped through
    for read in (
        lambda: epoch_ids(out),
        lambda: list(make_epoch_loader(out, 64, 0, 1, 0, num_workers=1, labels=("idx",))),
        lambda: take(make_loader(out, 64, 0, 1, 0, num_workers=0, labels=()), 50),
    ):
        with pytest.raises(ShardError) as error:
            read()
        text = str(error.value)
        assert text.startswith(f"{shard}: block 00000005: crc32 "), text
        assert "(corrupt)" in text and "\n" not in text


def test_flipped_pixel_byte_is_skipped_and_counted(tmp_path: Path) -> None:
    out = write_set(tmp_path / "set")
    shard = out / "shard-000000.tar"
    offset, size = member(shard, "00000002.image.npy")  # images 64..95
    flip_byte(shard, offset + size // 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(
            make_epoch_loader(out, 64, 0, 1, 0, num_workers=0, labels=("idx",), on_error="skip")
        )
    (warning,) = caught
    assert warning.category is ShardWarning
    assert str(warning.message).startswith(f"{shard}: block 00000002: crc32 ")
    assert str(warning.message).endswith("; skipping its 32 images")
    assert sum(b["skipped_blocks"] for b in batches) == 1
    assert sum(b["skipped_images"] for b in batches) == 32
    assert sorted(i for b in batches for i in b["idx"].tolist()) == [
        i for i in range(300) if not 64 <= i < 96
    ]
    # The resampled stream: skipped once, never drawn again.
    with pytest.warns(ShardWarning, match="block 00000002: crc32"):
        stream = BatchStream(out, open_shards(out), 64, 0, 1, 0, ("idx",), on_error="skip")
        batches = take(stream, 30)
    assert sum(b["skipped_blocks"] for b in batches) == 1
    assert all(not 64 <= i < 96 for b in batches for i in b["idx"].tolist())


def test_zeroed_pixels_of_a_whole_shard_do_not_train(tmp_path: Path) -> None:
    out = write_set(tmp_path / "set")
    shard = out / "shard-000002.tar"
    with tarfile.open(shard) as tar:
        images = [(i.offset_data, i.size) for i in tar if i.name.endswith(".image.npy")]
    with open(shard, "r+b") as f:
        for offset, size in images:
            f.seek(offset + 128)  # past the 128-byte .npy header: every pixel of the shard
            f.write(bytes(size - 128))
    unchecked = make_epoch_loader(
        out, 300, 0, 1, 0, num_workers=0, labels=("idx",), shuffle=False, verify_blocks=False
    )
    (batch,) = list(unchecked)
    assert not batch["image"][256:].any()  # 44 black eyes, trained on silently before
    with pytest.raises(ShardError, match=f"{shard}: block 0000000[89]: crc32"):
        list(make_epoch_loader(out, 300, 0, 1, 0, num_workers=0, labels=("idx",)))


def test_flipped_label_byte_cannot_change_a_metric(tmp_path: Path) -> None:
    out = write_set(tmp_path / "set")
    truth = next(iter(make_epoch_loader(out, 300, 0, 1, 0, 0, ("gaze",), shuffle=False)))
    shard = out / "shard-000000.tar"
    offset, size = member(shard, "00000001.gaze.npy")
    flip_byte(shard, offset + size - 2)  # the high bits of the block's last gaze z
    # As evaluate reads a test set: in order, every label.
    unchecked = make_epoch_loader(
        out, 300, 0, 1, 0, 0, ("gaze",), shuffle=False, verify_blocks=False
    )
    wrong = next(iter(unchecked))["gaze"]
    assert not torch.equal(wrong, truth["gaze"])  # a different "ground truth" before
    with pytest.raises(ShardError, match=f"{shard}: block 00000001: crc32"):
        list(make_epoch_loader(out, 300, 0, 1, 0, 0, ("gaze",), shuffle=False))


def test_each_block_is_hashed_once_until_its_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = write_set(tmp_path / "set")
    hashed: list[int] = []

    def counting(members: Iterable[bytes | memoryview]) -> int:
        hashed.append(1)
        return block_crc32(members)

    monkeypatch.setattr(shards.format, "block_crc32", counting)
    stream = EpochStream(out, open_shards(out), 64, 0, 1, 0, ("idx",))
    for epoch in range(3):
        stream.set_epoch(epoch)
        assert sorted(i for b in stream for i in b["idx"].tolist()) == list(range(300))
    assert len(hashed) == 10  # every block once: re-reading unchanged bytes costs no hashing
    # A shard changed on disk since (here its mtime moves on, as any write moves it) is
    # checked again before it is used.
    shard = out / "shard-000001.tar"
    offset, size = member(shard, "00000006.image.npy")
    flip_byte(shard, offset + size - 1)
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ShardError, match=f"{shard}: block 00000006: crc32"):
        list(stream)
    assert len(hashed) > 10


def test_inspect_checks_block_checksums(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = write_set(tmp_path / "set")
    assert main(["inspect", str(out)]) == 0
    assert "checksums sha256 per shard, crc32 per block" in capsys.readouterr().out
    # The sha256 still matches the file: only the block checksum can disagree.
    edit_manifest(out, lambda d: d["shards"][2]["block_crc32"].__setitem__(1, 12345))
    assert main(["inspect", str(out)]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, f"{out / 'shard-000002.tar'}: block 00000009: crc32")


def test_set_without_block_checksums_loads_with_one_note(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = write_set(tmp_path / "old")
    edit_manifest(out, lambda d: [s.pop("block_crc32") for s in d["shards"]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not open_shards(out).block_checksums
        open_shards(out, on_error="skip")
        ids = epoch_ids(out)
        next(iter(make_loader(out, 32, 0, 1, 0, num_workers=0, labels=("idx",))))
    assert ids == list(range(300))
    (note,) = caught  # once per set and process, however often it is opened
    assert note.category is UnverifiedShardsWarning and issubclass(note.category, UserWarning)
    text = str(note.message)
    assert text.startswith(f"{out}: manifest.json has no block checksums") and "\n" not in text
    assert "unverified" in text
    assert main(["inspect", str(out)]) == 0  # the whole-file sha256 still verifies it
    assert "none per block" in capsys.readouterr().out


def test_block_checksum_count_must_match(tmp_path: Path) -> None:
    out = write_set(tmp_path / "set")
    edit_manifest(out, lambda d: d["shards"][0]["block_crc32"].pop())
    with pytest.raises(ShardError, match="shard-000000.tar has 3 block checksums for 4 blocks"):
        open_shards(out)


# --- 2. convert deletes only what it wrote -------------------------------------------------------


def convert(out: Path, *extra: str, count: int = 100) -> int:
    argv = ["convert", "sim-eyes", "--domain", "synthetic", "--count", str(count)]
    return main([*argv, "--out", str(out), "--shard-size", "40", "--block-size", "20", *extra])


def test_rerun_keeps_user_files_that_merely_match_the_pattern(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "set"
    assert convert(out, count=100) == 0  # 3 shards
    mine = {"shard-backup.tar": b"mine", "notes.txt": b"notes", "shard-old.tar.bak": b"x"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    assert convert(out, count=30) == 0  # 1 shard: the other two must go, nothing else
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST_NAME, "shard-000000.tar", *mine]
    )
    assert all((out / name).read_bytes() == data for name, data in mine.items())
    assert read_manifest(out).count == 30


def test_unlisted_numbered_shard_is_refused_not_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "set"
    assert convert(out) == 0
    stray = out / "shard-000007.tar"
    stray.write_bytes(b"someone else's")
    before = read_manifest(out)
    capsys.readouterr()
    for extra in ((), ("--overwrite",)):
        assert convert(out, *extra, count=300) == 2
        assert_one_line_error(capsys.readouterr().err, f"{stray}: no manifest written here")
    assert stray.read_bytes() == b"someone else's"
    assert read_manifest(out) == before  # refused before anything was touched


def test_non_empty_folder_needs_overwrite_and_keeps_its_files(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    files = {"a.png": b"png", "shard-mine.tar": b"tar", ".manifest.json.mine": b"hidden"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    assert convert(out) == 2
    assert_one_line_error(capsys.readouterr().err, f"{out}: not empty", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == sorted(files)

    assert convert(out, "--overwrite") == 0
    assert read_manifest(out).count == 100
    assert all((out / name).read_bytes() == data for name, data in files.items())
    # Now a shard set: rewriting it needs no --overwrite, and still keeps the files.
    assert convert(out, count=50) == 0
    assert all((out / name).read_bytes() == data for name, data in files.items())
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*files, MANIFEST_NAME, "shard-000000.tar", "shard-000001.tar"]
    )


def test_foreign_manifest_is_never_replaced(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "webapp"
    out.mkdir()
    (out / MANIFEST_NAME).write_text('{"name": "my web app"}')
    for extra in ((), ("--overwrite",)):
        assert convert(out, *extra) == 2
        assert_one_line_error(capsys.readouterr().err, f"{out / MANIFEST_NAME}: not written by")
    assert (out / MANIFEST_NAME).read_text() == '{"name": "my web app"}'
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME]


def test_a_manifest_cannot_make_convert_delete_outside_its_set(tmp_path: Path) -> None:
    out = tmp_path / "set"
    assert convert(out) == 0
    victim = tmp_path / "victim.tar"
    victim.write_bytes(b"precious")
    (out / "keep.txt").write_bytes(b"kept")
    names = ["../victim.tar", str(victim), "keep.txt", MANIFEST_NAME]
    edit_manifest(out, lambda d: d["shards"].extend({"name": n} for n in names))
    assert convert(out) == 0
    assert victim.read_bytes() == b"precious" and (out / "keep.txt").read_bytes() == b"kept"


def test_rerun_after_an_interruption_removes_only_its_partial_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "set"
    out.mkdir()
    (out / "README").write_text("mine")
    with (
        pytest.raises(RuntimeError),
        ShardSetWriter(
            out, (8, 8), "uint8", {}, {}, shard_size=10, block_size=5, overwrite=True
        ) as writer,
    ):
        writer.add(np.zeros((35, 8, 8), np.uint8), {})
        raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == [
        JOURNAL_NAME,
        "README",
        *(f"shard-00000{i}.tar" for i in range(4)),
    ]
    # The journal names the partial shards as ours: no --overwrite, and they are all replaced.
    assert convert(out, count=30) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST_NAME, "README", "shard-000000.tar"]
    )
    assert (out / "README").read_text() == "mine"


@pytest.mark.parametrize("source", [s.NAME for s in SOURCES])
def test_every_source_documents_overwrite(source: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", source, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in text and "never deletes or replaces a file it did not write" in text


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
