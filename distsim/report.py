"""The paper's Table 2 experiment on the built-in eye benchmark, in one command.

    python -m distsim.report gaze --out reports/gaze [--preset cpu] [--simgan-flags '...']
        [--seeds 0 1 2]
        [--variants simgan no-history global] [--train-count 20000] [--test-count 5000]
        [--estimator-steps 1000] [--estimator-batch 128]

For each seed: render `4 * train-count` labelled synthetic eyes and `test-count` labelled real
eyes (a stream SimGAN never sees), train SimGAN once per variant on the built-in synthetic and
unlabelled real shards, refine the synthetic eyes with it, then train the paper's gaze
estimator on synthetic, synthetic 4x, refined and refined 4x eyes ("1x" is the first
`train-count` images) and test each on the real eyes. It also measures how far refinement
moves the pupil (distsim.pupil, located in each synthetic eye and in its refinement).

Writes OUT/table.md (mean +- sd over seeds), OUT/report.json (every number),
OUT/cumulative_error.png (mean curves over seeds, the paper's Figure 7) and, under OUT/work/,
the runs and shard sets it made. Variants: `simgan` (the paper), `no-history` (D sees only
current refined images) and `global` (one adversarial decision per image).

Run again into the same OUT with the same settings, it reuses every row OUT/report.json holds,
so adding a variant or a seed costs only the new rows. A report that died goes on from its
last finished seed, and a SimGAN run it cut short resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from distsim.checkpoint import resolve_checkpoint
from distsim.config import Config, resolve
from distsim.data import first_images
from distsim.evaluate import plot_cumulative, train_and_test
from distsim.pupil import pupil_shift as distance_moved
from distsim.refine import load_refiner, refine_shards
from distsim.train import training_loop
from shards.cliutil import one_line, positive_int
from shards.sources.sim_eyes import convert_sim_eyes

PROG = "distsim.report"
# Streams are keyed by seed: these never overlap the built-in shards SimGAN trains on (seed 0).
SYNTHETIC_SEED, TEST_SEED = 1000, 2000
VARIANTS: dict[str, dict[str, Any]] = {
    "simgan": {},
    "no-history": {"history": False},
    "global": {"adversarial": "global"},
}
PUPIL_SAMPLE = 1000  # eyes used for the pupil-shift measurement
# Settings that change a row's number; rows made under other values are never reused.
ROW_SETTINGS = ("preset", "simgan_flags", "train_count", "test_count", "estimator_steps",
                "estimator_batch", "width_mult")  # fmt: skip


def row_name(variant: str) -> str:
    return "refined" if variant == "simgan" else f"refined ({variant})"


def settings(args: argparse.Namespace) -> dict[str, str]:
    # report.json stores every argument as a string, so compare in that form.
    return {k: str(getattr(args, k)) for k in ROW_SETTINGS}


def finished_seeds(out: Path, args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """Per-seed results an earlier report into `out` finished, if made with the same settings."""
    path = out / "report.json"
    if not path.is_file():
        return {}
    try:
        earlier = json.loads(path.read_text())
        entries = earlier["seeds"]
        # Reports before resume existed did not store each entry's seed; their order is --seeds.
        order = ast.literal_eval(earlier["args"]["seeds"])
        before = {k: earlier["args"][k] for k in ROW_SETTINGS}
    except (ValueError, KeyError, TypeError, SyntaxError) as err:
        raise ValueError(f"{path}: not a report this command wrote ({one_line(err)})") from err
    now = settings(args)
    changed = [k for k in ROW_SETTINGS if before[k] != now[k]]
    if changed:
        k = changed[0]
        flag = "--" + k.replace("_", "-")
        raise ValueError(
            f"{path}: made with {flag} {before[k]!r}, not {now[k]!r}; "
            "use another --out or the same settings"
        )
    tagged = ({**e, "seed": int(e.get("seed", s))} for e, s in zip(entries, order, strict=False))
    return {e["seed"]: e for e in tagged}


def pupil_shift(synthetic: Path, refined: Path, n: int) -> dict[str, float]:
    shift = distance_moved(first_images(synthetic, n), first_images(refined, n))  # (n,)
    return {"mean": shift.mean().item(), "std": shift.std().item()}


def train_and_refine(cfg: Config, synthetic: Path, out: Path) -> Path:
    """Train SimGAN as configured, then refine `synthetic` into `out` with its final R (the
    weight average when the run keeps one), unless an earlier call already did."""
    ckpt = resolve_checkpoint(training_loop(cfg))
    if (out / "manifest.json").is_file():
        made_with = json.loads((out / "manifest.json").read_text())["source"]["checkpoint"]
        if made_with["path"] == str(ckpt.resolve()):
            return out
    refiner, info, trained_shape = load_refiner(ckpt)
    refine_shards(refiner, synthetic, out, checkpoint=info, trained_shape=trained_shape,
                  num_workers=0)  # fmt: skip
    return out


def run_seed(
    args: argparse.Namespace, seed: int, work: Path, done: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One seed's rows; rows already in `done` (an earlier run's entry) are reused, not rerun."""
    done_rows: dict[str, Any] = (done or {}).get("rows", {})
    done_pupils: dict[str, Any] = (done or {}).get("pupil_shift_px", {})
    n = args.train_count
    syn = work / f"synthetic-s{seed}"
    test = work / f"real-test-s{seed}"
    if not (syn / "manifest.json").is_file():
        convert_sim_eyes(syn, "synthetic", 4 * n, SYNTHETIC_SEED + seed, progress=False)
    if not (test / "manifest.json").is_file():
        convert_sim_eyes(test, "real", args.test_count, TEST_SEED + seed, progress=False)

    def estimator(train_dir: Path, count: int) -> dict[str, Any]:
        return train_and_test(
            train_dir, test, steps=args.estimator_steps, batch_size=args.estimator_batch,
            seed=seed, train_count=count, width_mult=args.width_mult, num_workers=0,
        )  # fmt: skip

    rows: dict[str, Any] = {
        name: done_rows[name] if name in done_rows else estimator(syn, count)
        for name, count in (("synthetic", n), ("synthetic 4x", 4 * n))
    }
    pupils: dict[str, Any] = {}
    for variant in args.variants:
        name = row_name(variant)
        if all(k in done_rows for k in (name, f"{name} 4x")) and name in done_pupils:
            rows[name], rows[f"{name} 4x"] = done_rows[name], done_rows[f"{name} 4x"]
            pupils[name] = done_pupils[name]
            continue
        flags = ["--preset", args.preset, *shlex.split(args.simgan_flags)]
        cfg = dataclasses.replace(
            resolve(flags), seed=seed, run_dir=str(work / f"run-{variant}-s{seed}"),
            cache_dir=str(work / "cache"), progress=False, resume="auto", **VARIANTS[variant],
        )  # fmt: skip
        refined = train_and_refine(cfg, syn, work / f"refined-{variant}-s{seed}")
        # A new SimGAN run makes a new refined set, so none of its old rows stand.
        rows[name] = estimator(refined, n)
        rows[f"{name} 4x"] = estimator(refined, 4 * n)
        pupils[name] = pupil_shift(syn, refined, min(PUPIL_SAMPLE, 4 * n))
    return {"seed": seed, "rows": rows, "pupil_shift_px": pupils}


def summarise(per_seed: list[dict[str, Any]]) -> tuple[str, dict[str, list[float]]]:
    """Markdown table (mean +- sd over seeds) and mean cumulative curves per row."""

    def spread(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} +- {sd:.1f}"

    names = list(per_seed[0]["rows"])
    lines = [
        "| trained on | within 7 deg (%) | mean error (deg) | pupil shift (px) |",
        "|---|--:|--:|--:|",
    ]
    curves: dict[str, list[float]] = {}
    for name in names:
        results = [s["rows"][name] for s in per_seed]
        within = [r["within_7deg_pct"] for r in results]
        error = [r["mean_angular_error_deg"] for r in results]
        shifts = [
            s["pupil_shift_px"][name]["mean"] for s in per_seed if name in s["pupil_shift_px"]
        ]
        lines.append(
            f"| {name} | {spread(within)} | {spread(error)} | {spread(shifts) if shifts else '-'} |"
        )
        curves[name] = [
            statistics.mean(c) for c in zip(*(r["within_pct"] for r in results), strict=True)
        ]
    lines.append("")
    lines.append(f"{len(per_seed)} seed(s); +- is the standard deviation over seeds.")
    return "\n".join(lines) + "\n", curves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    tasks = parser.add_subparsers(dest="task", required=True)
    gaze = tasks.add_parser("gaze", help="Table 2: gaze estimation on the built-in eye benchmark")
    gaze.add_argument("--out", type=Path, required=True)
    gaze.add_argument("--preset", default="cpu", help="SimGAN preset (cpu, eyes, smoke)")
    gaze.add_argument(
        "--simgan-flags", default="",
        help="more train.py flags for every SimGAN run, e.g. '--lr-d 1e-3' (seed, run and "
        "cache directories are the report's)",
    )  # fmt: skip
    gaze.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    gaze.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    gaze.add_argument("--train-count", type=positive_int, default=20_000)
    gaze.add_argument("--test-count", type=positive_int, default=5_000)
    gaze.add_argument("--estimator-steps", type=positive_int, default=1000)
    gaze.add_argument("--estimator-batch", type=positive_int, default=128)
    gaze.add_argument("--width-mult", type=float, default=1.0, help="estimator width")
    args = parser.parse_args(argv)
    try:
        work = args.out / "work"
        done = finished_seeds(args.out, args)
        work.mkdir(parents=True, exist_ok=True)
        results = dict(done)  # seed -> entry; seeds this report was not asked for stay on record

        def save() -> None:
            (args.out / "report.json").write_text(
                json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                            "seeds": list(results.values())}, indent=2) + "\n"
            )  # fmt: skip

        # Saved before the first run starts, so the settings guard OUT/work even when this
        # report dies before finishing a seed, then after every seed, so that it keeps what
        # it finished.
        save()
        for seed in args.seeds:
            results[seed] = run_seed(args, seed, work, done.get(seed))
            save()
        per_seed = [results[seed] for seed in args.seeds]
        table, curves = summarise(per_seed)
        (args.out / "table.md").write_text(table)
        plot_cumulative(curves, args.out / "cumulative_error.png",
                        title="Gaze on real eyes: trained on synthetic vs refined")  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
