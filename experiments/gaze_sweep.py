"""Screen SimGAN settings by what matters: the gaze error of an estimator trained on the result.

    python experiments/gaze_sweep.py --work DIR '{"name": {"lr_d": 0.001}, "synthetic": {}}'

For each named set of config overrides (the `cpu` preset, seed 0, built-in shards): train
SimGAN, refine 20,000 labelled synthetic eyes (seed 1000) with it, and train a half-width
paper estimator (800 steps of 128) on them with estimator seeds 0 and 1, testing on 5,000
labelled real eyes (seed 2000). The name "synthetic" trains the estimator on the unrefined
eyes instead: the baseline. Appends one JSON line per variant to DIR/results.jsonl (mean
intensity and pupil shift of the refined eyes, error and % within 7 degrees per seed).
Cheaper than `python -m distsim.report gaze` (one SimGAN seed, no 4x rows), for screening.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distsim.config import make_config  # noqa: E402
from distsim.data import first_images  # noqa: E402
from distsim.gaze.pupil import pupil_scores  # noqa: E402
from distsim.gaze.report import pupil_shift  # noqa: E402
from distsim.gaze.task import train_and_test  # noqa: E402
from distsim.tables.rows import train_and_refine  # noqa: E402
from shards.sources.sim_eyes import convert_sim_eyes  # noqa: E402

N, EST_STEPS, EST_BATCH, WIDTH, SEEDS = 20_000, 800, 128, 0.5, (0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("variants", type=json.loads, help='JSON: {"name": {overrides}}')
    args = parser.parse_args()
    work: Path = args.work
    syn, test = work / "synthetic", work / "real-test"
    if not (syn / "manifest.json").is_file():
        convert_sim_eyes(syn, "synthetic", N, 1000, progress=False)
    if not (test / "manifest.json").is_file():
        convert_sim_eyes(test, "real", 5000, 2000, progress=False)

    def estimate(train_dir: Path, seed: int) -> dict[str, float]:
        r = train_and_test(
            train_dir, test, steps=EST_STEPS, batch_size=EST_BATCH, seed=seed,
            train_count=N, width_mult=WIDTH, num_workers=0,
        )  # fmt: skip
        return {"err": r["mean_angular_error_deg"], "w7": r["within_7deg_pct"]}

    for name, overrides in args.variants.items():
        started = time.time()
        if name == "synthetic":
            result = {"variant": name, "est": [estimate(syn, s) for s in SEEDS]}
        else:
            cfg = make_config(
                "cpu", seed=0, run_dir=str(work / f"run-{name}"), progress=False, **overrides
            )
            refined = train_and_refine(cfg, syn, work / f"refined-{name}", pupil_scores)
            result = {
                "variant": name,
                "overrides": overrides,
                "mean_intensity": first_images(refined, 1000).float().mean().item(),
                "pupil": pupil_shift(syn, refined, 1000),
                "est": [estimate(refined, s) for s in SEEDS],
            }
        result["seconds"] = time.time() - started
        print(json.dumps(result), flush=True)
        with (work / "results.jsonl").open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
