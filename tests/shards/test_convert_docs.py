"""Every command in the README's "Bring your own data" section runs as written on fixtures."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from shards.cli import main
from shards.format import read_manifest
from tests.fixtures_sources import (
    write_kaggle_h5,
    write_mpiigaze_root,
    write_nyu_dir,
    write_unityeyes_dir,
)

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def doc_commands() -> list[str]:
    text = README.read_text()
    section = text.split("\n## Bring your own data\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines()]
    return [line for line in lines if line.startswith("python -m shards ")]


def test_every_documented_command_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # The layouts the document describes, at the paths its commands use.
    write_kaggle_h5(tmp_path / "gaze.h5", 40)
    write_kaggle_h5(tmp_path / "real_gaze.h5", 30, labelled=False, seed=1)
    write_unityeyes_dir(tmp_path / "unityeyes" / "imgs", 8)
    write_mpiigaze_root(tmp_path / "MPIIGaze", people=2, days=2, per_day=3)
    write_nyu_dir(tmp_path / "nyu" / "train", frames=4)
    write_nyu_dir(tmp_path / "nyu" / "test", frames=3, seed=1)
    monkeypatch.chdir(tmp_path)

    commands = doc_commands()
    assert {shlex.split(c)[4] for c in commands if " convert " in c} == {
        "kaggle-h5",
        "unityeyes",
        "mpiigaze",
        "sim-eyes",
        "nyu",
    }
    for command in commands:
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "shards"]
        if "sim-eyes" in argv:  # 50000 renders take ~10 s each; the syntax is what is tested
            argv[argv.index("--count") + 1] = "500"
        assert main(argv[3:]) == 0, (command, capsys.readouterr().err)

    counts = {
        name: read_manifest(tmp_path / "data" / name).count
        for name in ("kaggle-synthetic", "kaggle-real", "unityeyes", "mpiigaze", "mpiigaze-eval",
                     "nyu-train", "nyu-train-3x", "nyu-synth", "nyu-test", "nyu-test-cube")
    }  # fmt: skip
    assert counts == {
        "kaggle-synthetic": 40,
        "kaggle-real": 30,
        "unityeyes": 8,
        "mpiigaze": 24,
        "mpiigaze-eval": 12,
        "nyu-train": 4,
        "nyu-train-3x": 12,
        "nyu-synth": 4,
        "nyu-test": 3,
        "nyu-test-cube": 3,
    }
    assert (tmp_path / "unityeyes_contact_sheet.png").is_file()
    assert (tmp_path / "mpiigaze.png").is_file()


def test_one_documented_command_in_a_real_shell(tmp_path: Path) -> None:
    write_kaggle_h5(tmp_path / "gaze.h5", 10)
    command = next(c for c in doc_commands() if "--input gaze.h5" in c)
    done = subprocess.run(
        command.replace("python", shlex.quote(sys.executable), 1),
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert read_manifest(tmp_path / "data" / "kaggle-synthetic").count == 10
