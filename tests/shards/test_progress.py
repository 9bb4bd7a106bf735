"""Progress on a log file: plain lines with counts, rate and time left, and a last line."""

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

import shards.cli
import shards.progress
from distsim import data
from shards.progress import Progress

REPO = Path(__file__).resolve().parents[2]


def test_progress_writes_plain_lines_when_not_on_a_terminal():
    log = io.StringIO()  # not a TTY, like a SLURM log
    with Progress(100, "sim-eyes real", unit="img", every=0.0, stream=log) as bar:
        bar.update(40)
        bar.set_postfix({"step": "4/10"})
        bar.update(60)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("sim-eyes real: 40/100 img (40%), ") and "left" in lines[0]
    assert lines[-1].startswith("sim-eyes real: 100/100 img (100%)")
    assert lines[-1].endswith("; step 4/10") and "left" not in lines[-1]
    assert "\r" not in log.getvalue()


def test_progress_is_quiet_when_disabled_or_between_intervals():
    log = io.StringIO()
    with Progress(10, "x", enabled=False, every=0.0, stream=log) as bar:
        bar.update(10)
    assert log.getvalue() == ""
    with Progress(10, "y", every=3600.0, stream=log) as bar:
        for _ in range(10):
            bar.update(1)
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[-1]]  # the end only
    assert log.getvalue().startswith("y: 10/10")


def test_a_log_names_the_directory_and_ends_where_the_work_did():
    log = io.StringIO()
    with Progress(None, "write", unit="img", every=0.0, stream=log, where="out/dir") as bar:
        bar.update(5)
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[0]]  # not twice
    assert log.getvalue().startswith("write -> out/dir: 5 img, ")
    log = io.StringIO()
    with pytest.raises(KeyError), Progress(10, "x", every=3600.0, stream=log) as bar:
        bar.update(3)
        raise KeyError  # the error alone says what happened: no last line before it
    assert log.getvalue() == ""


def _lines(text: str, head: str) -> list[tuple[int, int]]:
    """(done, total) of each progress line starting with `head`."""
    found = re.findall(rf"^{re.escape(head)}: ([\d,]+)/([\d,]+) img \(", text, re.MULTILINE)
    return [(int(a.replace(",", "")), int(b.replace(",", ""))) for a, b in found]


def test_convert_and_builtin_render_say_what_where_and_how_far_on_a_log(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(shards.progress, "EVERY", 0.0)  # a line per update
    out = tmp_path / "real"
    # 4500 eyes: three rendering tasks of at most 2048.
    argv = ["convert", "sim-eyes", "--domain", "real", "--count", "4500", "--out", str(out)]
    assert shards.cli.main(argv) == 0
    err = capsys.readouterr().err
    assert _lines(err, f"sim-eyes real -> {out}") == [(2048, 4500), (4096, 4500), (4500, 4500)]

    cache = tmp_path / "cache"
    made = data.ensure_builtin_shards("synthetic", 4500, 0, cache)
    err = capsys.readouterr().err
    # The set's final name, not the temporary directory it is written in.
    assert _lines(err, f"sim-eyes synthetic -> {made}")[-1] == (4500, 4500)
    assert len(_lines(err, f"sim-eyes synthetic -> {made}")) == 3 and ".tmp" not in err
    data.ensure_builtin_shards("synthetic", 4500, 0, cache)  # cached: nothing to say
    assert capsys.readouterr().err == ""


def test_convert_to_a_pipe_ends_with_a_line_naming_its_output(tmp_path):
    out = tmp_path / "syn"
    cmd = [sys.executable, "-m", "shards", "convert", "sim-eyes", "--domain", "synthetic",
           "--count", "300", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert _lines(proc.stderr, f"sim-eyes synthetic -> {out}") == [(300, 300)], proc.stderr
    assert "\r" not in proc.stderr
