"""Options every source shares: --workers (byte-identical output), --shard-size bytes, --limit,
--help; and interrupted conversions (SIGINT, SIGTERM, SIGKILL) in a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distsim.data import open_shards
from shards.cli import main
from shards.format import MANIFEST_NAME, ShardError, read_manifest
from shards.sources.common import ShardSize
from tests.fixtures_sources import (
    assert_one_line_error,
    read_shard_set,
    shard_digests,
    write_kaggle_h5,
    write_mpiigaze_root,
    write_unityeyes_dir,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Source name -> its convert arguments, on small fixtures."""
    root = tmp_path_factory.mktemp("sources")
    write_kaggle_h5(root / "gaze.h5", 700)
    write_unityeyes_dir(root / "imgs", 300)
    write_mpiigaze_root(root / "MPIIGaze", people=2, days=3, per_day=[40, 1, 30])
    return {
        "kaggle-h5": ["kaggle-h5", "--input", str(root / "gaze.h5")],
        "unityeyes": ["unityeyes", "--input", str(root / "imgs")],
        "mpiigaze": ["mpiigaze", "--input", str(root / "MPIIGaze")],
        "mpiigaze-evaluation": [
            "mpiigaze",
            "--input",
            str(root / "MPIIGaze"),
            "--subset",
            "evaluation",
        ],
        "sim-eyes": ["sim-eyes", "--domain", "real", "--count", "1200"],
    }


SOURCES = ["kaggle-h5", "unityeyes", "mpiigaze", "mpiigaze-evaluation", "sim-eyes"]


@pytest.mark.parametrize("source", SOURCES)
def test_workers_give_byte_identical_shards(
    tmp_path: Path, sources: dict[str, list[str]], source: str
) -> None:
    args = ["convert", *sources[source], "--shard-size", "100", "--block-size", "32"]
    assert main([*args, "--out", str(tmp_path / "w1")]) == 0
    assert main([*args, "--out", str(tmp_path / "w2"), "--workers", "2"]) == 0
    one, two = shard_digests(tmp_path / "w1"), shard_digests(tmp_path / "w2")
    assert len(one) >= 2 and one == two


@pytest.mark.parametrize("source", SOURCES)
def test_limit_takes_the_first_images(
    tmp_path: Path, sources: dict[str, list[str]], source: str
) -> None:
    assert main(["convert", *sources[source], "--out", str(tmp_path / "all")]) == 0
    assert main(["convert", *sources[source], "--limit", "45", "--out", str(tmp_path / "45")]) == 0
    full, limited = read_shard_set(tmp_path / "all"), read_shard_set(tmp_path / "45")
    assert len(limited[0]) == 45
    np.testing.assert_array_equal(limited[0], full[0][:45])
    for name, values in limited[1].items():
        np.testing.assert_array_equal(values, full[1][name][:45])


def test_shard_size_in_bytes(tmp_path: Path, sources: dict[str, list[str]]) -> None:
    out = tmp_path / "set"
    # 1200 images of 35x55 bytes at 32 per block: about 62 KB per block.
    args = ["convert", *sources["sim-eyes"], "--block-size", "32", "--shard-size", "200KB"]
    assert main([*args, "--out", str(out)]) == 0
    m = read_manifest(out)
    assert len(m.shards) > 5 and m.count == 1200
    block = 32 * 35 * 55 + 4 * 1024  # pixels + a few headers and label members
    for info in m.shards[:-1]:
        # Closed by the first block that took it past 200 KB; the tar end adds up to 10 KB.
        assert 200_000 <= info.bytes < 200_000 + block + 10_240, info
    assert m.shards[-1].bytes < 200_000 + block + 10_240


def test_shard_size_parsing() -> None:
    assert ShardSize.parse("50000") == ShardSize(images=50_000)
    assert ShardSize.parse("500MB").bytes == 500_000_000
    assert ShardSize.parse("1GB").bytes == 1_000_000_000
    assert ShardSize.parse("1.5gb").bytes == 1_500_000_000
    assert ShardSize.parse("64KiB").bytes == 65_536
    for bad in ("0", "abc", "10 parsecs", "-5MB"):
        with pytest.raises(ValueError):
            ShardSize.parse(bad)


def test_bad_shard_size_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["convert", "sim-eyes", "--domain", "real", "--count", "5", "--out", "x"]
            + ["--shard-size", "lots"]
        )
    assert exit_info.value.code == 2
    assert "neither an image count nor a size" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["kaggle-h5", "unityeyes", "mpiigaze", "nyu", "sim-eyes"])
def test_help(source: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", source, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--shard-size", "--workers", "--limit", "--block-size"):
        assert option in text


def test_missing_input_via_subprocess(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shards", "convert", "kaggle-h5", "--input", "nope.h5"]
        + ["--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "nope.h5: does not exist")


# --- interruption -------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields: state, ppid, ...
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _convert_cmd(out: Path, count: int) -> list[str]:
    return [sys.executable, "-m", "shards", "convert", "sim-eyes", "--domain", "synthetic"] + [
        "--count",
        str(count),
        "--out",
        str(out),
        "--shard-size",
        "1024",
        "--workers",
        "2",
    ]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize(
    ("sig", "code", "ignoring"),
    [
        (signal.SIGINT, 130, False),
        # Started with SIGINT ignored (a non-interactive shell's background job, some CI
        # runners): Python then installs no Ctrl-C handler of its own, and the interrupt used
        # to be swallowed while the conversion went on.
        (signal.SIGINT, 130, True),
        (signal.SIGTERM, 143, False),
        (signal.SIGKILL, -9, False),
    ],
)
def test_interrupted_conversion_leaves_no_manifest(
    tmp_path: Path, sig: int, code: int, ignoring: bool
) -> None:
    out = tmp_path / "set"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # A complete set first: the interrupted rewrite must not leave it looking complete.
    subprocess.run(_convert_cmd(out, 300), env=env, check=True, capture_output=True, timeout=60)
    first = read_manifest(out).shards[0].sha256

    # Ten million images would take an hour: it is certainly mid-conversion when signalled.
    proc = subprocess.Popen(
        _convert_cmd(out, 10_000_000),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a job in a terminal
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignoring else None,
    )
    try:
        deadline = time.monotonic() + 30
        while not (out / "shard-000001.tar").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no shard appeared"
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert len(workers) == 2
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # Ctrl-C reaches the whole group
        else:
            proc.send_signal(sig)
        # It exits in a fraction of a second on an idle machine, and within seconds loaded.
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    if sig != signal.SIGKILL:
        assert "Traceback" not in stderr
        assert stderr.strip().splitlines() == [
            f"shards: {'interrupted' if sig == signal.SIGINT else 'terminated'}; "
            "no manifest written"
        ]
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers), "orphaned workers"

    assert not (out / MANIFEST_NAME).exists()
    with pytest.raises(ShardError, match="has no manifest.json"):
        open_shards(out)
    done = subprocess.run(
        [sys.executable, "-m", "shards", "inspect", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "has no manifest.json")

    # Rerunning replaces the partial set cleanly.
    subprocess.run(_convert_cmd(out, 300), env=env, check=True, capture_output=True, timeout=60)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "shard-000000.tar"]
    assert read_manifest(out).shards[0].sha256 == first
