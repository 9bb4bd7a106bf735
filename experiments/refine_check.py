"""Did refinement move synthetic eyes toward the real domain, and did the pupil stay put?

    python -m experiments.refine_check --run RUN_DIR [--count 2000] [--out FILE.json]

Refines `count` fresh synthetic images (a seed the training shards never used) with the run's
newest checkpoint and reports:
- pupil shift: distance between the pupil located (distsim.gaze.pupil) in each synthetic image and
  in its refinement, plus the locator's error against the simulator's exact label on both;
- appearance: mean intensity, corner-patch texture (std) and pixel noise (median |Laplacian|)
  of synthetic, refined and real images: refined should sit between synthetic and real.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from distsim.checkpoints.models import load_models
from distsim.checkpoints.store import resolve_checkpoint
from distsim.data.pixels import to_unit_range
from distsim.gaze.pupil import locate_pupil
from shards.sim.eyes import generate


def appearance(images: torch.Tensor) -> dict[str, float]:
    """images uint8 (N, 1, H, W) -> summary statistics in grey levels."""
    x = images[:, 0].float()
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return {
        "mean": x.mean().item(),
        "corner_std": x[:, :5, :8].flatten(1).std(dim=1).median().item(),
        "noise": lap.abs().flatten(1).median(dim=1).values.median().item(),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", required=True, help="run directory or checkpoint directory")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    refiner, _, cfg = load_models(args.run)
    refiner.eval()
    syn = generate("synthetic", args.count, args.seed)
    real = generate("real", args.count, args.seed)
    x_syn = torch.from_numpy(syn["image"]).unsqueeze(1)  # (N, 1, 35, 55) uint8
    with torch.no_grad():
        refined = torch.cat([refiner(to_unit_range(b)) for b in x_syn.split(256)])
    x_ref = ((refined.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # as a refined shard
    label = torch.from_numpy(syn["pupil"])
    p_syn, p_ref = locate_pupil(x_syn), locate_pupil(x_ref)
    shift = (p_syn - p_ref).norm(dim=1)
    result = {
        "checkpoint": str(resolve_checkpoint(args.run)),
        "count": args.count,
        "pupil_shift_px": {
            "mean": shift.mean().item(),
            "std": shift.std().item(),
            "median": shift.median().item(),
        },
        "locator_error_px": {
            "synthetic": (p_syn - label).norm(dim=1).mean().item(),
            "refined": (p_ref - label).norm(dim=1).mean().item(),
        },
        "appearance": {
            "synthetic": appearance(x_syn),
            "refined": appearance(x_ref),
            "real": appearance(torch.from_numpy(real["image"]).unsqueeze(1)),
        },
        "lambda_reg": cfg.optim.lambda_reg,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
