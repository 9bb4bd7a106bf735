"""The paper's Table 2 experiment on the built-in eye benchmark, in one command (Table 4 on
the built-in hands: `distsim.report hands`, ``distsim.hands.report``).

    python -m distsim.report gaze --out reports/gaze [--preset cpu] [--simgan-flags '...']
        [--domains real real-lit real-ir] [--seeds 0 1 2]
        [--variants simgan no-history global] [--train-count 20000] [--test-count 5000]
        [--estimator-steps 1000] [--estimator-batch 128] [--no-4x]

For each seed: render `4 * train-count` labelled synthetic eyes, and for each real domain
`test-count` labelled real eyes (a stream SimGAN never sees). Train the paper's gaze
estimator on synthetic and synthetic 4x eyes ("1x" is the first `train-count` images) once,
and test it on every domain. Then, per domain, train SimGAN once per variant on the built-in
synthetic and that domain's unlabelled real shards, refine the synthetic eyes with its final
refiner (the weight average when the run keeps one), and train and test the estimator on
refined and refined 4x eyes. It also measures how far refinement moves the pupil
(distsim.gaze.pupil) and how well a fresh classifier tells refined eyes from real ones
(distsim.checkpoints.realism; the same test on unrefined eyes is the reference).

Two more rows per domain for the full method, 1x only: "refined (last weights)", the same
run's last refiner rather than its weight average (when it keeps one), and "refined (best by
realism)", the checkpoint `refine --checkpoint best` would take, picked without labels
(when that is not the final one).

Writes OUT/table.md (one table per domain, mean +- sd over seeds), OUT/report.json (every
number), OUT/cumulative_error_<domain>.png (mean curves over seeds, the paper's Figure 7) and,
under OUT/work/, the runs and shard sets it made. Variants: `simgan` (the paper), `no-history`
(D sees only current refined images) and `global` (one adversarial decision per image).

Run again into the same OUT with the same settings, it reuses every row OUT/report.json holds,
so adding a variant, a domain or a seed costs only the new rows. A report that died goes on
from its last finished domain, and a SimGAN run it cut short resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from distsim.checkpoints.store import best_checkpoint, has_ema, realism_scores, resolve_checkpoint
from distsim.config import REAL_DOMAINS, resolve
from distsim.data import first_images
from distsim.gaze.pupil import pupil_scores
from distsim.gaze.pupil import pupil_shift as distance_moved
from distsim.gaze.task import GazeTask, train_and_test_many
from distsim.tables.rows import PROG, refine_with, say, spread
from distsim.tables.store import finished_seeds, save_report
from distsim.training.loop import training_loop
from shards.cliutil import one_line, positive_int
from shards.sources.sim_eyes import convert_sim_eyes

# Streams are keyed by seed: these never overlap the built-in shards SimGAN trains on (seed 0)
# or the validation streams settings were chosen on (experiments/domain_sweep.py: 3000, 5000).
SYNTHETIC_SEED, TEST_SEED = 1000, 2000
VARIANTS: dict[str, dict[str, Any]] = {
    "simgan": {},
    "no-history": {"history": False},
    "global": {"adversarial": "global"},
}
PUPIL_SAMPLE = 1000  # eyes used for the pupil-shift measurement
LAST_WEIGHTS, BEST_BY_REALISM = "refined (last weights)", "refined (best by realism)"
# Settings that change a row's number; rows made under other values are never reused.
ROW_SETTINGS = ("preset", "simgan_flags", "train_count", "test_count", "estimator_steps",
                "estimator_batch", "width_mult", "no_4x")  # fmt: skip


def row_name(variant: str) -> str:
    return "refined" if variant == "simgan" else f"refined ({variant})"


def synthetic_count(args: argparse.Namespace) -> int:
    """Synthetic eyes rendered per seed: enough for the 4x rows unless they are left out."""
    return args.train_count if args.no_4x else 4 * args.train_count


def pupil_shift(synthetic: Path, refined: Path, n: int) -> dict[str, float]:
    shift = distance_moved(first_images(synthetic, n), first_images(refined, n))  # (n,)
    return {"mean": shift.mean().item(), "std": shift.std().item()}


def run_seed(
    args: argparse.Namespace, seed: int, work: Path, done: dict[str, Any] | None = None,
    save: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """One seed's rows for every domain; rows already in `done` (an earlier run's entry) are
    reused, not rerun. `save(entry)` is called after each domain, so a report that dies keeps
    the domains it finished."""
    done_domains: dict[str, Any] = (done or {}).get("domains", {})
    n = args.train_count
    syn = work / f"synthetic-s{seed}"
    if not (syn / "manifest.json").is_file():
        convert_sim_eyes(syn, "synthetic", synthetic_count(args), SYNTHETIC_SEED + seed)
    tests = {}
    for domain in args.domains:
        # The "real" domain keeps its earlier directory name, so earlier reports resume.
        tests[domain] = work / (f"real-test-s{seed}" if domain == "real" else
                                f"{domain}-test-s{seed}")  # fmt: skip
        if not (tests[domain] / "manifest.json").is_file():
            convert_sim_eyes(tests[domain], domain, args.test_count, TEST_SEED + seed)

    def estimate(train_dir: Path, count: int, domains: list[str]) -> list[dict[str, Any]]:
        return train_and_test_many(
            train_dir, [tests[d] for d in domains], steps=args.estimator_steps,
            batch_size=args.estimator_batch, seed=seed, train_count=count,
            width_mult=args.width_mult, num_workers=0, progress=True,
        )  # fmt: skip

    entry: dict[str, Any] = {"seed": seed, "domains": {}}
    for domain in args.domains:
        old = done_domains.get(domain, {})
        entry["domains"][domain] = {
            "rows": dict(old.get("rows", {})),
            "pupil_shift_px": dict(old.get("pupil_shift_px", {})),
            "realism": dict(old.get("realism", {})),
        }
    # The synthetic rows: one training each, tested on every domain that lacks them.
    for name, count in (("synthetic", n), ("synthetic 4x", 4 * n))[: 1 if args.no_4x else 2]:
        missing = [d for d in args.domains if name not in entry["domains"][d]["rows"]]
        if missing:
            say(f"seed {seed}: row '{name}' ({count:,} synthetic eyes) for {', '.join(missing)}")
            for d, result in zip(missing, estimate(syn, count, missing), strict=True):
                entry["domains"][d]["rows"][name] = result
    for domain in args.domains:
        here = entry["domains"][domain]
        for variant in args.variants:
            name = row_name(variant)
            wanted = [name] if args.no_4x else [name, f"{name} 4x"]
            if variant == "simgan":
                wanted += [LAST_WEIGHTS, BEST_BY_REALISM]
            if all(k in here["rows"] for k in wanted) and name in here["pupil_shift_px"]:
                continue
            run_simgan(args, seed, work, domain, variant, syn, estimate, here)
        if save is not None:
            save(entry)
    return entry


def run_simgan(
    args: argparse.Namespace, seed: int, work: Path, domain: str, variant: str, syn: Path,
    estimate: Any, here: dict[str, Any],
) -> None:  # fmt: skip
    """Train one SimGAN variant against `domain` and fill its rows into `here`."""
    n = args.train_count
    sample = min(PUPIL_SAMPLE, synthetic_count(args))
    name = row_name(variant)
    tag = f"{variant}-s{seed}" if domain == "real" else f"{variant}-{domain}-s{seed}"
    flags = ["--preset", args.preset, *shlex.split(args.simgan_flags)]
    cfg = resolve(flags).replace(
        seed=seed, run_dir=str(work / f"run-{tag}"), builtin_real=domain,
        cache_dir=str(work / "cache"), progress=True, resume="auto", keep_checkpoints=0,
        **VARIANTS[variant],
    )  # fmt: skip
    say(f"seed {seed}, {domain}: SimGAN '{variant}' in {cfg.outputs.run_dir}")
    final = resolve_checkpoint(training_loop(cfg, label_shift=pupil_scores))
    refined = refine_with(final, syn, work / f"refined-{tag}")
    # A new SimGAN run makes a new refined set, so none of its old rows stand.
    here["rows"][name] = estimate(refined, n, [domain])[0]
    if not args.no_4x:
        here["rows"][f"{name} 4x"] = estimate(refined, 4 * n, [domain])[0]
    here["pupil_shift_px"][name] = pupil_shift(syn, refined, sample)
    scores = realism_scores(cfg.outputs.run_dir)
    best = best_checkpoint(cfg.outputs.run_dir)
    here["realism"][name] = {
        "final": {"checkpoint": final.name, **scores.get(final.name, {})},
        "best": {"checkpoint": best.name, **scores.get(best.name, {})} if best else None,
    }
    if variant != "simgan":
        return
    if has_ema(final):
        raw = refine_with(final, syn, work / f"refined-{tag}-raw", weights="raw")
        here["rows"][LAST_WEIGHTS] = estimate(raw, n, [domain])[0]
        here["pupil_shift_px"][LAST_WEIGHTS] = pupil_shift(syn, raw, sample)
    else:
        here["rows"][LAST_WEIGHTS] = here["rows"][name]
    if best is not None and best != final:
        chosen = refine_with(best, syn, work / f"refined-{tag}-best")
        here["rows"][BEST_BY_REALISM] = estimate(chosen, n, [domain])[0]
        here["pupil_shift_px"][BEST_BY_REALISM] = pupil_shift(syn, chosen, sample)
    else:
        here["rows"][BEST_BY_REALISM] = here["rows"][name]


def summarise(per_seed: list[dict[str, Any]], domain: str) -> tuple[str, dict[str, list[float]]]:
    """Markdown table of one domain (mean +- sd over seeds) and mean cumulative curves."""
    entries = [s["domains"][domain] for s in per_seed]
    names = list(entries[0]["rows"])
    lines = [
        f"**{domain}**",
        "",
        "| trained on | within 7 deg (%) | mean error (deg) | pupil shift (px) | C2ST (%) |",
        "|---|--:|--:|--:|--:|",
    ]
    curves: dict[str, list[float]] = {}
    for name in names:
        results = [e["rows"][name] for e in entries]
        within = [r["within_7deg_pct"] for r in results]
        error = [r["mean_angular_error_deg"] for r in results]
        shifts = [e["pupil_shift_px"][name]["mean"] for e in entries
                  if name in e["pupil_shift_px"]]  # fmt: skip
        realism = [100 * e["realism"][name]["final"]["c2st_refined"] for e in entries
                   if e["realism"].get(name, {}).get("final", {}).get("c2st_refined")
                   is not None]  # fmt: skip
        if name == "synthetic":
            realism = [100 * e["realism"][r]["final"]["c2st_synthetic"] for e in entries
                       for r in list(e["realism"])[:1]
                       if "c2st_synthetic" in e["realism"][r]["final"]]  # fmt: skip
        lines.append(
            f"| {name} | {spread(within)} | {spread(error)} | "
            f"{spread(shifts) if shifts else '-'} | {spread(realism) if realism else '-'} |"
        )
        curves[name] = [
            statistics.mean(c) for c in zip(*(r["within_pct"] for r in results), strict=True)
        ]
    lines.append("")
    seeds = len(per_seed)
    lines.append(f"{seeds} seed(s)" + ("; +- is the standard deviation over seeds." if seeds > 1
                                        else "."))  # fmt: skip
    return "\n".join(lines) + "\n", curves


def add_parser(tasks: Any) -> None:
    """Add `gaze` to ``distsim.report``'s sub-commands."""
    gaze = tasks.add_parser("gaze", help="Table 2: gaze estimation on the built-in eye benchmark")
    gaze.add_argument("--out", type=Path, required=True)
    gaze.add_argument("--preset", default="cpu", help="SimGAN preset (cpu, eyes, smoke)")
    gaze.add_argument(
        "--simgan-flags", default="",
        help="more train.py flags for every SimGAN run, e.g. '--lr-d 1e-3' (seed, run and "
        "cache directories and the real domain are the report's)",
    )  # fmt: skip
    gaze.add_argument("--domains", nargs="+", default=list(REAL_DOMAINS), choices=REAL_DOMAINS)
    gaze.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    gaze.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    gaze.add_argument("--train-count", type=positive_int, default=20_000)
    gaze.add_argument("--test-count", type=positive_int, default=5_000)
    gaze.add_argument("--estimator-steps", type=positive_int, default=1000)
    gaze.add_argument("--estimator-batch", type=positive_int, default=128)
    gaze.add_argument("--width-mult", type=float, default=1.0, help="estimator width")
    gaze.add_argument(
        "--no-4x", action="store_true",
        help="leave out the 4x rows: a third fewer estimator trainings, a quarter of the "
        "synthetic eyes to render and refine",
    )  # fmt: skip


def run_report(args: argparse.Namespace) -> int:
    """`distsim.report gaze`: 0, or 2 with one line on stderr for a bad input."""
    try:
        work = args.out / "work"
        done = finished_seeds(args.out, args, ROW_SETTINGS)
        work.mkdir(parents=True, exist_ok=True)
        results = dict(done)  # seed -> entry; seeds this report was not asked for stay on record

        def save(entry: dict[str, Any] | None = None) -> None:
            if entry is not None:
                results[entry["seed"]] = entry
            save_report(args.out, args, results, ROW_SETTINGS)

        # Saved before the first run starts, so the settings guard OUT/work even when this
        # report dies before finishing a domain, then after every domain, so that it keeps
        # what it finished.
        save()
        for seed in args.seeds:
            save(run_seed(args, seed, work, done.get(seed), save))
        per_seed = [results[seed] for seed in args.seeds]
        tables = []
        for domain in args.domains:
            table, curves = summarise(per_seed, domain)
            tables.append(table)
            GazeTask().plot(curves, args.out / f"cumulative_error_{domain}.png",
                            title=f"Gaze on {domain} eyes: synthetic vs refined")  # fmt: skip
        (args.out / "table.md").write_text("\n".join(tables))
    except (ValueError, OSError) as err:  # a full disk too
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    print("\n".join(tables), end="")
    return 0
