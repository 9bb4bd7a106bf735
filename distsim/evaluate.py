"""Score a data set by the gaze estimator it trains: `python -m distsim.evaluate gaze ...`.

(`python -m distsim.evaluate hands ...` does the same for depth hands with the paper's stacked
hourglass: ``distsim.evaluate_hands``.)

The paper's measure of a refiner (section 4.1, Tables 2-3, Figure 7): train its gaze estimator
on some labelled eyes (synthetic, refined, or real as an upper bound), test it on labelled real
eyes, and report the mean angular error and the percentage of test images within d degrees.

    python -m distsim.evaluate gaze --train data/syn --test data/real-test --out runs/eval-syn \
        --steps 2000
    accelerate launch -m distsim.evaluate gaze ...   # training (DDP) and testing split by rank
    python -m distsim.evaluate gaze ... --deepspeed launch/deepspeed_zero2.json  # see zero.py

Writes DIR/metrics.json and DIR/cumulative_error.png (Figure 7's curve; ``plot_cumulative``
overlays several runs).

Choices the paper leaves open, and ours:
- Optimiser: Adam at the paper's lr 0.001 and batch 512 (per rank). The paper does not say;
  Adam reaches a usable estimator in a few hundred steps where SGD at 1e-3 on an L2 loss of
  unit vectors barely moves, which matters for CPU runs. ``--optimizer sgd`` (momentum 0.9)
  is there for comparison.
- Training draws batches from the infinite resampled stream (``distsim.data.make_loader``) and
  counts steps; ``--epochs E`` means as many steps as E passes over the training images would
  take (E * N / global batch, rounded up), sampled with replacement.
- The loss is the mean over the batch of the squared L2 distance to the unit gaze vector; the
  angle is measured after normalising the prediction (``distsim.metrics``).
- Testing reads each test image exactly once over all ranks (``make_epoch_loader``, no
  shuffle, remainder "split"), and the metrics are sums all-reduced by torchmetrics.

``train_and_test`` holds all of it and takes rank, world size and device as arguments; only
``main`` talks to Accelerate. The training loop itself is ``distsim.fit.fit``, shared by every
estimator; its ``prepare`` hook is how DDP or DeepSpeed (``--deepspeed``, ``distsim.zero``)
run it, and either way the bare float32 estimator is what gets tested.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distsim import data
from distsim.data.pixels import to_unit_range
from distsim.estimators import EYE_SHAPE, GazeEstimator, gaze_loss
from distsim.fit import Plain, Prepare, fit
from distsim.metrics import MeanAngularError, WithinAngle
from shards.cliutil import non_negative_int, one_line, positive_int
from shards.format import Manifest

PROG = "distsim.evaluate"
THRESHOLDS = tuple(range(1, 21))  # degrees: the x axis of the paper's Figure 7
LABEL = "gaze"
OPTIMIZERS = ("adam", "sgd")
GAZE_TITLE = "Gaze estimation: cumulative error"


# --- data -----------------------------------------------------------------------------------


def open_gaze_shards(directory: str | Path) -> Manifest:
    """The manifest of a shard set an estimator can use; ValueError with one line otherwise."""
    manifest = data.open_shards(directory)  # ShardError (a ValueError) for a missing dir etc.
    if LABEL not in manifest.labels:
        raise ValueError(f"{directory}: no gaze labels")
    if tuple(manifest.image_shape) != EYE_SHAPE:
        shape = "x".join(map(str, manifest.image_shape))
        want = "x".join(map(str, EYE_SHAPE))
        raise ValueError(f"{directory}: images are {shape}; the gaze estimator needs {want}")
    return manifest


def make_train_loader(
    directory: str | Path,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    num_workers: int,
    train_count: int | None = None,
) -> data.ShardLoader:
    """Infinite gaze batches, from every image or only the first ``train_count``."""
    return data.make_loader(
        directory, batch_size, rank, world_size, seed, num_workers, labels=(LABEL,),
        max_images=train_count,
    )  # fmt: skip


def steps_for_epochs(epochs: float, num_images: int, batch_size: int, world_size: int) -> int:
    """Steps that draw about ``epochs`` passes over ``num_images`` at the global batch."""
    return max(1, math.ceil(epochs * num_images / (batch_size * world_size)))


# --- train and test -------------------------------------------------------------------------


def _gaze_batches(
    batches: Iterator[dict[str, torch.Tensor]], device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in batches:
        x = to_unit_range(batch["image"].to(device, non_blocking=True))  # (B, 1, H, W)
        y = batch[LABEL].to(device, non_blocking=True)  # (B, 3)
        yield x, y


def _log(rank: int, text: str, progress: bool = True) -> None:
    if rank == 0 and progress:
        print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def train_and_test(train_dir: str | Path, test_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Train a ``GazeEstimator`` on ``train_dir``'s gaze labels, test it on ``test_dir``'s.

    The report written to metrics.json; see ``train_and_test_many`` for the arguments.
    """
    return train_and_test_many(train_dir, [test_dir], **kwargs)[0]


def train_and_test_many(
    train_dir: str | Path,
    test_dirs: Sequence[str | Path],
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    steps: int | None = None,
    epochs: float | None = None,
    batch_size: int = 512,
    lr: float = 1e-3,
    seed: int = 0,
    width_mult: float = 1.0,
    optimizer: str = "adam",
    num_workers: int = 1,
    train_count: int | None = None,
    test_batch_size: int | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    prepare: Prepare | None = None,
    log_every: int = 100,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train one ``GazeEstimator`` on ``train_dir``'s gaze labels and test it on each of
    ``test_dirs`` (one training, one report per test set: the synthetic baseline of several
    real domains costs one training).

    Give exactly one of ``steps`` (0 tests the untrained estimator) and ``epochs``. Each of
    ``world_size`` ranks calls this with its ``rank``; with a process group initialised, the
    metrics and the logged loss are reduced over it. ``wrap_model`` (e.g. Accelerate's
    ``prepare_model``) wraps the estimator for training, for DDP; ``prepare`` (instead; e.g.
    ``distsim.zero.DeepSpeed``) is the general hook of ``distsim.fit.fit``. Testing uses the
    bare float32 model either way. ``batch_size`` is per rank. Returns the reports written to
    metrics.json (same on all ranks), in the order of ``test_dirs``.
    """
    started = time.perf_counter()
    device = torch.device(device)
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps and epochs")
    if batch_size < 1 or not lr > 0 or not width_mult > 0:
        raise ValueError(
            f"need batch_size >= 1, lr > 0 and width_mult > 0, got {batch_size}, {lr}, {width_mult}"
        )
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if (steps is not None and steps < 0) or (epochs is not None and not epochs > 0):
        raise ValueError(f"need steps >= 0 or epochs > 0, got steps={steps}, epochs={epochs}")
    if not test_dirs:
        raise ValueError("give at least one test set")
    if wrap_model is not None and prepare is not None:
        raise ValueError("give at most one of wrap_model and prepare")
    if prepare is None:
        prepare = Plain(wrap_model)
    train_manifest = open_gaze_shards(train_dir)
    test_manifests = [open_gaze_shards(d) for d in test_dirs]
    if train_manifest.labels_for_evaluation_only:
        # Allowed: the paper's "real" rows train on real eyes as the upper bound a refiner
        # is measured against. But it is not a sim-to-real result, so say so.
        _log(
            rank,
            f"note: {train_dir} has labels for evaluation only (a real domain); training on "
            "it measures the real-data upper bound, not a synthetic or refined set",
        )
    available = train_manifest.count
    if train_count is not None and not 1 <= train_count <= available:
        raise ValueError(
            f"{train_dir}: --train-count {train_count} but the set has {available} images"
        )
    used = available if train_count is None else train_count
    if epochs is not None:
        steps = steps_for_epochs(epochs, used, batch_size, world_size)
    assert steps is not None

    # Identical initial weights on every rank without relying on DDP's broadcast.
    torch.manual_seed(seed)
    model = GazeEstimator(width_mult).to(device)
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    losses: list[dict[str, float]] = []
    train_started = time.perf_counter()
    if steps > 0:
        loader = make_train_loader(
            train_dir, batch_size, rank, world_size, seed, num_workers, train_count
        )
        _log(rank, f"training the gaze estimator on {used:,} images of {train_dir}", progress)
        with loader:
            losses = fit(
                model, opt, _gaze_batches(iter(loader), device), gaze_loss, steps,
                prepare=prepare, rank=rank, log_every=log_every, progress=progress,
            )  # fmt: skip
    train_seconds = time.perf_counter() - train_started

    model.eval()
    reports = []
    for test_dir, test_manifest in zip(test_dirs, test_manifests, strict=True):
        _log(rank, f"testing on the {test_manifest.count:,} images of {test_dir}", progress)
        test_started = time.perf_counter()
        error, pct, tested, within_thresholds = _test(
            model, test_dir, rank=rank, world_size=world_size, device=device, seed=seed,
            batch_size=test_batch_size or batch_size, num_workers=num_workers,
            thresholds=thresholds,
        )  # fmt: skip
        test_seconds = time.perf_counter() - test_started
        by_threshold = dict(zip(within_thresholds, pct, strict=True))
        reports.append({
            "task": "gaze",
            "mean_angular_error_deg": error,
            "thresholds_deg": [int(t) if t.is_integer() else t for t in within_thresholds],
            "within_pct": pct,
            "within_7deg_pct": by_threshold.get(7.0),  # the paper's Table 2 number
            "train_dir": str(train_dir),
            "test_dir": str(test_dir),
            "train_labels_for_evaluation_only": train_manifest.labels_for_evaluation_only,
            "test_source": test_manifest.source,
            "counts": {
                "train_images_in_set": available,
                "train_images_used": used,
                "train_images_drawn": steps * batch_size * world_size,
                "test_images": tested,
            },
            "config": {
                "steps": steps,
                "epochs": epochs,
                "batch_size_per_rank": batch_size,
                "global_batch_size": batch_size * world_size,
                "lr": lr,
                "optimizer": optimizer,
                "seed": seed,
                "width_mult": width_mult,
                "train_count": train_count,
                "num_workers": num_workers,
                "world_size": world_size,
                "device": device.type,
                "deepspeed": prepare.deepspeed,
                "loss": "mean over batch of ||pred - unit gaze||^2",
            },
            "train_loss": losses,
            "seconds": {
                "train": train_seconds,
                "test": test_seconds,
                "total": time.perf_counter() - started,
            },
            "machine": {"platform": platform.platform(), "torch": torch.__version__},
        })  # fmt: skip
    return reports


def _test(
    model: nn.Module,
    test_dir: str | Path,
    *,
    rank: int,
    world_size: int,
    device: torch.device,
    seed: int,
    batch_size: int,
    num_workers: int,
    thresholds: Sequence[float],
) -> tuple[float, list[float], int, tuple[float, ...]]:
    """(mean error, % within each threshold, images tested, thresholds) of ``model`` on every
    image of ``test_dir`` exactly once over all ranks."""
    mean_error = MeanAngularError().to(device)
    within = WithinAngle(thresholds).to(device)
    test_loader = data.make_epoch_loader(
        test_dir, batch_size, rank, world_size, seed, num_workers,
        labels=(LABEL,), shuffle=False, remainder="split",
    )  # fmt: skip
    with test_loader, torch.no_grad():
        for batch in test_loader:
            x = to_unit_range(batch["image"].to(device, non_blocking=True))  # (B, 1, H, W)
            y = batch[LABEL].to(device, non_blocking=True)  # (B, 3)
            pred = model(x).float()  # (B, 3)
            mean_error.update(pred, y)
            within.update(pred, y)
    # compute() all-reduces the sums when a process group is up; every rank gets the totals.
    error = float(mean_error.compute())
    pct = [float(v) for v in within.compute().tolist()]
    with mean_error.sync_context():
        tested = int(mean_error.count)
    return error, pct, tested, tuple(within.thresholds)


# --- reporting ------------------------------------------------------------------------------


def plot_cumulative(
    curves: dict[str, list[float]],
    path: str | Path,
    thresholds: Sequence[float] = THRESHOLDS,
    title: str = "Gaze estimation: cumulative error",
    *,
    xlabel: str = "angular error (degrees)",
    ylabel: str = "% of images within error",
) -> Path:
    """Figure 7's plot: % of test images within each angular error, one curve per run.

    ``curves`` maps a run's name to its ``within_pct`` (one value per threshold). (Figure 9's
    hand curves too, with their labels: ``distsim.evaluate_hands.plot_within_pixels``.)
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    for name, values in curves.items():
        if len(values) != len(thresholds):
            raise ValueError(
                f"curve {name!r} has {len(values)} values for {len(thresholds)} thresholds"
            )
    xs = list(map(float, thresholds))
    if xs[0] > 0:  # nothing is within 0 of a continuous error: start the curve at (0, 0)
        xs, curves = [0.0, *xs], {name: [0.0, *values] for name, values in curves.items()}
    fig, ax = plt.subplots(figsize=(5.0, 4.0), dpi=120)
    try:
        for name, values in curves.items():
            ax.plot(xs, values, marker="o", markersize=3, label=name)
        ax.set_xlim(0, max(xs))
        ax.set_xticks(range(0, math.ceil(max(xs)) + 1, 2))
        ax.set_ylim(0, 100)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")  # hand curves start late and low, gaze ones early and high
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out


def write_report(report: dict[str, Any], out_dir: str | Path, name: str | None = None) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    label = name or Path(report["train_dir"]).name
    plot_cumulative({label: report["within_pct"]}, out / "cumulative_error.png")


# --- command line ---------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_deepspeed_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--deepspeed",
        type=Path,
        default=None,
        metavar="CONFIG",
        help="train through Accelerate's DeepSpeed plugin with this DeepSpeed JSON config "
        "(launch/deepspeed_zero2.json: ZeRO-2, bf16 on GPUs); needs "
        "pip install 'distsim[deepspeed]'",
    )


def launch_estimator(deepspeed_flag: Path | None, batch_size: int) -> tuple[Any, Prepare | None]:
    """(Accelerator, prepare hook) for training an estimator: DeepSpeed when --deepspeed or the
    launcher's Accelerate config asks for it, else DDP over several processes, else plain."""
    from distsim import zero
    from distsim.train import make_accelerator

    launched = zero.launcher_config()  # an Accelerate config with a DeepSpeed JSON
    if launched and deepspeed_flag and Path(launched).resolve() != deepspeed_flag.resolve():
        raise ValueError(f"--deepspeed {deepspeed_flag} but the launcher's is {launched}")
    deepspeed = deepspeed_flag or launched
    if deepspeed:
        config, info = zero.load_config(deepspeed, batch_size)
        accelerator = zero.make_accelerator(config, info)
        return accelerator, zero.DeepSpeed(accelerator, info)
    accelerator = make_accelerator()  # CPU/gloo when launched without CUDA
    return accelerator, Plain(accelerator.prepare_model) if accelerator.num_processes > 1 else None


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
    g.add_argument("--train", type=Path, required=True, help="shard set with gaze labels")
    g.add_argument("--test", type=Path, required=True, help="shard set with gaze labels (real)")
    g.add_argument("--out", type=Path, required=True, help="directory for the report")
    length = g.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=non_negative_int, help="training steps (0: untrained)")
    length.add_argument(
        "--epochs", type=_positive_float, help="steps worth this many passes over --train"
    )
    g.add_argument("--batch-size", type=positive_int, default=512, help="per rank (512)")
    g.add_argument("--lr", type=_positive_float, default=1e-3, help="learning rate (0.001)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="(adam)")
    g.add_argument("--seed", type=non_negative_int, default=0, help="init and data order (0)")
    g.add_argument(
        "--width-mult", type=_positive_float, default=1.0, help="scale every hidden width (1.0)"
    )
    g.add_argument("--num-workers", type=non_negative_int, default=1, help="per rank (1)")
    g.add_argument(
        "--train-count",
        type=positive_int,
        default=None,
        help="use only the first N training images (the paper's '4x more data' rows)",
    )
    g.add_argument("--log-every", type=positive_int, default=100, help="steps (100)")
    add_deepspeed_arg(g)
    g.add_argument("--name", default=None, help="curve label in the plot (--train's name)")
    from distsim.evaluate_hands import add_hands_parser  # here: it imports this module

    add_hands_parser(tasks)
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
        from distsim.evaluate_hands import plot_within_pixels

        if title == GAZE_TITLE:
            title = "Hand pose: frames within distance"
        return plot_within_pixels(curves, out, thresholds, title=title)
    return plot_cumulative(curves, out, thresholds, title=title)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.task == "hands":
        from distsim.evaluate_hands import run_hands

        return run_hands(args, PROG)
    if args.task == "plot":
        try:
            print(f"{PROG}: wrote {overlay(args.runs, args.out, args.names, args.title)}")
        except (ValueError, OSError) as err:
            print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
            return 2
        return 0

    def train(accelerator: Any, prepare: Prepare | None) -> dict[str, Any]:
        return train_and_test(
            args.train,
            args.test,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            device=accelerator.device,
            steps=args.steps,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            width_mult=args.width_mult,
            optimizer=args.optimizer,
            num_workers=args.num_workers,
            train_count=args.train_count,
            prepare=prepare,
            log_every=args.log_every,
            progress=True,
        )

    def summary(report: dict[str, Any]) -> str:
        return (
            f"mean error {report['mean_angular_error_deg']:.2f} deg, "
            f"{report['within_7deg_pct']:.1f}% within 7 deg, "
            f"{report['counts']['test_images']} test images"
        )

    return run_estimator(args, PROG, open_gaze_shards, train, write_report, summary)


def run_estimator(
    args: argparse.Namespace,
    prog: str,
    open_set: Callable[[Path], Any],
    train: Callable[[Any, Prepare | None], dict[str, Any]],  # (Accelerator, prepare)
    write: Callable[[dict[str, Any], Path, str | None], Any],
    summary: Callable[[dict[str, Any]], str],
) -> int:
    """One `evaluate` task's command: check --train and --test with `open_set`, start
    Accelerate (DeepSpeed, DDP or one process), `train(accelerator, prepare)`, write the report
    and print `summary(report)` on the main process. 0, or 2 with one line for a bad input."""
    accelerator = None
    try:
        # Checked before Accelerate starts, so a bad path costs no process group.
        open_set(args.train)
        open_set(args.test)
        accelerator, prepare = launch_estimator(args.deepspeed, args.batch_size)
        report = train(accelerator, prepare)
        if accelerator.is_main_process:
            write(report, args.out, args.name)
            print(f"{prog}: {summary(report)}; wrote {args.out}/metrics.json", flush=True)
        accelerator.wait_for_everyone()
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        if accelerator is None or accelerator.is_main_process:
            print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    finally:
        # As distsim.train and distsim.refine: a process group left to the interpreter's exit
        # can abort a finished rank (gloo's threads) and print C++ frames.
        if accelerator is not None:
            accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
