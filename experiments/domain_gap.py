"""How large is each built-in real domain's gap? The paper's gaze estimator trained on synthetic
eyes, and on each real domain's own (labelled-for-evaluation) eyes, tested on that domain.

A useful benchmark domain has a clear gap: trained on synthetic must be clearly worse on real
eyes than trained on real eyes. One synthetic estimator is tested on every domain (one
training); each real-trained estimator is tested on its own domain.

    python -m experiments.domain_gap --work /tmp/gap --out experiments/results/domain_gap.json

Streams (simulator seeds) are the report's: synthetic training eyes 1000, real test eyes 2000
(both seed 0 of ``distsim.report``); real training eyes use 4000, which nothing else reads.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from distsim.gaze.task import train_and_test_many
from shards.sim.eyes import REAL_DOMAINS
from shards.sources.sim_eyes import convert_sim_eyes

SYNTHETIC_SEED, TEST_SEED, REAL_TRAIN_SEED = 1000, 2000, 4000


def shard_set(work: Path, domain: str, count: int, seed: int) -> Path:
    out = work / f"{domain}-n{count}-s{seed}"
    if not (out / "manifest.json").is_file():
        print(f"rendering {count} {domain} eyes (seed {seed}) into {out}", flush=True)
        convert_sim_eyes(out, domain, count, seed, progress=False)
    return out


def row(report: dict) -> dict:
    return {
        "mean_error_deg": round(report["mean_angular_error_deg"], 3),
        "within_7deg_pct": round(report["within_7deg_pct"], 2),
        "train_seconds": round(report["seconds"]["train"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="shard sets are cached here")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    parser.add_argument("--train-count", type=int, default=10_000)
    parser.add_argument("--test-count", type=int, default=5_000)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width-mult", type=float, default=0.5)
    parser.add_argument("--domains", nargs="+", default=list(REAL_DOMAINS))
    args = parser.parse_args()
    started = time.time()
    common = dict(steps=args.steps, batch_size=args.batch_size, width_mult=args.width_mult,
                  seed=0, num_workers=0)  # fmt: skip
    tests = {d: shard_set(args.work, d, args.test_count, TEST_SEED) for d in args.domains}
    synthetic = shard_set(args.work, "synthetic", args.train_count, SYNTHETIC_SEED)
    print("training on synthetic eyes", flush=True)
    reports = train_and_test_many(synthetic, [tests[d] for d in args.domains], **common)
    results: dict = {d: {"synthetic": row(r)} for d, r in zip(args.domains, reports, strict=True)}
    for d in args.domains:
        print(f"training on {d} eyes", flush=True)
        real = shard_set(args.work, d, args.train_count, REAL_TRAIN_SEED)
        results[d]["real"] = row(train_and_test_many(real, [tests[d]], **common)[0])
        print(d, results[d], flush=True)
    out = {
        "settings": vars(args) | {"work": str(args.work), "out": str(args.out)},
        "results": results,
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },  # fmt: skip
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
