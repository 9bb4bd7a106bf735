"""Shard format, writer and CLI: round trips against the simulator, refusal of bad sets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from shards.cli import main
from shards.format import (
    MANIFEST_NAME,
    Manifest,
    ShardError,
    decode_block,
    read_manifest,
)
from shards.sim import eyes
from shards.writer import JOURNAL_NAME, ShardSetWriter
from tests.fixtures_sources import read_shard_set

REPO = Path(__file__).resolve().parents[2]
LABELS = ("gaze", "pitchyaw", "pupil")


def convert(
    out: Path,
    count: int = 300,
    seed: int = 3,
    domain: str = "synthetic",
    shard_size: int = 200,
    block_size: int = 64,
) -> Path:
    argv = [
        "convert",
        "sim-eyes",
        "--domain",
        domain,
        "--count",
        str(count),
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--shard-size",
        str(shard_size),
        "--block-size",
        str(block_size),
    ]
    assert main(argv) == 0
    return out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "shards", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("shards: error: "), stderr
    for needle in needles:
        assert needle in lines[0], (needle, stderr)


def test_roundtrip_matches_generator(tmp_path: Path) -> None:
    out = convert(tmp_path / "set")
    m = read_manifest(out)
    ref = eyes.generate("synthetic", 300, 3)

    images, labels = read_shard_set(out)
    np.testing.assert_array_equal(images, ref["image"][:, None])  # (N, 1, 35, 55)
    for k in LABELS:
        np.testing.assert_array_equal(labels[k], ref[k])
    assert images.dtype == np.uint8
    assert (m.count, m.image_shape, m.image_dtype, m.block_size) == (300, (1, 35, 55), "uint8", 64)
    assert {k: s.shape for k, s in m.labels.items()} == {
        "gaze": (3,),
        "pitchyaw": (2,),
        "pupil": (2,),
    }
    assert m.source == {"name": "sim-eyes", "domain": "synthetic", "seed": 3}
    assert m.labelled and not m.labels_for_evaluation_only
    # 200 per shard: blocks 64, 64, 64, 8 then 64, 36 (a block never spans two shards).
    assert [(s.name, s.count, s.blocks) for s in m.shards] == [
        ("shard-000000.tar", 200, 4),
        ("shard-000001.tar", 100, 2),
    ]
    assert Manifest.from_json(m.to_json()) == m


def test_standard_tools_read_the_tars(tmp_path: Path) -> None:
    out = convert(tmp_path / "set", count=100, shard_size=100)
    m = read_manifest(out)
    shard = str(out / "shard-000000.tar")
    with tarfile.open(shard) as tar:
        assert tar.getnames()[:4] == [f"00000000.{k}.npy" for k in ("image", *LABELS)]
    if shutil.which("tar"):
        listing = subprocess.run(["tar", "tf", shard], capture_output=True, text=True, check=True)
        assert listing.stdout.split()[0] == "00000000.image.npy"
    samples = list(wds.WebDataset(shard, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == ["00000000", "00000001"]
    images = np.concatenate([decode_block(s, m)[0] for s in samples])
    np.testing.assert_array_equal(images[:, 0], eyes.generate("synthetic", 100, 3)["image"])


def test_real_domain_labels_are_for_evaluation_only(tmp_path: Path) -> None:
    m = read_manifest(convert(tmp_path / "real", count=20, domain="real"))
    assert not m.labelled and m.labels_for_evaluation_only
    assert m.source["domain"] == "real"


def test_interrupted_conversion_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = convert(tmp_path / "set")  # a complete set, then an interrupted rewrite of it
    ref = eyes.generate("synthetic", 300, 3)
    with (
        pytest.raises(RuntimeError),
        ShardSetWriter(
            out,
            (35, 55),
            "uint8",
            {"gaze": ((3,), "float32", "")},
            {"name": "test"},
            shard_size=100,
            block_size=64,
        ) as writer,
    ):
        writer.add(ref["image"], {"gaze": ref["gaze"]})
        raise RuntimeError("killed")
    assert not (out / MANIFEST_NAME).exists()
    assert sorted(p.name for p in out.iterdir()) == [
        JOURNAL_NAME,  # lists the partial shards, for a rerun to remove
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]

    with pytest.raises(ShardError, match="has no manifest.json: conversion incomplete"):
        read_manifest(out)
    capsys.readouterr()  # drop the progress bar of the first conversion
    assert main(["inspect", str(out)]) == 2
    assert_one_line_error(capsys.readouterr().err, str(out), "has no manifest.json")


def test_rerun_replaces_cleanly(tmp_path: Path) -> None:
    out = convert(tmp_path / "set", count=300, shard_size=100)
    (out / "notes.txt").write_text("not ours")
    convert(out, count=150, seed=4, shard_size=100)
    assert sorted(p.name for p in out.iterdir()) == [
        MANIFEST_NAME,
        "notes.txt",
        "shard-000000.tar",
        "shard-000001.tar",
    ]
    m = read_manifest(out)
    assert m.count == 150 and m.source["seed"] == 4
    np.testing.assert_array_equal(
        read_shard_set(out)[0][:, 0], eyes.generate("synthetic", 150, 4)["image"]
    )


def test_same_seed_gives_identical_shards(tmp_path: Path) -> None:
    a = read_manifest(convert(tmp_path / "a"))
    b = read_manifest(convert(tmp_path / "b"))
    c = read_manifest(convert(tmp_path / "c", seed=4))
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    assert a.shards[0].sha256 != c.shards[0].sha256


def test_subprocess_convert_and_inspect(tmp_path: Path) -> None:
    out = tmp_path / "set"
    done = run_cli(
        "convert",
        "sim-eyes",
        "--domain",
        "synthetic",
        "--count",
        "300",
        "--seed",
        "3",
        "--out",
        str(out),
        "--shard-size",
        "200",
        "--block-size",
        "64",
    )
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(
        read_shard_set(out)[0][:, 0], eyes.generate("synthetic", 300, 3)["image"]
    )

    done = run_cli("inspect", str(out))
    assert done.returncode == 0, done.stderr
    assert "300 images 1x35x55 uint8 in 2 shards" in done.stdout
    assert "gaze" in done.stdout and "ok: 300 images verified" in done.stdout

    # One flipped byte inside image data: only the checksum can notice.
    shard = out / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[5000] ^= 0xFF
    shard.write_bytes(bytes(data))
    done = run_cli("inspect", str(out))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert_one_line_error(done.stderr, str(shard), "sha256")


def test_help_for_every_command() -> None:
    for args in ([], ["convert"], ["convert", "sim-eyes"], ["inspect"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--help"])
        assert exit_info.value.code == 0


def _manifest_dict(out: Path) -> dict:
    return json.loads((out / MANIFEST_NAME).read_text())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda out: shutil.rmtree(out), "shard directory does not exist"),
        (lambda out: (out / MANIFEST_NAME).write_text("{not json"), "invalid JSON"),
        (
            lambda out: (out / MANIFEST_NAME).write_text(
                json.dumps({**_manifest_dict(out), "format": "other"})
            ),
            "format is 'other'",
        ),
        (
            lambda out: (out / MANIFEST_NAME).write_text(
                json.dumps({**_manifest_dict(out), "version": 2})
            ),
            "version 2 is not supported",
        ),
        (
            lambda out: (out / MANIFEST_NAME).write_text(
                json.dumps({k: v for k, v in _manifest_dict(out).items() if k != "count"})
            ),
            "missing field 'count'",
        ),
        (lambda out: (out / "shard-000001.tar").unlink(), "listed in manifest.json but missing"),
        (lambda out: os.truncate(out / "shard-000001.tar", 1000), "(truncated?)"),
    ],
)
def test_read_manifest_names_path_and_problem(tmp_path: Path, damage, message: str) -> None:
    out = convert(tmp_path / "set")
    damage(out)
    with pytest.raises(ShardError) as error:
        read_manifest(out)
    text = str(error.value)
    assert message in text and str(out) in text and "\n" not in text


def test_inspect_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    assert_one_line_error(capsys.readouterr().err, str(tmp_path / "nope"), "does not exist")


def test_writer_validates_input(tmp_path: Path) -> None:
    labels = {"gaze": ((3,), "float32", "")}
    images = np.zeros((4, 35, 55), np.uint8)
    gaze = np.zeros((4, 3), np.float64)  # float64 labels are stored as float32
    with ShardSetWriter(tmp_path / "ok", (35, 55), "uint8", labels, {}) as writer:
        writer.add(images, {"gaze": gaze})
    assert read_manifest(tmp_path / "ok").labels["gaze"].dtype == "float32"

    bad = [
        (images.astype(np.float32), {"gaze": gaze}, "images are float32"),
        (images[:, :30], {"gaze": gaze}, "expected (N, 1, 35, 55)"),
        (images, {}, "labels given []"),
        (images, {"gaze": gaze[:, :2]}, "label gaze has shape (4, 2)"),
        (images, {"gaze": np.full((4, 3), np.nan)}, "non-finite"),
    ]
    for bad_images, bad_labels, message in bad:
        with (
            pytest.raises(ValueError) as error,
            ShardSetWriter(tmp_path / "bad", (35, 55), "uint8", labels, {}) as writer,
        ):
            writer.add(bad_images, bad_labels)
        assert message in str(error.value)
    with pytest.raises(ValueError, match="label name 'a.b'"):
        ShardSetWriter(tmp_path / "bad", (35, 55), "uint8", {"a.b": ((1,), "float32", "")}, {})


def test_decode_never_unpickles() -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ShardError, match="does not decode"):
        decode_block({"image.npy": buf.getvalue()})
