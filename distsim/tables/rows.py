"""What every row of the paper's tables needs: a SimGAN run trained and its synthetic set
refined, a console line for each stage, and mean +- sd cells."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from distsim.checkpoints.realism import LabelShift
from distsim.checkpoints.refine import load_refiner, refine_shards
from distsim.checkpoints.store import resolve_checkpoint
from distsim.config import Config
from distsim.training.loop import training_loop

PROG = "distsim.report"


def say(text: str) -> None:
    """What the report starts on, on stderr (its stages' own progress follows)."""
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def refine_with(ckpt: Path, synthetic: Path, out: Path, weights: str = "auto") -> Path:
    """Refine `synthetic` into `out` with checkpoint `ckpt`, unless `out` already holds what
    that checkpoint made."""
    if (out / "manifest.json").is_file():
        made_with = json.loads((out / "manifest.json").read_text())["source"]["checkpoint"]
        if made_with["path"] == str(ckpt.resolve()) and weights in ("auto", made_with["weights"]):
            return out
    refiner, info, trained_shape = load_refiner(ckpt, weights)
    refine_shards(refiner, synthetic, out, checkpoint=info, trained_shape=trained_shape,
                  num_workers=0, progress=True)  # fmt: skip
    return out


def train_and_refine(
    cfg: Config, synthetic: Path, out: Path, label_shift: LabelShift | None = None
) -> Path:
    """Train SimGAN as configured, then refine `synthetic` into `out` with its final R (the
    weight average when the run keeps one), unless an earlier call already did."""
    return refine_with(resolve_checkpoint(training_loop(cfg, label_shift=label_shift)),
                       synthetic, out)  # fmt: skip


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} +- {statistics.stdev(values):.1f}"
