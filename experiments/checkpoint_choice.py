"""Does the label-free choice of checkpoint agree with the one real labels would make?

    python -m experiments.checkpoint_choice --work DIR --runs RUN [RUN ...] \
        --out experiments/results/checkpoint_choice.json

For each run (trained with its checkpoints kept and realism-scored, as
``experiments/domain_sweep.py`` trains them): refine the sweep's synthetic validation eyes
with every scored checkpoint, train the half-width paper estimator on each refined set and
test it on the run's real domain's validation eyes (never a test split). Then compare the
checkpoint ``refine --checkpoint best`` picks (``distsim.checkpoints.realism.select_checkpoint``: no
labels) with the one of lowest estimator error (labels), and the rank correlation between
the two-sample-test accuracy and the estimator's error over checkpoints.

DIR is the sweep's work directory (its val-synthetic and val-<domain> sets are reused).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scipy.stats import spearmanr

from distsim.checkpoints.realism import select_checkpoint
from distsim.checkpoints.store import checkpoint_root, realism_scores
from distsim.config import load_config
from distsim.gaze.report import pupil_shift
from distsim.gaze.task import train_and_test_many
from distsim.tables.rows import refine_with

ESTIMATOR = dict(steps=800, batch_size=128, width_mult=0.5, seed=0, num_workers=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--runs", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    syn = args.work / "val-synthetic"
    for run in args.runs:
        cfg = load_config(run / "config.json")
        test = args.work / f"val-{cfg.data.builtin_real}"
        scores = realism_scores(run)
        entry = results.setdefault(str(run), {"domain": cfg.data.builtin_real, "checkpoints": {}})
        for name, score in sorted(scores.items()):
            if name in entry["checkpoints"]:
                continue
            started = time.time()
            refined = refine_with(checkpoint_root(run) / name, syn, run / f"choice-{name}")
            r = train_and_test_many(refined, [test], **ESTIMATOR)[0]
            entry["checkpoints"][name] = {
                **score,
                "err": r["mean_angular_error_deg"],
                "w7": r["within_7deg_pct"],
                "pupil": pupil_shift(syn, refined, 1000)["mean"],
                "seconds": time.time() - started,
            }
            print(run.name, name, json.dumps(entry["checkpoints"][name]), flush=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
        ckpts = entry["checkpoints"]
        names = sorted(ckpts)
        entry["picked_without_labels"] = select_checkpoint({k: ckpts[k] for k in names})
        entry["best_by_estimator"] = min(names, key=lambda k: ckpts[k]["err"])
        entry["final"] = names[-1]
        if len(names) > 2:
            rho = spearmanr([ckpts[k]["c2st_refined"] for k in names],
                            [ckpts[k]["err"] for k in names]).statistic  # fmt: skip
            entry["spearman_c2st_vs_error"] = float(rho)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(run.name, {k: entry[k] for k in entry if k != "checkpoints"}, flush=True)


if __name__ == "__main__":
    main()
