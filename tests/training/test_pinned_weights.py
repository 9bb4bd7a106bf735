"""The weights two tiny reference runs produce, pinned: a refactor must not change one bit.

The four commands below (a smoke eye run on converted shards, a tiny hands-cpu run on the
built-in hands) are run as a user types them, single-threaded (a reduction split over threads
rounds differently), and the final checkpoint's tensors are compared with the digests
recorded here. A digest is over the tensors' shapes, dtypes and bytes, not their names, so
renaming a layer keeps it.

Bits are pinned for the CPU capability they were recorded on (oneDNN picks kernels by
instruction set, and those round differently). On another one the test still compares every
tensor's sum and absolute sum to 1 %, which any change of method (initialisation, data
order, noise, a loss) moves far beyond.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]

COMMANDS = [
    "-m shards convert sim-eyes --domain synthetic --count 512 --seed 1 --out S/syn",
    "-m shards convert sim-eyes --domain real --count 512 --seed 2 --out S/real",
    "distsim/train.py --preset smoke --synthetic S/syn --real S/real --run-dir S/eyes --seed 0",
    "distsim/train.py --preset hands-cpu --builtin-count 64 --pretrain-r-steps 2 "
    "--pretrain-d-steps 2 --steps 3 --batch-size 4 --history-size 64 --cache-dir S/cache "
    "--run-dir S/hands --seed 0",
]

# Digests and summaries recorded with these commands (tests/training/pinned_weights.json).
PINNED = json.loads((Path(__file__).with_name("pinned_weights.json")).read_text())


def tensor_rows(path: Path) -> list[tuple[tuple[int, ...], str, bytes]]:
    return sorted(
        (tuple(t.shape), str(t.dtype), t.contiguous().numpy().tobytes())
        for t in load_file(path).values()
    )


def digest(path: Path) -> str:
    lines = [f"{shape}:{dtype}:{hashlib.sha256(data).hexdigest()}"
             for shape, dtype, data in tensor_rows(path)]  # fmt: skip
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def summary(path: Path) -> list[tuple[tuple[int, ...], float, float]]:
    return sorted(
        (tuple(t.shape), float(t.double().sum()), float(t.double().abs().sum()))
        for t in load_file(path).values()
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("pinned")
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for command in COMMANDS:
        args = [a.replace("S/", f"{work}/") for a in command.split()]
        if args[0].endswith(".py"):
            args[0] = str(ROOT / args[0])
        done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    return work


@pytest.mark.parametrize("run", ["eyes", "hands"])
def test_final_weights_are_pinned(runs: Path, run: str) -> None:
    checkpoints = sorted((runs / run / "checkpoints").glob("step-*"))
    assert [c.name for c in checkpoints][-1] == "step-00000007"
    files = {p.stem: p for p in checkpoints[-1].glob("*.safetensors")}
    assert sorted(files) == sorted(PINNED["digests"][run])
    if torch.backends.cpu.get_cpu_capability() == PINNED["capability"]:
        got = {name: digest(path) for name, path in files.items()}
        assert got == PINNED["digests"][run], f"{run}: the weights changed"
        return
    # Another instruction set rounds differently, and Adam can turn a rounding difference in
    # a near-zero gradient into a whole step: only a change of method is caught here.
    for name, path in files.items():
        want = PINNED["summaries"][run][name]
        for (shape, s, a), (want_shape, ws, wa) in zip(summary(path), want, strict=True):
            assert shape == tuple(want_shape), f"{run} {name}"
            assert s == pytest.approx(ws, rel=1e-2, abs=1e-2), f"{run} {name} {shape}"
            assert a == pytest.approx(wa, rel=1e-2, abs=1e-2), f"{run} {name} {shape}"
