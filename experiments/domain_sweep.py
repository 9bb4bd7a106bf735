"""Choose SimGAN settings on every built-in real domain at once, on validation data only.

    python -m experiments.domain_sweep --work DIR --variants '{"name": {"lr_d": 0.001}}' \
        [--domains real real-lit real-ir] [--seed 0]

For each named set of config overrides (on the `cpu` preset) and each real domain: train
SimGAN against that domain's built-in unlabelled shards, refine 10,000 labelled synthetic
validation eyes (simulator seed 5000) with the final checkpoint (its weight average when it
has one), train the half-width paper estimator on them (800 steps of 128, seed 0) and test it
on 2,000 labelled real validation eyes of the domain (seed 3000). The baseline, the estimator
trained on the unrefined validation eyes, is trained once and tested on every domain.

Nothing here reads a test split: the report (``python -m distsim.report gaze``) tests on
seeds 2000+, which no choice made with this script has seen.

Appends one JSON line per (variant, domain) to DIR/results.jsonl, with the estimator's error,
the pupil shift, D's curves summarised from TensorBoard (mean accuracies over the last half
of the adversarial phase, and how much they swing from one log step to the next), and the
realism scores of every checkpoint; a run with a weight average is also scored with its last
weights ("raw"). Pairs already in the file are skipped, so the sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distsim.checkpoints.refine import load_refiner, refine_shards
from distsim.checkpoints.store import has_ema, realism_scores
from distsim.config import make_config
from distsim.data import first_images
from distsim.gaze.pupil import pupil_scores
from distsim.gaze.report import pupil_shift
from distsim.gaze.task import train_and_test_many
from distsim.tables.rows import train_and_refine
from shards.sim.eyes import REAL_DOMAINS
from shards.sources.sim_eyes import convert_sim_eyes

VAL_SYNTHETIC_SEED, VAL_REAL_SEED = 5000, 3000
N_TRAIN, N_VAL = 10_000, 2_000
ESTIMATOR = dict(steps=800, batch_size=128, width_mult=0.5, seed=0, num_workers=0)


def shard_set(path: Path, domain: str, count: int, seed: int) -> Path:
    if not (path / "manifest.json").is_file():
        convert_sim_eyes(path, domain, count, seed, progress=False)
    return path


def d_curves(run_dir: Path, adversarial_from: int) -> dict[str, float]:
    """D's accuracies and loss over the last half of the adversarial phase: their means and
    the mean |change| between consecutive log steps (how much they swing)."""
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    out: dict[str, float] = {}
    for tag in (
        "d_acc",
        "d_acc_real",
        "d_acc_refined",
        "d_acc_history",
        "d_loss",
        "r_change",
        "r_reg",
    ):
        if tag not in acc.Tags()["scalars"]:
            continue
        events = [e for e in acc.Scalars(tag) if e.step > adversarial_from]
        values = [e.value for e in events[len(events) // 2 :]]
        if len(values) < 2:
            continue
        out[f"{tag}_mean"] = statistics.mean(values)
        out[f"{tag}_swing"] = statistics.mean(abs(a - b) for a, b in itertools.pairwise(values))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--variants", type=json.loads, required=True, help='{"name": {...}}')
    parser.add_argument("--domains", nargs="+", default=list(REAL_DOMAINS))
    parser.add_argument("--seed", type=int, default=0, help="SimGAN seed")
    parser.add_argument("--preset", default="cpu")
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.jsonl"
    done = set()
    if results.is_file():
        done = {(r["variant"], r["domain"]) for r in map(json.loads, results.open())}

    def record(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")

    syn = shard_set(work / "val-synthetic", "synthetic", N_TRAIN, VAL_SYNTHETIC_SEED)
    tests = {d: shard_set(work / f"val-{d}", d, N_VAL, VAL_REAL_SEED) for d in args.domains}
    todo = [d for d in args.domains if ("synthetic", d) not in done]
    if todo:
        started = time.time()
        reports = train_and_test_many(syn, [tests[d] for d in todo], **ESTIMATOR)
        for d, r in zip(todo, reports, strict=True):
            record({"variant": "synthetic", "domain": d,
                    "err": r["mean_angular_error_deg"], "w7": r["within_7deg_pct"],
                    "seconds": time.time() - started})  # fmt: skip

    for name, overrides in args.variants.items():
        for domain in args.domains:
            if (name, domain) in done:
                continue
            started = time.time()
            # Every checkpoint is kept, so that any of them can be scored later.
            cfg = make_config(
                args.preset, seed=args.seed, builtin_real=domain, progress=False,
                run_dir=str(work / f"run-{name}-{domain}"), cache_dir=str(work / "cache"),
                resume="auto", keep_checkpoints=0, **overrides,
            )  # fmt: skip
            refined = train_and_refine(cfg, syn, work / f"refined-{name}-{domain}", pupil_scores)
            trained = time.time() - started
            r = train_and_test_many(refined, [tests[domain]], **ESTIMATOR)[0]
            adversarial_from = cfg.schedule.pretrain_r_steps + cfg.schedule.pretrain_d_steps
            row = {
                "variant": name, "domain": domain, "overrides": overrides, "seed": args.seed,
                "err": r["mean_angular_error_deg"], "w7": r["within_7deg_pct"],
                "pupil": pupil_shift(syn, refined, 1000),
                "mean_intensity": first_images(refined, 1000).float().mean().item(),
                "d": d_curves(Path(cfg.outputs.run_dir), adversarial_from),
                "realism": realism_scores(cfg.outputs.run_dir),
            }  # fmt: skip
            if has_ema(cfg.outputs.run_dir):
                # The same run's last weights, for the average's effect.
                raw = work / f"refined-{name}-{domain}-raw"
                if not (raw / "manifest.json").is_file():
                    refiner, info, shape = load_refiner(cfg.outputs.run_dir, "raw")
                    refine_shards(refiner, syn, raw, checkpoint=info, trained_shape=shape,
                                  num_workers=0)  # fmt: skip
                r = train_and_test_many(raw, [tests[domain]], **ESTIMATOR)[0]
                row["raw"] = {"err": r["mean_angular_error_deg"], "w7": r["within_7deg_pct"],
                              "pupil": pupil_shift(syn, raw, 1000)}  # fmt: skip
            row["seconds"] = {"simgan_and_refine": trained, "total": time.time() - started}
            record(row)


if __name__ == "__main__":
    main()
