"""What one checkpoint costs on disk, file by file, with a full history buffer.

    python -m benchmarks.checkpoint_size --preset cpu
    python -m benchmarks.checkpoint_size --preset eyes --mixed-precision bf16

Builds the preset's run as the trainer does (``distsim.train.Run``, on 512 built-in images:
the image count does not change a checkpoint), fills its history buffer to ``--history-size``
with refiner-like images (tanh of Gaussian noise, pushed through the buffer as training pushes
them), and saves one checkpoint with ``Run.checkpoint``. Optimiser moments exist only after a
step, so one pretraining step of each model runs first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from distsim.config import make_config
from distsim.training.run import Run


def measure(preset: str, precision: str, work: Path, **overrides: Any) -> dict[str, int]:
    """{file name: bytes} of one checkpoint of `preset` (and `overrides`) with a full buffer."""
    cfg = make_config(preset, **{
        "run_dir": str(work / f"{preset}-{precision or 'no'}"), "cache_dir": str(work / "cache"),
        "builtin_count": 512, "progress": False, "realism_images": 0, "num_workers": 0,
        "mixed_precision": precision, **overrides,
    })  # fmt: skip
    run = Run(cfg, None, None)
    try:
        run.refiner_steps(1, adversarial=False, check=False)
        run.discriminator_steps(1)
        history = run.history
        assert history is not None
        gen = torch.Generator().manual_seed(0)
        chunk = 1024
        while len(history) < history.capacity:
            n = min(chunk, history.capacity - len(history))
            history.push(torch.randn((n, *run.image_shape), generator=gen).tanh())
        path = run.checkpoint(1)
    finally:
        run.close()
    assert path is not None
    return {p.name: p.stat().st_size for p in sorted(path.iterdir())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--mixed-precision", default="", choices=("", "no", "bf16"))
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sizes = measure(a.preset, a.mixed_precision, a.work or Path(tmp))
    for name, size in sizes.items():
        print(f"{name:28s} {size / 1e6:10.3f} MB")
    print(f"{'total':28s} {sum(sizes.values()) / 1e6:10.3f} MB")


if __name__ == "__main__":
    main()
