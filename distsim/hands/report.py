"""The paper's Table 4 experiment on the built-in depth-hand benchmark: `distsim.report hands`.

    python -m distsim.report hands --out reports/hands [--preset hands-cpu] [--seeds 0 1 2]
        [--simgan-flags '...'] [--train-count 2000] [--test-count 500]
        [--estimator-steps 2400] [--estimator-batch 16] [--estimator-width 32]
        [--estimator-depth 2] [--stem-stride 4] [--estimator-seeds 1]

For each seed: render `3 * train-count` labelled synthetic hand crops, `train-count` labelled
"real" crops (the upper bound: an estimator trained on labelled real data) and `test-count`
held-out real crops to test on, all from the built-in simulator (`shards.sim.hands`) at the
SimGAN preset's crop size, on simulator seeds that neither SimGAN's built-in shards (seed 0)
nor `experiments/hand_gap.py` (100-102) use. Train SimGAN once on the built-in synthetic and
unlabelled real shards, refine the synthetic crops with its final refiner (the weight average
when the run keeps one), and train the stacked-hourglass estimator
(`distsim.hands.task`, CPU size by default: 2 stacks of width 32 and depth 2, stride-4
stem, 2,400 steps of 16) on each row's crops, testing it on the held-out real ones. Rows:
"synthetic", "refined" and "real" (the first `train-count` crops of each set) and "synthetic
3x" and "refined 3x" (all `3 * train-count`). With `--estimator-seeds K` each row is the
mean of K estimators (seeds S, S + 100, ...), shared by every row of the seed.

"3x" here is three times as many simulator poses. The paper's "3x" is NYU's three Kinect
views of each frame (front, top, side: `shards convert nyu --views 1,2,3`); the built-in
simulator has one camera, so its 3x rows have three times as many different hands instead.

Writes OUT/table.md (% of test frames whose largest error over the 14 evaluated joints is
within 5 / 10 / 20 px at the 224 x 224 crop scale, and the mean joint error; mean +- sd over
seeds), OUT/report.json (every number, per seed), OUT/within_pixels.png (mean curves over
seeds, the paper's Figure 9) and, under OUT/work/, the shard sets and SimGAN runs it made.

Run again into the same OUT with the same settings, it reuses every row OUT/report.json holds
(it is saved after each row), and a SimGAN run it cut short resumes from its last checkpoint.
Seeds can run as separate processes into one OUT at the same time (`--seeds 0`, `--seeds 1`,
... then `--seeds 0 1 2` for the table): each merges its seeds into OUT/report.json under a
lock.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from distsim.config import Config, resolve
from distsim.hands.task import plot_within_pixels, train_and_test
from distsim.tables.rows import PROG, say, spread, train_and_refine
from distsim.tables.store import finished_seeds, save_report
from shards.cliutil import one_line, positive_int
from shards.sources.sim_hands import convert_sim_hands

# Simulator streams, keyed by seed + the report's seed: SimGAN's built-in shards are seed 0 and
# experiments/hand_gap.py's sets 100, 101 and 102, so none of these overlaps them or each other.
SYNTHETIC_SEED, REAL_TRAIN_SEED, TEST_SEED = 3000, 4000, 5000
DOMAIN = "real"  # the built-in real domain; report.json keeps the gaze report's layout
ROWS = ("synthetic", "refined", "real", "synthetic 3x", "refined 3x")
TABLE_PX = (5, 10, 20)
# Settings that change a row's number; rows made under other values are never reused.
ROW_SETTINGS = ("preset", "simgan_flags", "train_count", "test_count", "estimator_steps",
                "estimator_batch", "estimator_width", "estimator_depth", "stem_stride",
                "estimator_seeds")  # fmt: skip
# Estimator k of a row trains with seed + ESTIMATOR_SEED_STEP * k: every row of a seed shares
# each estimator's initial weights and data order, so rows stay paired.
ESTIMATOR_SEED_STEP = 100


def add_parser(tasks: Any) -> None:
    """Add `hands` to ``distsim.report``'s sub-commands."""
    h = tasks.add_parser(
        "hands",
        help="Table 4: hand pose on the built-in depth-hand benchmark",
        description="Table 4 on the built-in hands: an estimator trained on synthetic, "
        "refined, real, synthetic 3x and refined 3x crops, tested on held-out real crops. "
        "3x: three times as many simulator poses (the paper's 3x is NYU's three camera "
        "views; the simulator has one camera). Presets: hands-cpu (64 px crops, 2 CPU "
        "cores) or hands (224 px, the paper's sizes: a GPU job).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    h.add_argument("--out", type=Path, required=True, default=argparse.SUPPRESS, help="directory")
    h.add_argument("--preset", default="hands-cpu", help="SimGAN preset (hands-cpu, hands)")
    h.add_argument(
        "--simgan-flags", default="",
        help="more train.py flags for the SimGAN runs, e.g. '--steps 500' (seed, run and "
        "cache directories are the report's; --builtin-size sets every set's crop size)",
    )  # fmt: skip
    h.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one SimGAN run each")
    h.add_argument("--train-count", type=positive_int, default=2000,
                   help="N: crops of the 1x rows (3N for the 3x rows)")  # fmt: skip
    h.add_argument("--test-count", type=positive_int, default=500, help="held-out real crops")
    h.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS),
                   help="make only these rows (processes can split a seed's rows; the table "
                   "is written once every row of every seed is there)")  # fmt: skip
    # CPU sizes (experiments/hand_gap.py's); the paper's: width 256, depth 4 on 224 px crops.
    # 600 steps leave the estimator blind to appearance: even a perfect refiner's crops train
    # it no better than synthetic ones (experiments/hand_gap_split.py).
    h.add_argument("--estimator-steps", type=positive_int, default=2400, help="training steps")
    h.add_argument("--estimator-batch", type=positive_int, default=16, help="batch size")
    h.add_argument("--estimator-width", type=positive_int, default=32,
                   help="hourglass width (paper: 256)")  # fmt: skip
    h.add_argument("--estimator-depth", type=positive_int, default=2,
                   help="down-samplings per hourglass (paper: 4)")  # fmt: skip
    h.add_argument("--stem-stride", type=int, choices=(1, 2, 4), default=4,
                   help="input side / heatmap side")  # fmt: skip
    # One estimator's seed alone moved a row by up to 1.6 px at the CPU sizes, more than a
    # refiner moves it; K estimators per row average that out.
    h.add_argument("--estimator-seeds", type=positive_int, default=1,
                   help="estimators per row, seeds S, S+100, ...: their mean")  # fmt: skip


def simgan_config(args: argparse.Namespace) -> Config:
    """The SimGAN run's settings, checked before anything is made: ValueError with one line."""
    flags = ["--preset", args.preset, *shlex.split(args.simgan_flags)]
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            cfg = resolve(flags)
    except SystemExit:  # argparse's usage and message: keep the message
        raise ValueError(f"--simgan-flags: {said.getvalue().strip().splitlines()[-1]}") from None
    if cfg.data.builtin_sim != "hands" or cfg.data.synthetic:
        raise ValueError(
            f"--preset {args.preset} trains on {cfg.data.synthetic or cfg.data.builtin_sim}, "
            "not the built-in hands; use --preset hands-cpu or hands"
        )
    heat = cfg.data.builtin_size // args.stem_stride
    if cfg.data.builtin_size % args.stem_stride or heat % 2**args.estimator_depth:
        raise ValueError(
            f"{cfg.data.builtin_size} px crops: need a multiple of --stem-stride "
            f"{args.stem_stride} whose quotient halves --estimator-depth {args.estimator_depth} "
            "times"
        )
    if args.estimator_width % 4:
        raise ValueError(f"--estimator-width must be a multiple of 4, got {args.estimator_width}")
    return cfg


def hand_set(path: Path, domain: str, count: int, seed: int, size: int) -> Path:
    """A built-in hand shard set at `path`, rendered unless an earlier report made it."""
    if not (path / "manifest.json").is_file():
        convert_sim_hands(path, domain, count, seed, size=size)
    return path


def run_seed(
    args: argparse.Namespace, cfg: Config, seed: int, work: Path, rows: dict[str, Any],
    save: Any,
) -> dict[str, Any]:  # fmt: skip
    """Fill one seed's missing rows into `rows` (calling `save()` after each); the SimGAN
    run's checkpoint and directory come back."""
    n, size = args.train_count, cfg.data.builtin_size
    syn = hand_set(work / f"synthetic-s{seed}", "synthetic", 3 * n, SYNTHETIC_SEED + seed, size)
    test = hand_set(work / f"real-test-s{seed}", DOMAIN, args.test_count, TEST_SEED + seed, size)
    run = cfg.replace(
        seed=seed,
        run_dir=str(work / f"run-simgan-s{seed}"),
        cache_dir=str(work / "cache"),
        progress=True,
        resume="auto",
        keep_checkpoints=0,
    )
    simgan: dict[str, Any] = {"run_dir": run.outputs.run_dir}
    for name in args.rows:
        if name in rows:
            continue
        if name == "real":
            train = hand_set(work / f"real-train-s{seed}", DOMAIN, n, REAL_TRAIN_SEED + seed, size)
        elif name.startswith("refined"):
            if "refined" not in simgan:  # once for both refined rows
                say(f"seed {seed}: SimGAN in {run.outputs.run_dir}")
                simgan["refined"] = str(train_and_refine(run, syn, work / f"refined-s{seed}"))
            train = Path(simgan["refined"])
        else:
            train = syn
        count = 3 * n if name.endswith("3x") else n
        say(f"seed {seed}: row '{name}' ({count:,} crops of {train.name})")
        runs = []
        for k in range(args.estimator_seeds):
            runs.append(train_and_test(
                train, test, steps=args.estimator_steps, batch_size=args.estimator_batch,
                width=args.estimator_width, depth=args.estimator_depth,
                stem_stride=args.stem_stride, seed=seed + ESTIMATOR_SEED_STEP * k,
                train_count=count, num_workers=0, log_every=100, progress=True,
            ))  # fmt: skip
        rows[name] = mean_of_estimators(runs)
        save()
    return simgan


def mean_of_estimators(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from several estimators' reports: the first's, with every score (the within-d
    percentages and joint errors, overall and per joint) averaged over them, and each one's
    seed and headline numbers under "estimators"."""
    if len(runs) == 1:
        return runs[0]
    row = dict(runs[0])
    for key in runs[0]:
        if key.startswith(("within_", "mean_joint_error")):
            row[key] = _mean([r[key] for r in runs])
    row["estimators"] = [
        {"seed": r["config"]["seed"], "mean_joint_error_px": r["mean_joint_error_px"],
         "within_max_pct": r["within_max_pct"]}
        for r in runs
    ]  # fmt: skip
    return row


def _mean(values: list[Any]) -> Any:
    """Elementwise mean of numbers, or of lists or dicts of them, all shaped alike."""
    first = values[0]
    if isinstance(first, dict):
        return {k: _mean([v[k] for v in values]) for k in first}
    if isinstance(first, list):
        return [_mean(list(col)) for col in zip(*values, strict=True)]
    return statistics.mean(values)


def summarise(per_seed: list[dict[str, Any]]) -> tuple[str, dict[str, list[float]]]:
    """Markdown table (mean +- sd over seeds) and the mean within-d curves."""
    head = " | ".join(f"within {d} px (%)" for d in TABLE_PX)
    lines = [
        f"| trained on | {head} | mean joint error (px) |",
        "|---|" + "--:|" * (len(TABLE_PX) + 1),
    ]
    curves: dict[str, list[float]] = {}
    for name in ROWS:
        results = [e["domains"][DOMAIN]["rows"][name] for e in per_seed]
        cells = [spread([r["within_max_pct"][d] for r in results]) for d in TABLE_PX]
        error = spread([r["mean_joint_error_px"] for r in results])
        lines.append(f"| {name} | {' | '.join(cells)} | {error} |")
        curves[name] = [statistics.mean(c) for c in zip(*(r["within_max_pct"] for r in results),
                                                      strict=True)]  # fmt: skip
    first = per_seed[0]["domains"][DOMAIN]["rows"]["synthetic"]
    seeds = len(per_seed)
    lines += [
        "",
        f"{seeds} seed(s){'; +- is the standard deviation over seeds' if seeds > 1 else ''}. "
        f"Within d: the largest error over the 14 evaluated joints is <= d px at the 224x224 "
        f"scale ({first['crop_size']} px crops, errors x {first['pixel_scale']:g}); "
        f"{first['counts']['test_images']} held-out real test crops per seed. 3x: three times "
        "as many simulator poses (the paper's: three camera views).",
    ]
    return "\n".join(lines) + "\n", curves


def run_report(args: argparse.Namespace) -> int:
    """`distsim.report hands`: 0, or 2 with one line on stderr for a bad input."""
    try:
        cfg = simgan_config(args)
        done = finished_seeds(args.out, args, ROW_SETTINGS)
        work = args.out / "work"
        work.mkdir(parents=True, exist_ok=True)
        results = dict(done)  # seed -> entry; seeds this report was not asked for stay on record

        def save() -> None:
            save_report(args.out, args, results, ROW_SETTINGS)

        save()  # before the first run: the settings guard OUT/work even if this report dies
        for seed in args.seeds:
            entry = results.setdefault(seed, {"seed": seed, "domains": {DOMAIN: {"rows": {}}}})
            here = entry["domains"][DOMAIN]
            here.setdefault("rows", {})
            if any(name not in here["rows"] for name in args.rows):
                simgan = run_seed(args, cfg, seed, work, here["rows"], save)
                if "refined" in simgan:  # this call made the refined rows
                    here["simgan"] = simgan
                save()
        missing = [f"seed {s} '{name}'" for s in args.seeds for name in ROWS
                   if name not in results[s]["domains"][DOMAIN]["rows"]]  # fmt: skip
        if missing:
            say(f"no table yet: {len(missing)} row(s) to make, e.g. {missing[0]}")
            return 0
        table, curves = summarise([results[seed] for seed in args.seeds])
        title = "Hand pose on built-in real crops: synthetic vs refined"
        plot_within_pixels(curves, args.out / "within_pixels.png", title=title)
        (args.out / "table.md").write_text(table)
    except (ValueError, OSError) as err:  # a full disk too
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    print(table, end="")
    return 0
