"""How much of the built-in hands' domain gap is appearance, the part a refiner can close?

A refiner changes how a synthetic crop looks, never which hand it shows, so on the built-in
benchmark it cannot do better than the *same* synthetic hands rendered through the real
domain's scene and sensor (``shards.sim.hands.render(..., look="real")``: identical poses,
shapes and crop boxes, labels exact). This trains the CPU-size stacked hourglass on the four
crossings of pose distribution (synthetic, real) and look (synthetic, real), each over
several estimator seeds, and tests every one on held-out real crops:

- synthetic poses, synthetic look: the "synthetic" row;
- synthetic poses, real look: what a perfect refiner would give (the ceiling of "refined");
- real poses, synthetic look: the gap that is left once the pose distribution matches;
- real poses, real look: the "real" row.

    nice -n 19 env OMP_NUM_THREADS=1 python experiments/hand_gap_split.py --work /tmp/hand_gap \
        [--size 64 --count 2000 --test-count 500 --steps 600 --batch-size 16 --width 32 \
         --depth 2 --stem-stride 4 --seeds 0 1 2]

Shard sets under --work (reused when present): pose seed 100 (synthetic) and 101 (real) as
``experiments/hand_gap.py`` uses, in both looks, and the real test set, seed 102. Writes
experiments/results/hand_gap_split.json; the recorded runs are in docs/notebook.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package from a checkout

from distsim.hands.task import train_and_test  # noqa: E402
from experiments.hand_gap import add_estimator_args, ensure  # noqa: E402

SETS = (  # name, pose domain, look, simulator seed
    ("synthetic poses, synthetic look", "synthetic", "synthetic", 100),
    ("synthetic poses, real look", "synthetic", "real", 100),
    ("real poses, synthetic look", "real", "synthetic", 101),
    ("real poses, real look", "real", "real", 101),
)
TEST = ("real", "real", 102)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_estimator_args(p, "experiments/results/hand_gap_split.json")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="estimator seeds")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    size = args.size
    domain, look, seed = TEST
    test = ensure(args.work / "test-real-102", domain, seed, args.test_count, size, look)
    rows = {}
    started = time.time()
    for name, domain, look, seed in SETS:
        train = ensure(args.work / f"{domain}-pose-{look}-look-{seed}", domain, seed,
                       args.count, size, look)  # fmt: skip
        errors = []
        for s in args.seeds:
            report = train_and_test(
                train, test, steps=args.steps, batch_size=args.batch_size, width=args.width,
                depth=args.depth, stem_stride=args.stem_stride, seed=s, num_workers=0,
            )  # fmt: skip
            errors.append(report["mean_joint_error_px"])
            print(f"{name}, estimator seed {s}: mean joint error {errors[-1]:.2f} px", flush=True)
        rows[name] = {
            "pose": domain,
            "look": look,
            "simulator_seed": seed,
            "mean_joint_error_px": errors,
            "mean": statistics.mean(errors),
            "sd": statistics.stdev(errors) if len(errors) > 1 else 0.0,
        }
    print()
    for name, row in rows.items():
        print(f"{name:34s} {row['mean']:6.2f} +- {row['sd']:.2f} px")
    result = {
        "command": "nice -n 19 env OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "what": "stacked hourglass trained on each crossing of pose distribution and look, "
        "tested on held-out real crops; mean joint error over the 14 evaluated joints in px at "
        "the 224x224 scale; mean and sd over estimator seeds",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
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
