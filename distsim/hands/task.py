"""`evaluate hands`: the paper's stacked hourglass (``distsim.hands.hourglass``) as a task of
the shared estimator pipeline (``distsim.estimation.pipeline``), and Figure 9's curve.

    python -m distsim.evaluate hands --train data/hands-syn --test data/hands-real-test \
        --out runs/hands-syn --steps 2000

Trained on labelled hand crops (synthetic, refined, or real as an upper bound), tested on
labelled real crops; the report gives the percentage of test frames within d pixels of the
truth for d = 0..20 at the 224 x 224 crop scale, and the mean joint error.

Choices the paper leaves open, and ours:
- Joints: the 14 evaluated NYU joints (``shards.depth.EVAL_JOINTS``), (u, v) in crop pixels.
- Input: ``distsim.data.depth.depth_to_unit(holes="far")`` (invalid pixels read as the far
  plane), warped to the network's side N: N = 256 for 224 crops, so that Newell's stride-4
  stem gives the paper's 64 x 64 heatmaps, and N = S otherwise (``default_input_size``);
  ``input_size`` and ``stem_stride`` choose others (e.g. stride 2 for 64 px CPU crops:
  32 x 32 heatmaps).
- Augmentation, training only: rotation U(-20, 20) degrees (the paper), a shifted window of
  up to 8% of the crop side per axis (the paper's "crops") and no scale jitter by default,
  nearest-neighbour sampling (``distsim.hands.augment``).
- Optimiser: Adam at lr 1e-3 (Newell used RMSprop at 2.5e-4 with batch 6 over days; Adam at
  1e-3 reaches a usable estimator in a few hundred CPU steps), batch 32 per rank.
- Predictions: ``decode_heatmaps`` of the last stack, Newell's quarter-pixel arg-max by
  default (``decode="parabola"`` for the log-parabola refinement), mapped back to crop pixels.
- Metric: ``distsim.hands.metrics.WithinPixels``: the headline is the fraction of frames whose
  *largest* error over the 14 joints is within d (Tompson et al. 2014, as the paper's Figure 9
  plots it); the mean-over-joints and per-joint fractions and the mean joint error are
  reported too. Errors in crop pixels are multiplied by 224 / S for S x S crops.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distsim.data.depth import depth_to_unit
from distsim.estimation import pipeline
from distsim.estimation.plots import plot_cumulative
from distsim.hands.augment import invert, random_affine, resize_affine, transform_points, warp
from distsim.hands.hourglass import DECODERS, StackedHourglass, decode_heatmaps, heatmap_loss
from distsim.hands.hourglass import render_heatmaps as render
from distsim.hands.metrics import MeanJointError, WithinPixels
from shards.depth import EVAL_JOINTS
from shards.format import Manifest

LABEL = "joints_uvd"
PAPER_SIZE = 224  # errors are reported at this crop scale
THRESHOLDS_PX = tuple(range(21))  # the x axis of the paper's Figure 9
HEADLINE_PX = 5  # the paper's Table 4 threshold
TITLE = "Hand pose: frames within distance"


def default_input_size(crop_size: int) -> int:
    """The network's input side for S x S crops: 256 for the paper's 224 (64 x 64 heatmaps
    with the stride-4 stem, as Newell's 256 input), the crop's own side otherwise."""
    return 256 if crop_size == PAPER_SIZE else crop_size


def joints(batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    uvd = batch[LABEL].to(device, non_blocking=True)  # (B, 36, 3)
    return uvd[:, list(EVAL_JOINTS), :2].float()  # (B, 14, 2) crop pixels


def plot_within_pixels(
    curves: dict[str, list[float]],
    path: str | Path,
    thresholds: Sequence[float] = THRESHOLDS_PX,
    title: str = TITLE,
) -> Path:
    """Figure 9's plot: % of test frames whose joints are all within d px, one curve per run.

    ``curves`` maps a run's name to its ``within_max_pct`` (one value per threshold).
    """
    return plot_cumulative(curves, path, thresholds, title,
                           xlabel=f"distance d (px, {PAPER_SIZE}x{PAPER_SIZE} crop)",
                           ylabel="% of frames with every joint within d")  # fmt: skip


class HandMetrics:
    """% of frames within d px (largest, mean and per-joint error) and the mean joint error,
    over every rank's test crops, at the 224 x 224 scale."""

    def __init__(self, task: HandTask, device: torch.device) -> None:
        self.task, self.device = task, device
        self.scale = PAPER_SIZE / task.crop
        self.within = WithinPixels(len(EVAL_JOINTS), task.thresholds, self.scale).to(device)
        self.mean_error = MeanJointError(len(EVAL_JOINTS), self.scale).to(device)

    def update(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
        t, device = self.task, self.device
        x = depth_to_unit(batch["image"].to(device, non_blocking=True), "far")  # (B, 1, S, S)
        to_net = resize_affine(x.shape[0], t.crop, t.size, device)  # (B, 2, 3)
        heatmaps = model(warp(x, to_net, t.size) if t.size != t.crop else x)[:, -1]
        pred = decode_heatmaps(heatmaps, t.stem_stride, t.decode)  # (B, 14, 2) net pixels
        if t.size != t.crop:
            pred = transform_points(invert(to_net), pred)  # crop pixels
        truth = joints(batch, device)
        self.within.update(pred, truth)
        self.mean_error.update(pred, truth)

    def report(self) -> dict[str, Any]:
        pct = {k: v.tolist() for k, v in self.within.compute().items()}  # syncs every rank
        error = float(self.mean_error.compute())
        per_joint_error = self.mean_error.per_joint().tolist()
        with self.mean_error.sync_context():
            tested = int(self.mean_error.count)
        by_d = dict(zip(self.within.thresholds, pct["max"], strict=True))
        by_d_mean = dict(zip(self.within.thresholds, pct["mean"], strict=True))
        return {
            "metric": "% of test frames whose largest 2-D error over the 14 evaluated joints "
                      f"is <= d px at the {PAPER_SIZE}x{PAPER_SIZE} crop scale (Tompson et "
                      "al. 2014); *_mean_*: mean over the joints instead; per joint: each",
            "thresholds_px": [int(t) if t.is_integer() else t for t in self.within.thresholds],
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
            "pixel_scale": self.scale,
            "crop_size": self.task.crop,
            "eval_joints": list(EVAL_JOINTS),
            "test_images": tested,
        }  # fmt: skip


@dataclass
class HandTask:
    """The stacked hourglass on 1xSxS uint16 depth crops with NYU joints (``shards.depth``)."""

    width: int = 256
    stacks: int = 2
    depth: int = 4
    stem_stride: int = 4
    input_size: int | None = None
    sigma: float = 1.0
    max_degrees: float = 20.0
    max_shift_frac: float = 0.08
    scale_jitter: float = 0.0
    decode: str = "quarter"
    lr: float = 1e-3
    thresholds: Sequence[float] = THRESHOLDS_PX

    name = "hands"
    label = LABEL
    plot_file = "within_pixels.png"

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"need sigma > 0, got {self.sigma}")
        if self.decode not in DECODERS:
            raise ValueError(f"decode must be one of {DECODERS}, got {self.decode!r}")
        if not 0 <= self.max_shift_frac < 0.5:
            raise ValueError(f"max_shift_frac must be in [0, 0.5), got {self.max_shift_frac}")
        self.crop = self.size = 0  # set by check_sets from the training set

    def check(self, directory: str | Path, manifest: Manifest) -> None:
        shape = tuple(manifest.labels[LABEL].shape)
        if shape != (36, 3):
            raise ValueError(f"{directory}: {LABEL} has shape {shape}, not (36, 3)")
        c, h, w = manifest.image_shape
        if c != 1 or h != w or manifest.image_dtype != "uint16":
            shape_text = "x".join(map(str, manifest.image_shape))
            raise ValueError(
                f"{directory}: images are {shape_text} {manifest.image_dtype}; the hand "
                "estimator needs 1xSxS uint16 depth crops (shards.depth)"
            )

    def check_sets(self, train: Manifest, tests: Sequence[tuple[Path, Manifest]],
                   train_dir: Path) -> None:  # fmt: skip
        self.crop = train.image_shape[-1]
        for d, m in tests:
            if m.image_shape[-1] != self.crop:
                raise ValueError(f"{d}: crops are {m.image_shape[-1]} px, {train_dir}'s "
                                 f"{self.crop} px")  # fmt: skip
        self.size = self.input_size or default_input_size(self.crop)
        if self.size % self.stem_stride:
            raise ValueError(
                f"input size {self.size} is not a multiple of the stem stride {self.stem_stride}"
            )

    def build(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        model = StackedHourglass(len(EVAL_JOINTS), self.stacks, self.width, self.depth,
                                 self.stem_stride)  # fmt: skip
        return model, torch.optim.Adam(model.parameters(), lr=self.lr)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return heatmap_loss(pred, target)

    def batches(self, loader: Iterator[dict[str, torch.Tensor]], device: torch.device,
                rank: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
        # Augmentation draws: a different stream per rank, on the device.
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + rank + 1)
        heat = self.size // self.stem_stride
        for batch in loader:
            codes = batch["image"].to(device, non_blocking=True)  # (B, 1, S, S)
            x = depth_to_unit(codes, "far")
            truth = joints(batch, device)  # (B, 14, 2)
            matrix = random_affine(
                x.shape[0], self.crop, self.size, gen, max_degrees=self.max_degrees,
                max_shift=self.max_shift_frac * self.crop, scale_jitter=self.scale_jitter,
                device=device,
            )  # fmt: skip
            target = render(transform_points(matrix, truth), heat, self.stem_stride, self.sigma)
            yield warp(x, matrix, self.size), target  # (B, 1, N, N), (B, 14, h, w)

    def metrics(self, device: torch.device) -> HandMetrics:
        return HandMetrics(self, device)

    def config(self) -> dict[str, Any]:
        return {
            "optimizer": "adam", "width": self.width, "stacks": self.stacks,
            "depth": self.depth, "stem_stride": self.stem_stride, "input_size": self.size,
            "heatmap_size": self.size // self.stem_stride, "sigma": self.sigma,
            "max_degrees": self.max_degrees, "max_shift_frac": self.max_shift_frac,
            "scale_jitter": self.scale_jitter, "decode": self.decode,
            "loss": "heatmap MSE per stack (mean over joints and pixels), summed over stacks",
        }  # fmt: skip

    def summary(self, report: dict[str, Any]) -> str:
        return (
            f"mean joint error {report['mean_joint_error_px']:.2f} px, "
            f"{report['within_5px_pct']:.1f}% of frames within 5 px "
            f"({PAPER_SIZE}x{PAPER_SIZE} scale), {report['counts']['test_images']} test crops"
        )

    def plot(
        self,
        curves: dict[str, list[float]],
        path: str | Path,
        thresholds: Sequence[float] | None = None,
        title: str | None = None,
    ) -> Path:
        return plot_within_pixels(curves, path, thresholds or self.thresholds, title or TITLE)


def train_and_test_many(
    train_dir: str | Path,
    test_dirs: Sequence[str | Path],
    *,
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
    lr: float = 1e-3,
    thresholds: Sequence[float] = THRESHOLDS_PX,
    batch_size: int = 32,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Train one stacked hourglass on ``train_dir``'s joints and test it on each of
    ``test_dirs``: the reports, in their order (``pipeline.train_and_test_many`` for the
    other arguments)."""
    task = HandTask(width, stacks, depth, stem_stride, input_size, sigma, max_degrees,
                    max_shift_frac, scale_jitter, decode, lr, thresholds)  # fmt: skip
    return pipeline.train_and_test_many(task, train_dir, test_dirs, lr=lr,
                                        batch_size=batch_size, **kwargs)  # fmt: skip


def train_and_test(train_dir: str | Path, test_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """``train_and_test_many`` with one test set: its report."""
    return train_and_test_many(train_dir, [test_dir], **kwargs)[0]
