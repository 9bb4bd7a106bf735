"""Score a depth-hand data set by the pose estimator it trains: `python -m distsim.evaluate hands`.

The paper's measure of a hand refiner (section 4.2, Table 4, Figure 9): train a stacked
hourglass (``distsim.hourglass``) on labelled hand crops (synthetic, refined, or real as an
upper bound), test it on labelled real crops, and report the percentage of test frames within
d pixels of the truth for d = 0..20 at the 224 x 224 crop scale, and the mean joint error.

    python -m distsim.evaluate hands --train data/hands-syn --test data/hands-real-test \
        --out runs/hands-syn --steps 2000
    accelerate launch -m distsim.evaluate hands ...   # training (DDP) and testing split by rank

Writes DIR/metrics.json and DIR/within_pixels.png (Figure 9's curve; ``evaluate plot``
overlays several runs).

Choices the paper leaves open, and ours:
- Joints: the 14 evaluated NYU joints (``shards.depth.EVAL_JOINTS``), (u, v) in crop pixels.
- Input: ``distsim.data.depth.depth_to_unit(holes="far")`` (invalid pixels read as the far
  plane), warped to
  the network's side N: N = 256 for 224 crops, so that Newell's stride-4 stem gives the
  paper's 64 x 64 heatmaps, and N = S otherwise (``default_input_size``); ``--input-size``
  and ``--stem-stride`` choose others (e.g. stride 2 for 64 px CPU crops: 32 x 32 heatmaps).
- Augmentation, training only: rotation U(-20, 20) degrees (the paper), a shifted window of
  up to 8% of the crop side per axis (the paper's "crops") and no scale jitter by default,
  nearest-neighbour sampling (``distsim.handaug``).
- Optimiser: Adam at lr 1e-3 (Newell used RMSprop at 2.5e-4 with batch 6 over days; Adam at
  1e-3 reaches a usable estimator in a few hundred CPU steps), batch 32 per rank.
- Predictions: ``decode_heatmaps`` of the last stack, Newell's quarter-pixel arg-max by
  default (``--decode parabola`` for the log-parabola refinement), mapped back to crop pixels.
- Metric: ``distsim.metrics.WithinPixels``: the headline is the fraction of frames whose
  *largest* error over the 14 joints is within d (Tompson et al. 2014, as the paper's Figure 9
  plots it); the mean-over-joints and per-joint fractions and the mean joint error are
  reported too. Errors in crop pixels are multiplied by 224 / S for S x S crops.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distsim import data
from distsim.data.depth import depth_to_unit
from distsim.evaluate import (
    _log,
    add_deepspeed_arg,
    plot_cumulative,
    run_estimator,
    steps_for_epochs,
)
from distsim.fit import Plain, Prepare, fit
from distsim.handaug import (
    invert,
    random_affine,
    resize_affine,
    transform_points,
    warp,
)
from distsim.hourglass import DECODERS, StackedHourglass, decode_heatmaps, heatmap_loss
from distsim.hourglass import render_heatmaps as render
from distsim.metrics import MeanJointError, WithinPixels
from shards.depth import EVAL_JOINTS
from shards.format import Manifest

LABEL = "joints_uvd"
PAPER_SIZE = 224  # errors are reported at this crop scale
THRESHOLDS_PX = tuple(range(21))  # the x axis of the paper's Figure 9
HEADLINE_PX = 5  # the paper's Table 4 threshold


def open_hand_shards(directory: str | Path) -> Manifest:
    """The manifest of a hand shard set the estimator can use; ValueError with one line."""
    manifest = data.open_shards(directory)
    spec = manifest.labels.get(LABEL)
    if spec is None:
        raise ValueError(f"{directory}: no {LABEL} labels (not a hand shard set)")
    if tuple(spec.shape) != (36, 3):
        raise ValueError(f"{directory}: {LABEL} has shape {tuple(spec.shape)}, not (36, 3)")
    c, h, w = manifest.image_shape
    if c != 1 or h != w or manifest.image_dtype != "uint16":
        shape = "x".join(map(str, manifest.image_shape))
        raise ValueError(
            f"{directory}: images are {shape} {manifest.image_dtype}; the hand estimator needs "
            "1xSxS uint16 depth crops (shards.depth)"
        )
    return manifest


def default_input_size(crop_size: int) -> int:
    """The network's input side for S x S crops: 256 for the paper's 224 (64 x 64 heatmaps
    with the stride-4 stem, as Newell's 256 input), the crop's own side otherwise."""
    return 256 if crop_size == PAPER_SIZE else crop_size


def _joints(batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    uvd = batch[LABEL].to(device, non_blocking=True)  # (B, 36, 3)
    return uvd[:, list(EVAL_JOINTS), :2].float()  # (B, 14, 2) crop pixels


def train_and_test_hands(
    train_dir: str | Path, test_dir: str | Path, **kwargs: Any
) -> dict[str, Any]:
    """Train a ``StackedHourglass`` on ``train_dir``, test it on ``test_dir``: the report
    written to metrics.json. See ``train_and_test_hands_many`` for the arguments."""
    return train_and_test_hands_many(train_dir, [test_dir], **kwargs)[0]


def train_and_test_hands_many(
    train_dir: str | Path,
    test_dirs: Sequence[str | Path],
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    steps: int | None = None,
    epochs: float | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    width: int = 256,
    stacks: int = 2,
    depth: int = 4,
    stem_stride: int = 4,
    input_size: int | None = None,
    sigma: float = 1.0,
    max_degrees: float = 20.0,
    max_shift_frac: float = 0.08,
    scale_jitter: float = 0.0,
    decode: str = "quarter",
    num_workers: int = 1,
    train_count: int | None = None,
    test_batch_size: int | None = None,
    thresholds: Sequence[float] = THRESHOLDS_PX,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    prepare: Prepare | None = None,
    log_every: int = 100,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train one ``StackedHourglass`` on ``train_dir``'s joints and test it on each of
    ``test_dirs``; one report per test set (same on all ranks), in their order.

    As ``distsim.evaluate.train_and_test_many``: exactly one of ``steps`` (0 tests the
    untrained network) and ``epochs``; each of ``world_size`` ranks calls this with its
    ``rank``; ``wrap_model`` wraps the network for training (DDP); ``batch_size`` is per rank.
    """
    started = time.perf_counter()
    device = torch.device(device)
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps and epochs")
    if (steps is not None and steps < 0) or (epochs is not None and not epochs > 0):
        raise ValueError(f"need steps >= 0 or epochs > 0, got steps={steps}, epochs={epochs}")
    if batch_size < 1 or not lr > 0 or not sigma > 0:
        raise ValueError(f"need batch_size >= 1, lr > 0, sigma > 0: {batch_size}, {lr}, {sigma}")
    if decode not in DECODERS:
        raise ValueError(f"decode must be one of {DECODERS}, got {decode!r}")
    if not 0 <= max_shift_frac < 0.5:
        raise ValueError(f"max_shift_frac must be in [0, 0.5), got {max_shift_frac}")
    if not test_dirs:
        raise ValueError("give at least one test set")
    train_manifest = open_hand_shards(train_dir)
    test_manifests = [open_hand_shards(d) for d in test_dirs]
    crop = train_manifest.image_shape[-1]
    for d, m in zip(test_dirs, test_manifests, strict=True):
        if m.image_shape[-1] != crop:
            raise ValueError(f"{d}: crops are {m.image_shape[-1]} px, {train_dir}'s {crop} px")
    size = input_size or default_input_size(crop)
    if size % stem_stride:
        raise ValueError(f"input size {size} is not a multiple of the stem stride {stem_stride}")
    heat = size // stem_stride
    if train_manifest.labels_for_evaluation_only:
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

    torch.manual_seed(seed)  # identical initial weights on every rank
    model = StackedHourglass(len(EVAL_JOINTS), stacks, width, depth, stem_stride).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if wrap_model is not None and prepare is not None:
        raise ValueError("give at most one of wrap_model and prepare")
    if prepare is None:
        prepare = Plain(wrap_model)
    # Augmentation draws: a different stream per rank, on the device.
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + rank + 1)

    losses: list[dict[str, float]] = []
    train_started = time.perf_counter()
    if steps > 0:
        loader = data.make_loader(
            train_dir, batch_size, rank, world_size, seed, num_workers, labels=(LABEL,),
            max_images=train_count,
        )  # fmt: skip

        def pairs() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for batch in loader:
                x = depth_to_unit(
                    batch["image"].to(device, non_blocking=True), "far"
                )  # (B, 1, S, S)
                joints = _joints(batch, device)  # (B, 14, 2)
                matrix = random_affine(
                    x.shape[0], crop, size, gen, max_degrees=max_degrees,
                    max_shift=max_shift_frac * crop, scale_jitter=scale_jitter, device=device,
                )  # fmt: skip
                target = render(transform_points(matrix, joints), heat, stem_stride, sigma)
                yield warp(x, matrix, size), target  # (B, 1, N, N), (B, 14, h, w)

        with loader:
            losses = fit(
                model, opt, pairs(), heatmap_loss, steps, prepare=prepare, rank=rank,
                log_every=log_every, progress=progress,
            )  # fmt: skip
    train_seconds = time.perf_counter() - train_started

    model.eval()
    scale = PAPER_SIZE / crop
    reports = []
    for test_dir, test_manifest in zip(test_dirs, test_manifests, strict=True):
        test_started = time.perf_counter()
        within = WithinPixels(len(EVAL_JOINTS), thresholds, scale).to(device)
        mean_error = MeanJointError(len(EVAL_JOINTS), scale).to(device)
        loader = data.make_epoch_loader(
            test_dir, test_batch_size or batch_size, rank, world_size, seed, num_workers,
            labels=(LABEL,), shuffle=False, remainder="split",
        )  # fmt: skip
        with loader, torch.no_grad():
            for batch in loader:
                x = depth_to_unit(batch["image"].to(device, non_blocking=True), "far")
                to_net = resize_affine(x.shape[0], crop, size, device)  # (B, 2, 3)
                heatmaps = model(warp(x, to_net, size) if size != crop else x)[:, -1]
                pred = decode_heatmaps(heatmaps, stem_stride, decode)  # (B, 14, 2) net pixels
                if size != crop:
                    pred = transform_points(invert(to_net), pred)  # crop pixels
                joints = _joints(batch, device)
                within.update(pred, joints)
                mean_error.update(pred, joints)
        pct = {k: v.tolist() for k, v in within.compute().items()}  # syncs every rank
        error = float(mean_error.compute())
        per_joint_error = mean_error.per_joint().tolist()
        with mean_error.sync_context():
            tested = int(mean_error.count)
        by_d = dict(zip(within.thresholds, pct["max"], strict=True))
        by_d_mean = dict(zip(within.thresholds, pct["mean"], strict=True))
        reports.append({
            "task": "hands",
            "metric": "% of test frames whose largest 2-D error over the 14 evaluated joints "
                      f"is <= d px at the {PAPER_SIZE}x{PAPER_SIZE} crop scale (Tompson et "
                      "al. 2014); *_mean_*: mean over the joints instead; per joint: each",
            "thresholds_px": [int(t) if t.is_integer() else t for t in within.thresholds],
            "within_pct": pct["max"],  # the headline curve (Figure 9), as `evaluate plot` reads
            "within_max_pct": pct["max"],
            "within_mean_pct": pct["mean"],
            "within_per_joint_pct": {
                str(j): [row[i] for row in pct["per_joint"]] for i, j in enumerate(EVAL_JOINTS)
            },
            "within_5px_pct": by_d.get(float(HEADLINE_PX)),  # the paper's Table 4 number
            "within_5px_mean_pct": by_d_mean.get(float(HEADLINE_PX)),
            "mean_joint_error_px": error,
            "mean_joint_error_per_joint_px": dict(
                zip(map(str, EVAL_JOINTS), per_joint_error, strict=True)
            ),
            "pixel_scale": scale,
            "crop_size": crop,
            "eval_joints": list(EVAL_JOINTS),
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
                "optimizer": "adam",
                "seed": seed,
                "width": width,
                "stacks": stacks,
                "depth": depth,
                "stem_stride": stem_stride,
                "input_size": size,
                "heatmap_size": heat,
                "sigma": sigma,
                "max_degrees": max_degrees,
                "max_shift_frac": max_shift_frac,
                "scale_jitter": scale_jitter,
                "decode": decode,
                "train_count": train_count,
                "num_workers": num_workers,
                "world_size": world_size,
                "device": device.type,
                "loss": "heatmap MSE per stack (mean over joints and pixels), summed over stacks",
            },
            "train_loss": losses,
            "seconds": {
                "train": train_seconds,
                "test": time.perf_counter() - test_started,
                "total": time.perf_counter() - started,
            },
            "machine": {"platform": platform.platform(), "torch": torch.__version__},
        })  # fmt: skip
    return reports


# --- reporting ------------------------------------------------------------------------------


def plot_within_pixels(
    curves: dict[str, list[float]],
    path: str | Path,
    thresholds: Sequence[float] = THRESHOLDS_PX,
    title: str = "Hand pose: frames within distance",
) -> Path:
    """Figure 9's plot: % of test frames whose joints are all within d px, one curve per run.

    ``curves`` maps a run's name to its ``within_max_pct`` (one value per threshold).
    """
    return plot_cumulative(
        curves,
        path,
        thresholds,
        title,
        xlabel=f"distance d (px, {PAPER_SIZE}x{PAPER_SIZE} crop)",
        ylabel="% of frames with every joint within d",
    )


def write_hands_report(
    report: dict[str, Any], out_dir: str | Path, name: str | None = None
) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    label = name or Path(report["train_dir"]).name
    plot_within_pixels({label: report["within_max_pct"]}, out / "within_pixels.png")


# --- command line (a sub-command of distsim.evaluate) ---------------------------------------


def add_hands_parser(tasks: Any) -> None:
    """Add `hands` to ``distsim.evaluate``'s sub-commands."""
    from distsim.evaluate import _positive_float
    from shards.cliutil import non_negative_int, positive_int

    h = tasks.add_parser(
        "hands",
        help="train the paper's hand-pose estimator, test it on labelled real depth crops",
        description="Train a stacked hourglass (2 stacks, 14 joints) on --train's hand crops, "
        "test it on --test, and write metrics.json and within_pixels.png to --out.",
    )
    h.add_argument("--train", type=Path, required=True, help="hand shard set (joints_uvd)")
    h.add_argument("--test", type=Path, required=True, help="hand shard set (real, labelled)")
    h.add_argument("--out", type=Path, required=True, help="directory for the report")
    length = h.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=non_negative_int, help="training steps (0: untrained)")
    length.add_argument(
        "--epochs", type=_positive_float, help="steps worth this many passes over --train"
    )
    h.add_argument("--batch-size", type=positive_int, default=32, help="per rank (32)")
    h.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam's (0.001)")
    h.add_argument("--seed", type=non_negative_int, default=0, help="init, data, augmentation")
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
    h.add_argument("--num-workers", type=non_negative_int, default=1, help="per rank (1)")
    h.add_argument(
        "--train-count", type=positive_int, default=None, help="use only the first N crops"
    )
    h.add_argument("--log-every", type=positive_int, default=100, help="steps (100)")
    add_deepspeed_arg(h)
    h.add_argument("--name", default=None, help="curve label in the plot (--train's name)")


def run_hands(args: Any, prog: str) -> int:
    """`evaluate hands`: 0, or 2 with one line on stderr for a bad input."""

    def train(accelerator: Any, prepare: Any) -> dict[str, Any]:
        return train_and_test_hands(
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
            width=args.width,
            stacks=args.stacks,
            depth=args.depth,
            stem_stride=args.stem_stride,
            input_size=args.input_size,
            sigma=args.sigma,
            max_degrees=args.max_degrees,
            max_shift_frac=args.max_shift,
            scale_jitter=args.scale_jitter,
            decode=args.decode,
            num_workers=args.num_workers,
            train_count=args.train_count,
            prepare=prepare,
            log_every=args.log_every,
            progress=True,
        )

    def summary(report: dict[str, Any]) -> str:
        return (
            f"mean joint error {report['mean_joint_error_px']:.2f} px, "
            f"{report['within_5px_pct']:.1f}% of frames within 5 px "
            f"({PAPER_SIZE}x{PAPER_SIZE} scale), {report['counts']['test_images']} test crops"
        )

    return run_estimator(args, prog, open_hand_shards, train, write_hands_report, summary)
