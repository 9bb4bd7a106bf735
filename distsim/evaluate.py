"""Score a data set by the estimator it trains: the paper's measure of a refiner.

    python -m distsim.evaluate gaze --train data/syn --test data/real-test --out runs/eval-syn \
        --steps 2000
    python -m distsim.evaluate hands --train data/hands-syn --test data/hands-real-test \
        --out runs/hands-syn --steps 2000
    accelerate launch -m distsim.evaluate gaze ...   # training (DDP) and testing split by rank
    python -m distsim.evaluate gaze ... --deepspeed launch/deepspeed_zero2.json
    python -m distsim.evaluate plot RUN [RUN ...] --out curves.png   # Figure 7 or 9

`gaze` trains the paper's gaze estimator and tests it on labelled real eyes (Tables 2-3,
Figure 7; ``distsim.gaze.task``); `hands` trains the stacked hourglass and tests it on
labelled real depth crops (Table 4, Figure 9; ``distsim.hands.task``). Both write
DIR/metrics.json and the curve beside it, through one pipeline
(``distsim.estimation.pipeline``). Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distsim.distributed.launch import make_accelerator
from distsim.estimation import deepspeed
from distsim.estimation.fit import Plain, Prepare
from distsim.estimation.pipeline import Task, open_set, train_and_test_many, write_report
from distsim.gaze.task import OPTIMIZERS, GazeTask
from distsim.gaze.task import TITLE as GAZE_TITLE
from distsim.hands.hourglass import DECODERS
from distsim.hands.task import HandTask, plot_within_pixels
from shards.cliutil import non_negative_int, one_line, positive_int

PROG = "distsim.evaluate"


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _common_args(p: argparse.ArgumentParser, what: str, batch: int, seed: str) -> None:
    """The flags every task takes; `what` names its shard sets, `batch` its default batch."""
    p.add_argument("--train", type=Path, required=True, help=f"shard set with {what}")
    p.add_argument("--test", type=Path, required=True, help=f"shard set with {what} (real)")
    p.add_argument("--out", type=Path, required=True, help="directory for the report")
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=non_negative_int, help="training steps (0: untrained)")
    length.add_argument(
        "--epochs", type=_positive_float, help="steps worth this many passes over --train"
    )
    p.add_argument("--batch-size", type=positive_int, default=batch, help=f"per rank ({batch})")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="learning rate (0.001)")
    p.add_argument("--seed", type=non_negative_int, default=0, help=f"{seed} (0)")
    p.add_argument("--num-workers", type=non_negative_int, default=1, help="per rank (1)")
    p.add_argument(
        "--train-count",
        type=positive_int,
        default=None,
        help="use only the first N training images (the paper's '4x more data' rows)",
    )
    p.add_argument("--log-every", type=positive_int, default=100, help="steps (100)")
    p.add_argument(
        "--deepspeed",
        type=Path,
        default=None,
        metavar="CONFIG",
        help="train through Accelerate's DeepSpeed plugin with this DeepSpeed JSON config "
        "(launch/deepspeed_zero2.json: ZeRO-2, bf16 on GPUs); needs "
        f"{deepspeed.INSTALL}",
    )
    p.add_argument("--name", default=None, help="curve label in the plot (--train's name)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Score data sets by the estimators they train (paper section 4)."
    )
    tasks = parser.add_subparsers(dest="task", required=True)
    g = tasks.add_parser(
        "gaze",
        help="train the paper's gaze estimator, test it on labelled real eyes",
        description="Train the paper's gaze estimator on --train, test it on --test, and write "
        "metrics.json and cumulative_error.png to --out.",
    )
    _common_args(g, "gaze labels", 512, "init and data order")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="(adam)")
    g.add_argument(
        "--width-mult", type=_positive_float, default=1.0, help="scale every hidden width (1.0)"
    )
    h = tasks.add_parser(
        "hands",
        help="train the paper's hand-pose estimator, test it on labelled real depth crops",
        description="Train a stacked hourglass (2 stacks, 14 joints) on --train's hand crops, "
        "test it on --test, and write metrics.json and within_pixels.png to --out.",
    )
    _common_args(h, "hand crops (joints_uvd)", 32, "init, data order and augmentation")
    h.add_argument("--width", type=positive_int, default=256, help="hourglass width (256)")
    h.add_argument("--stacks", type=positive_int, default=2, help="hourglasses (2)")
    h.add_argument("--depth", type=positive_int, default=4, help="down-samplings each (4)")
    h.add_argument(
        "--stem-stride", type=int, choices=(1, 2, 4), default=4, help="input / heatmap (4)"
    )
    h.add_argument(
        "--input-size",
        type=positive_int,
        default=None,
        help="network input side (default: 256 for 224 crops, else the crop side)",
    )
    h.add_argument("--sigma", type=_positive_float, default=1.0, help="heatmap px (1.0)")
    h.add_argument("--max-degrees", type=float, default=20.0, help="rotation range (20)")
    h.add_argument(
        "--max-shift", type=float, default=0.08, help="shift, fraction of the crop side (0.08)"
    )
    h.add_argument("--scale-jitter", type=float, default=0.0, help="scale U(1-j, 1+j) (0)")
    h.add_argument("--decode", choices=DECODERS, default="quarter", help="(quarter)")
    plot = tasks.add_parser(
        "plot",
        help="overlay the cumulative-error curves of several evaluations in one plot",
        description="Read each DIR/metrics.json written by `evaluate gaze` (or each written "
        "by `evaluate hands`) and draw their curves (the paper's Figure 7, or Figure 9) in one "
        "PNG.",
    )
    plot.add_argument("runs", type=Path, nargs="+", help="evaluation directories")
    plot.add_argument("--out", type=Path, required=True, help="PNG to write")
    plot.add_argument("--names", nargs="+", help="curve labels (default: the directory names)")
    plot.add_argument("--title", default=GAZE_TITLE)
    return parser


def make_task(args: argparse.Namespace) -> Task:
    """The task the command line asks for, with its settings (ValueError, one line)."""
    if args.task == "gaze":
        return GazeTask(args.width_mult, args.optimizer, args.lr)
    return HandTask(
        args.width, args.stacks, args.depth, args.stem_stride, args.input_size, args.sigma,
        args.max_degrees, args.max_shift, args.scale_jitter, args.decode, args.lr,
    )  # fmt: skip


def launch_estimator(deepspeed_flag: Path | None, batch_size: int) -> tuple[Any, Prepare | None]:
    """(Accelerator, prepare hook) for training an estimator: DeepSpeed when --deepspeed or the
    launcher's Accelerate config asks for it, else DDP over several processes, else plain."""
    launched = deepspeed.launcher_config()  # an Accelerate config with a DeepSpeed JSON
    if launched and deepspeed_flag and Path(launched).resolve() != deepspeed_flag.resolve():
        raise ValueError(f"--deepspeed {deepspeed_flag} but the launcher's is {launched}")
    config_file = deepspeed_flag or launched
    if config_file:
        config, info = deepspeed.load_config(config_file, batch_size)
        accelerator = deepspeed.make_accelerator(config, info)
        return accelerator, deepspeed.DeepSpeed(accelerator, info)
    accelerator = make_accelerator()  # CPU/gloo when launched without CUDA
    return accelerator, Plain(accelerator.prepare_model) if accelerator.num_processes > 1 else None


def run_estimator(args: argparse.Namespace) -> int:
    """`evaluate gaze` or `evaluate hands`: check --train and --test, start Accelerate
    (DeepSpeed, DDP or one process), train and test, write the report and print its summary
    on the main process. 0, or 2 with one line for a bad input."""
    accelerator = None
    try:
        task = make_task(args)
        # Checked before Accelerate starts, so a bad path costs no process group.
        open_set(task, args.train)
        open_set(task, args.test)
        accelerator, prepare = launch_estimator(args.deepspeed, args.batch_size)
        report = train_and_test_many(
            task, args.train, [args.test], rank=accelerator.process_index,
            world_size=accelerator.num_processes, device=accelerator.device, steps=args.steps,
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            num_workers=args.num_workers, train_count=args.train_count, prepare=prepare,
            log_every=args.log_every, progress=True,
        )[0]  # fmt: skip
        if accelerator.is_main_process:
            write_report(task, report, args.out, args.name)
            print(f"{PROG}: {task.summary(report)}; wrote {args.out}/metrics.json", flush=True)
        accelerator.wait_for_everyone()
    except (ValueError, OSError, FloatingPointError) as err:  # a full disk too
        if accelerator is None or accelerator.is_main_process:
            print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    finally:
        # As distsim.train and distsim.refine: a process group left to the interpreter's exit
        # can abort a finished rank (gloo's threads) and print C++ frames.
        if accelerator is not None:
            accelerator.end_training()
    return 0


def overlay(runs: Sequence[Path], out: Path, names: Sequence[str] | None, title: str) -> Path:
    """One plot of several evaluations' curves; ValueError (one line) for a bad input."""
    if names is not None and len(names) != len(runs):
        raise ValueError(f"{len(names)} --names for {len(runs)} evaluation directories")
    curves: dict[str, list[float]] = {}
    thresholds: list[float] | None = None
    tasks: set[str] = set()
    for i, run in enumerate(runs):
        path = run / "metrics.json"
        try:
            report = json.loads(path.read_text())
            task = report.get("task", "gaze")
            tasks.add(task)
            key = "thresholds_px" if task == "hands" else "thresholds_deg"
            within, these = report["within_pct"], report[key]
        except FileNotFoundError:
            raise ValueError(f"{path}: no such file (not an `evaluate gaze` output)") from None
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not an evaluate report ({one_line(err)})") from None
        if thresholds is not None and list(these) != thresholds:
            raise ValueError(f"{path}: thresholds differ from {runs[0] / 'metrics.json'}'s")
        thresholds = list(these)
        curves[names[i] if names else run.name] = within
    assert thresholds is not None
    if len(tasks) > 1:
        raise ValueError(f"cannot overlay gaze and hand evaluations in one plot: {runs}")
    if tasks == {"hands"}:
        if title == GAZE_TITLE:
            title = "Hand pose: frames within distance"
        return plot_within_pixels(curves, out, thresholds, title=title)
    return GazeTask().plot(curves, out, thresholds, title=title)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.task != "plot":
        return run_estimator(args)
    try:
        print(f"{PROG}: wrote {overlay(args.runs, args.out, args.names, args.title)}")
    except (ValueError, OSError) as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
