"""Training faults a hostile user meets: nothing lost, nothing silently wrong, one line each.

Resume falls back past a damaged checkpoint and keeps the run's settings; Ctrl-C saves; bad
paths, values and disks are one line with exit status 2. (Shard-side faults are in
tests/shards/test_faults.py.)"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from distsim.checkpoints import store as ckpt_mod
from distsim.checkpoints.store import list_checkpoints, load_state, verify_checkpoint
from distsim.refine import main as refine_main
from distsim.train import EXIT_PREEMPTED, main
from tests.helpers import saved_settings

REPO = Path(__file__).resolve().parents[2]


def _flags(tmp_path: Path, run: str, *extra: str) -> list[str]:
    return ["--preset", "smoke", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
            "--num-workers", "0", "--run-dir", str(tmp_path / run), *extra]  # fmt: skip


def _one_line(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distsim.train: error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


def test_resume_auto_skips_a_truncated_newest_checkpoint_and_says_why(
    tmp_path, capsys, monkeypatch
):
    assert main(_flags(tmp_path, "run", "--steps", "6", "--ckpt-every", "4",
                       "--keep-checkpoints", "0")) == 0  # fmt: skip
    ckpts = list_checkpoints(tmp_path / "run")
    assert [c.name for c in ckpts] == ["step-00000004", "step-00000008", "step-00000010"]
    state = ckpts[-1] / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    assert "state.pt does not match its checksum" in str(verify_checkpoint(ckpts[-1]))
    assert verify_checkpoint(ckpts[-2]) is None
    capsys.readouterr()
    verified = []
    real_verify = ckpt_mod.verify_checkpoint
    monkeypatch.setattr(
        ckpt_mod, "verify_checkpoint", lambda c: verified.append(c.name) or real_verify(c)
    )
    assert main(_flags(tmp_path, "run", "--resume", "auto", "--steps", "6")) == 0
    # Each checkpoint's checksums are read once, not again when training starts.
    assert verified == ["step-00000010", "step-00000008"]
    monkeypatch.undo()
    out = capsys.readouterr().out
    assert "resuming from" in out and "step-00000008 at step 8" in out
    assert "skipped" in out and "step-00000010: state.pt does not match its checksum" in out
    # Resumed from 8, the run wrote step 10 again, whole this time.
    assert verify_checkpoint(ckpts[-1]) is None
    assert load_state(ckpts[-1])["counters"]["step"] == 10
    # Given explicitly, a damaged checkpoint is one line, never a traceback.
    state.write_bytes(b"garbage")
    assert main(_flags(tmp_path, "run", "--resume", str(ckpts[-1]))) == 2
    _one_line(capsys, "step-00000010", "does not match its checksum")
    # refine refuses it too, rather than refining with damaged weights.
    syn = tmp_path / "cache" / "sim-eyes-v3-synthetic-n512-s0"
    out = tmp_path / "refined"
    assert refine_main(["--run", str(ckpts[-1]), "--input", str(syn), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match its checksum" in err[0], err
    assert not out.exists()
    # When every checkpoint is damaged, --resume auto refuses rather than starting afresh.
    for ckpt in ckpts:
        (ckpt / "refiner.safetensors").write_bytes(b"")
    assert main(_flags(tmp_path, "run", "--resume", "auto")) == 2
    _one_line(capsys, "no checkpoint in", "verifies", "and 2 more")
    assert [c.name for c in list_checkpoints(tmp_path / "run")] == [c.name for c in ckpts]


def test_resume_keeps_the_runs_settings_unless_given_and_lists_what_was_given(tmp_path, capsys):
    first = _flags(tmp_path, "run", "--steps", "4", "--ckpt-every", "2",
                   "--keep-checkpoints", "0", "--lambda-reg", "0.25")  # fmt: skip
    assert main(first) == 0
    kept = [c.name for c in list_checkpoints(tmp_path / "run")]
    assert len(kept) == 4
    capsys.readouterr()
    # Left off: --keep-checkpoints (the preset's would be 3) and --lambda-reg.
    assert main(_flags(tmp_path, "run", "--resume", "auto", "--steps", "6")) == 0
    out = capsys.readouterr().out
    assert "changed: steps 4 -> 6" in out and "keep_checkpoints" not in out
    assert [c.name for c in list_checkpoints(tmp_path / "run")][:4] == kept  # nothing deleted
    config = saved_settings(tmp_path / "run" / "config.json")
    assert (config["keep_checkpoints"], config["lambda_reg"], config["steps"]) == (0, 0.25, 6)


def test_retention_keeps_the_checkpoint_just_written_below_newer_ones(tmp_path):
    assert main(_flags(tmp_path, "run", "--steps", "6", "--ckpt-every", "2",
                       "--keep-checkpoints", "0")) == 0  # fmt: skip
    older = tmp_path / "run" / "checkpoints" / "step-00000004"
    # Back to step 4 on purpose, keeping one checkpoint: the newer ones of the old timeline
    # sort after what this run writes, which must not be what retention deletes.
    assert main(_flags(tmp_path, "run", "--resume", str(older), "--keep-checkpoints", "1",
                       "--steps", "1")) == 0  # fmt: skip
    names = [c.name for c in list_checkpoints(tmp_path / "run")]
    assert (
        "step-00000005" in names
        and load_state(tmp_path / "run" / "checkpoints" / "step-00000005")["counters"]["step"] == 5
    )


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous(
    tmp_path, capsys, monkeypatch
):
    assert main(_flags(tmp_path, "run", "--steps", "2")) == 0
    before = list_checkpoints(tmp_path / "run")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "save_file", full)
    capsys.readouterr()
    assert main(_flags(tmp_path, "run", "--resume", "auto", "--steps", "4")) == 2
    _one_line(capsys, "could not write checkpoint step 8", "No space left on device",
              f"the previous checkpoint {before[-1]} is intact")  # fmt: skip
    monkeypatch.undo()
    assert list_checkpoints(tmp_path / "run") == before and verify_checkpoint(before[-1]) is None
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))  # no half save left


def test_a_read_only_run_directory_is_one_line(tmp_path, capsys, monkeypatch):
    # As root, chmod cannot make a directory read-only: the refusal is made for it.
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "run")):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(_flags(tmp_path, "run")) == 2
    _one_line(capsys, str(tmp_path / "run"), "Permission denied")


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--refiner-width", "0"], ["--refiner-width must be positive"]),
        (["--disc-widths", "8,0,8,8"], ["--disc-widths must all be positive"]),
        (["--lambda-reg", "nan"], ["--lambda-reg must be a finite number"]),
        (["--lr-d", "inf"], ["--lr-d must be a finite number"]),
        (["--pretrain-r-steps", "0", "--pretrain-d-steps", "0", "--steps", "0"],
         ["nothing to train"]),
    ],
)  # fmt: skip
def test_bad_values_are_one_line(tmp_path, capsys, flags, needles):
    assert main(_flags(tmp_path, "run", *flags)) == 2
    _one_line(capsys, *needles)


def test_bad_paths_and_architecture_changes_are_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    assert main(_flags(tmp_path, "file")) == 2
    _one_line(capsys, "file: --run-dir exists and is not a directory")
    assert main(_flags(tmp_path, "run")) == 0
    capsys.readouterr()
    assert main(_flags(tmp_path, "run", "--resume", "auto", "--refiner-width", "16")) == 2
    _one_line(capsys, "trained with --refiner-width 8, this run asks for 16",
              "cannot change on resume")  # fmt: skip
    # An empty shard set (a manifest of zero images) is refused by name.
    empty = tmp_path / "empty"
    empty.mkdir()
    good = tmp_path / "cache" / "sim-eyes-v3-real-n512-s0"
    manifest = json.loads((good / "manifest.json").read_text())
    manifest |= {"count": 0, "shards": []}
    (empty / "manifest.json").write_text(json.dumps(manifest))
    syn = tmp_path / "cache" / "sim-eyes-v3-synthetic-n512-s0"
    assert main(_flags(tmp_path, "r2", "--synthetic", str(syn), "--real", str(empty))) == 2
    _one_line(capsys, "empty")


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Starts a 100,000-step run in a child process; kills whatever is still running when
    the test ends, so a failed assertion never leaves a training process behind."""
    procs: list[subprocess.Popen[str]] = []

    def start(run: str, *extra: str) -> subprocess.Popen[str]:
        flags = _flags(tmp_path, run, "--steps", "100000", "--ckpt-every", "100000", *extra)
        cmd = [sys.executable, str(REPO / "distsim" / "train.py"), *flags]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _wait_for_training(run: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 240
    while not list((run / "images").glob("step-*.png")):  # the first grid: training runs
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_ctrl_c_saves_a_checkpoint_and_a_second_aborts(tmp_path, launch):
    proc = launch("run")
    _wait_for_training(tmp_path / "run", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert "stopped by SIGINT" in err and "Traceback" not in err
    saved = list_checkpoints(tmp_path / "run")
    assert len(saved) == 1 and verify_checkpoint(saved[0]) is None

    # Steps of about a second (one thread), so that the second Ctrl-C lands inside one.
    proc = launch("again", "--refiner-width", "32", "--refiner-blocks", "4",
                  "--batch-size", "64", "--history-size", "128")  # fmt: skip
    _wait_for_training(tmp_path / "again", proc)
    proc.send_signal(signal.SIGINT)
    # Two signals before Python runs its handler count as one: send the second only once
    # the first has been handled (its message is out), while the step still runs.
    seen = ""
    while "Ctrl-C again" not in seen:
        line = proc.stderr.readline() if proc.stderr else ""
        assert line, seen[-2000:]  # the process ended without handling the first Ctrl-C
        seen += line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = seen + err
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert not list_checkpoints(tmp_path / "again")
