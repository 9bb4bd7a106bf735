"""Does the built-in eye simulator's domain gap matter?

Trains the same small CNN gaze estimator once on synthetic and once on "real" images from
``shards.sim.eyes`` and tests both on held-out real images. If the simulator is a useful
SimGAN benchmark, synthetic-trained must be clearly worse on real than real-trained: that gap
is what a refiner has to close. Also measures simulator throughput.

    python -m experiments.sim_gap          # from the repo root; defaults 20k / 20k / 5k
    python -m experiments.sim_gap --train 5000 --epochs 2 --out /tmp/gap.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shards.gaze import angular_error_deg
from shards.sim import eyes

# Streams are keyed by seed, so train and test never share samples.
TRAIN_SEED, TEST_SEED = 1, 2


def make_estimator() -> nn.Module:
    """A few conv layers + FC -> 3-vector; small enough to train in a minute on 2 CPU cores."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (16, 17, 27)
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (32, 8, 13)
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (64, 4, 6)
        nn.Flatten(),
        nn.Linear(64 * 4 * 6, 128),
        nn.ReLU(),
        nn.Linear(128, 3),
    )


def to_tensor(images: np.ndarray) -> torch.Tensor:
    # A fixed affine map, not per-image standardisation: the estimator should see the domains'
    # intensity statistics as they are, as the paper's estimator does.
    return torch.from_numpy(images).float().div_(255.0).sub_(0.5).unsqueeze(1)  # (N, 1, 35, 55)


def train(
    images: np.ndarray, gaze: np.ndarray, epochs: int, batch: int, lr: float, seed: int
) -> nn.Module:
    torch.manual_seed(seed)
    model = make_estimator()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * (len(images) // batch))
    x, y = to_tensor(images), torch.from_numpy(gaze)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i : i + batch]
            loss = (model(x[idx]) - y[idx]).square().sum(dim=1).mean()  # L2 on the unit vector
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, gaze: np.ndarray) -> dict[str, float]:
    model.eval()
    pred = torch.cat([model(xb) for xb in to_tensor(images).split(1024)]).numpy()  # (N, 3)
    err = angular_error_deg(pred, gaze)  # (N,)
    return {
        "mean_error_deg": float(err.mean()),
        "median_error_deg": float(np.median(err)),
        "within_7deg_pct": float(100.0 * (err < 7.0).mean()),
    }


def throughput(domain: str, count: int) -> float:
    eyes.generate(domain, eyes.BLOCK, 0)  # warm-up
    t0 = time.perf_counter()
    eyes.generate(domain, count, 0)
    return count / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--train", type=int, default=20_000, help="training images per domain")
    ap.add_argument("--test", type=int, default=5_000, help="real test images")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0, help="estimator init / shuffling seed")
    ap.add_argument(
        "--throughput-count",
        type=int,
        default=100_000,
        help="images generated per domain to time the simulator",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/sim_gap.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    syn = eyes.generate("synthetic", args.train, TRAIN_SEED)
    real = eyes.generate("real", args.train, TRAIN_SEED)
    test = eyes.generate("real", args.test, TEST_SEED)
    # Synthetic test set: shows the estimators fit their own domain, so the gap is the domain's.
    syn_test = eyes.generate("synthetic", args.test, TEST_SEED)
    print(f"generated data in {time.perf_counter() - t0:.1f}s")

    results: dict[str, dict[str, float]] = {}
    for name, data in (("synthetic", syn), ("real", real)):
        t0 = time.perf_counter()
        model = train(data["image"], data["gaze"], args.epochs, args.batch, args.lr, args.seed)
        seconds = time.perf_counter() - t0
        results[f"trained_on_{name}"] = evaluate(model, test["image"], test["gaze"]) | {
            "train_seconds": seconds
        }
        results[f"trained_on_{name}_tested_on_synthetic"] = evaluate(
            model, syn_test["image"], syn_test["gaze"]
        )
        for key in (f"trained_on_{name}", f"trained_on_{name}_tested_on_synthetic"):
            print(f"{key}: {results[key]}")

    speed = {d: throughput(d, args.throughput_count) for d in eyes.DOMAINS}
    print(
        f"simulator throughput, {args.throughput_count} images, 1 process: "
        + ", ".join(f"{d} {v:.0f} img/s" for d, v in speed.items())
    )

    report = {
        "command": "python -m experiments.sim_gap "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
        "test_set": f"real, seed {TEST_SEED}, {args.test} images (trained_on_*); "
        f"synthetic, seed {TEST_SEED}, {args.test} images (*_tested_on_synthetic)",
        "results": results,
        "gap_mean_error_deg": results["trained_on_synthetic"]["mean_error_deg"]
        - results["trained_on_real"]["mean_error_deg"],
        "gap_within_7deg_pct": results["trained_on_real"]["within_7deg_pct"]
        - results["trained_on_synthetic"]["within_7deg_pct"],
        "throughput_images_per_s": speed,
        "throughput_note": f"measured on {args.throughput_count} images per domain, "
        "single process, not extrapolated",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
