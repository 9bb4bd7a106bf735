"""How fast can a discriminator tell a trained refiner's output from real eyes?

    python experiments/d_capacity.py --run RUN_DIR [--steps 150] [--lrs 1e-4 1e-3]

Freezes the run's newest refiner, then trains D (the checkpoint's D, and fresh ones at each
learning rate) on refined built-in synthetic eyes vs built-in real eyes, batch 32, Adam, and
prints D's patch accuracy averaged over windows of 25 steps. If a fresh D at the training
learning rate separates the two only slowly while a faster one separates them at once, the
GAN is D-starved: R is not being told what is wrong with its images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distsim import data  # noqa: E402
from distsim.checkpoints.models import load_models  # noqa: E402
from distsim.checkpoints.store import resolve_checkpoint  # noqa: E402
from distsim.data.pixels import to_unit_range  # noqa: E402
from distsim.gan.discriminator import REAL, REFINED, Discriminator  # noqa: E402
from distsim.gan.losses import local_adversarial_loss, patch_accuracy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 1e-3])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    ckpt = resolve_checkpoint(args.run)
    refiner, d_trained, cfg = load_models(ckpt)
    refiner.eval()
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else None
    syn_dir = data.ensure_builtin_shards(
        "synthetic", cfg.data.builtin_count, cfg.data.builtin_seed, cache
    )
    real_dir = data.ensure_builtin_shards(
        "real", cfg.data.builtin_count, cfg.data.builtin_seed, cache
    )
    candidates = {f"checkpoint D, lr {cfg.optim.lr_d:g}": (d_trained, cfg.optim.lr_d)}
    for lr in args.lrs:
        candidates[f"fresh D, lr {lr:g}"] = (
            Discriminator(1, cfg.discriminator.widths, cfg.discriminator.arch),
            lr,
        )
    results = {"checkpoint": str(ckpt), "windows_of": 25, "accuracy": {}}
    for name, (disc, lr) in candidates.items():
        syn = iter(data.make_loader(syn_dir, 32, 0, 1, 5, num_workers=0, labels=()))
        real = iter(data.make_loader(real_dir, 32, 0, 1, 6, num_workers=0, labels=()))
        opt = torch.optim.Adam(disc.parameters(), lr=lr)
        acc = []
        for _ in range(args.steps):
            x, y = (to_unit_range(next(s)["image"]) for s in (syn, real))
            with torch.no_grad():
                fake = refiner(x)  # (B, 1, H, W)
            lf, lr_ = disc(fake), disc(y)
            loss = local_adversarial_loss(lf, REFINED).mean()
            loss = loss + local_adversarial_loss(lr_, REAL).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            both = patch_accuracy(lf, REFINED).mean() + patch_accuracy(lr_, REAL).mean()
            acc.append(both.item() / 2)
        windows = [
            round(sum(acc[i : i + 25]) / len(acc[i : i + 25]), 3) for i in range(0, len(acc), 25)
        ]
        results["accuracy"][name] = windows
        print(f"{name:28s} {windows}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
