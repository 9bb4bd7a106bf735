"""Does the built-in hand simulator's domain gap matter to the paper's estimator?

Train the stacked hourglass (``distsim.hands.task``) at a CPU size once on synthetic and
once on real built-in crops, test both on held-out real crops, and write the numbers to
experiments/results/hand_gap.json. The claim to see: training on synthetic does clearly worse
on real than training on real.

    nice -n 19 env OMP_NUM_THREADS=1 python experiments/hand_gap.py --work /tmp/hand_gap \
        [--size 64 --count 2000 --test-count 500 --steps 600 --batch-size 16 --width 32 \
         --depth 2 --stem-stride 4]

The recorded run is in docs/notebook.md; its settings are the defaults below.

Shard sets are made with ``shards convert sim-hands`` under --work (reused when present with
the same count): synthetic seed 100, real seed 101 (training), real seed 102 (test).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package from a checkout

from distsim.hands.task import train_and_test  # noqa: E402
from shards.format import read_manifest  # noqa: E402
from shards.sources.sim_hands import convert_sim_hands  # noqa: E402

SETS = (  # name, domain, seed
    ("train_synthetic", "synthetic", 100),
    ("train_real", "real", 101),
    ("test_real", "real", 102),
)


def ensure(
    directory: Path, domain: str, seed: int, count: int, size: int, look: str | None = None
) -> Path:
    """`directory` holding `count` sim-hands crops of (domain, seed) at `size`, rendered in
    `look` (``shards.sim.hands.render``'s; default the domain's own), made if not there."""
    try:
        m = read_manifest(directory)
        if m.count == count and tuple(m.image_shape) == (1, size, size):
            return directory
    except (OSError, ValueError):
        pass
    try:
        convert_sim_hands(directory, domain, count, seed, size=size, look=look)
    except (OSError, ValueError) as err:
        raise SystemExit(f"convert sim-hands failed for {directory}: {err}") from err
    return directory


def add_estimator_args(p: argparse.ArgumentParser, out: str) -> None:
    """The sets' and the CPU-size estimator's options, shared with hand_gap_split.py."""
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--count", type=int, default=2000, help="training crops per set")
    p.add_argument("--test-count", type=int, default=500)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--stem-stride", type=int, default=4)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_estimator_args(p, "experiments/results/hand_gap.json")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for name, domain, seed in SETS:
        count = args.test_count if name.startswith("test") else args.count
        ensure(args.work / name, domain, seed, count, args.size)
    rows = {}
    started = time.time()
    for train in ("train_synthetic", "train_real"):
        report = train_and_test(
            args.work / train,
            args.work / "test_real",
            steps=args.steps,
            batch_size=args.batch_size,
            width=args.width,
            depth=args.depth,
            stem_stride=args.stem_stride,
            seed=args.seed,
            num_workers=0,
            log_every=50,
        )
        rows[train.removeprefix("train_")] = {
            "within_pct_at": {str(d): report["within_max_pct"][d] for d in (5, 10, 15, 20)},
            "within_mean_pct_at": {str(d): report["within_mean_pct"][d] for d in (5, 10, 15, 20)},
            "mean_joint_error_px": report["mean_joint_error_px"],
            "within_max_pct": report["within_max_pct"],
            "within_mean_pct": report["within_mean_pct"],
            "train_loss": report["train_loss"],
            "seconds": report["seconds"],
        }
        print(
            f"{train}: {report['within_5px_pct']:.1f}% within 5 px (max over joints), mean "
            f"{report['mean_joint_error_px']:.2f} px, {report['seconds']['total']:.0f} s",
            flush=True,
        )
    result = {
        "command": "nice -n 19 env OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "what": "stacked hourglass trained on built-in synthetic vs real hand crops, tested on "
        "held-out real crops; px at the 224x224 scale (crop px x 224 / size); within: max over "
        "the 14 evaluated joints <= d (Tompson et al. 2014), within_mean: mean over joints",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sets": {name: {"domain": d, "seed": s} for name, d, s in SETS},
        "load_average_end": os.getloadavg(),
        "seconds": time.time() - started,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
