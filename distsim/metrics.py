"""Gaze and hand-pose metrics that stay correct when evaluation is split across processes.

Every state is a fixed-size sum (errors, hits, samples) reduced with ``dist_reduce_fx="sum"``:
syncing costs one small all-reduce per state whatever the test set's size, and ranks may hold
different numbers of samples (an exact split of N images over W ranks rarely divides evenly).
``compute()`` syncs across the default process group when one is initialised, so every rank
must call it.

Angles follow ``shards.gaze.angular_error_deg``: atan2(|a x b|, a . b), accurate near 0 and 180
degrees where arccos(a . b) is not. Predictions need not be unit length; a zero-length (or
tiny) prediction has no direction and counts as 180 degrees off, never as a hit. Non-finite
predictions give NaN errors, so the mean turns NaN instead of hiding them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.nn import functional as F
from torchmetrics import Metric

__all__ = [
    "MeanAngularError",
    "MeanJointError",
    "WithinAngle",
    "WithinPixels",
    "angular_error_deg",
    "joint_errors_px",
]

# As in shards.gaze: norms below this mean "no direction".
_MIN_NORM = 1e-8


def angular_error_deg(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, 3), (N, 3) gaze vectors -> (N,) angle between them in degrees, in pred's float dtype.

    Either side may have any length; a (near) zero-length vector gives 180 degrees.
    """
    if pred.ndim != 2 or pred.shape[1] != 3 or pred.shape != target.shape:
        raise ValueError(
            f"pred and target must both have shape (N, 3), got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    dtype = pred.dtype if pred.is_floating_point() else torch.float32
    a, b = pred.to(dtype), target.to(dtype)
    na, nb = a.norm(dim=1), b.norm(dim=1)  # (N,)
    ua, ub = F.normalize(a, dim=1, eps=_MIN_NORM), F.normalize(b, dim=1, eps=_MIN_NORM)
    cross = torch.linalg.cross(ua, ub, dim=1).norm(dim=1)  # (N,)
    dot = (ua * ub).sum(dim=1)  # (N,)
    err = torch.rad2deg(torch.atan2(cross, dot))  # (N,)
    # atan2(0, 0) is 0: without this a zero prediction would score as perfect.
    degenerate = (na <= _MIN_NORM) | (nb <= _MIN_NORM)
    return torch.where(degenerate, torch.full_like(err, 180.0), err)


class MeanAngularError(Metric):
    """Mean angle, in degrees, between predicted and true gaze over every sample seen."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    error_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        # float64 sums: a million float32 errors summed in float32 lose ~1e-4 relative.
        self.add_state("error_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        err = angular_error_deg(pred.detach(), target)  # (N,)
        self.error_sum += err.sum(dtype=torch.float64)
        self.count += err.numel()

    def compute(self) -> torch.Tensor:
        # 0 / 0 = NaN for an empty test set: there is no mean to report.
        return (self.error_sum / self.count).float()


class WithinAngle(Metric):
    """Percentage of samples whose angular error is at most d degrees, for each threshold d.

    ``compute()`` -> (T,) float32 percentages in threshold order (the paper's Figure 7 curve;
    Table 2 reads it at 7 degrees). ``within <= d`` is inclusive; errors are continuous, so
    this differs from ``< d`` only on exact ties.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    hits: torch.Tensor
    count: torch.Tensor

    def __init__(self, thresholds: Iterable[float] = range(1, 21), **kwargs: object) -> None:
        super().__init__(**kwargs)
        values = [float(t) for t in thresholds]
        if not values:
            raise ValueError("WithinAngle needs at least one threshold")
        self.thresholds = values
        # A buffer-like constant, not a state: it is never synced or reset.
        self._thresholds = torch.tensor(values, dtype=torch.float32)  # (T,)
        self.add_state(
            "hits", torch.zeros(len(values), dtype=torch.int64), dist_reduce_fx="sum"
        )  # (T,)
        self.add_state("count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        err = angular_error_deg(pred.detach(), target).float()  # (N,)
        thresholds = self._thresholds.to(err.device)
        # NaN <= d is False: a non-finite prediction is never a hit.
        self.hits += (err[:, None] <= thresholds[None, :]).sum(dim=0)  # (T,)
        self.count += err.numel()

    def compute(self) -> torch.Tensor:
        return (100.0 * self.hits.double() / self.count).float()  # (T,)


# --- hand pose ------------------------------------------------------------------------------
#
# Errors are 2-D distances in pixels between predicted and true joint (u, v), multiplied by
# ``scale`` (``224 / S`` for S x S crops: the paper's numbers are at the 224 x 224 crop scale).
#
# "% of images within d pixels" (the paper's Table 4 and Figure 9) follows Tompson et al. 2014
# (NYU's authors; Figure 9 of the SimGAN paper is drawn after their Figure 13) and Taylor et al.
# 2012 / Oberweger et al. 2015's "worst joint" curves: a frame counts at d when its *largest*
# error over the evaluated joints is at most d, the strictest reading. ``WithinPixels`` also
# keeps the frames whose *mean* joint error is within d and, per joint, the frames where that
# joint is within d, which papers report as "average joint" and per-joint curves.


def joint_errors_px(pred: torch.Tensor, target: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """(N, J, >=2), (N, J, >=2) joints (u, v first) -> (N, J) 2-D distances times ``scale``.

    Non-finite predictions give NaN (never a hit, and a NaN mean).
    """
    if pred.ndim != 3 or pred.shape[2] < 2 or pred.shape[:2] != target.shape[:2]:
        raise ValueError(
            f"pred and target must have shape (N, J, >=2) with equal N and J, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    diff = pred[..., :2].double() - target[..., :2].double()  # (N, J, 2)
    return diff.square().sum(dim=2).sqrt() * scale  # (N, J) float64


class MeanJointError(Metric):
    """Mean 2-D joint error in (scaled) pixels over every joint of every frame seen.

    ``compute()`` -> scalar float32; ``per_joint()`` -> (J,) means per joint.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    error_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, num_joints: int, scale: float = 1.0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.num_joints, self.scale = num_joints, float(scale)
        self.add_state(
            "error_sum", torch.zeros(num_joints, dtype=torch.float64), dist_reduce_fx="sum"
        )  # (J,)
        self.add_state("count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        err = joint_errors_px(pred.detach(), target, self.scale)  # (N, J)
        if err.shape[1] != self.num_joints:
            raise ValueError(f"expected {self.num_joints} joints, got {err.shape[1]}")
        self.error_sum += err.sum(dim=0)
        self.count += err.shape[0]

    def compute(self) -> torch.Tensor:
        return (self.error_sum.sum() / (self.count * self.num_joints)).float()

    def per_joint(self) -> torch.Tensor:
        """(J,) mean error of each joint; syncs like ``compute`` (every rank must call it)."""
        with self.sync_context():
            return (self.error_sum / self.count).float()


class WithinPixels(Metric):
    """Percentage of frames within d (scaled) pixels, for each threshold d, three ways.

    ``compute()`` -> {"max": (T,), "mean": (T,), "per_joint": (T, J)} float32 percentages:
    frames whose largest joint error is <= d (the headline, see above), frames whose mean
    joint error is <= d, and for each joint the frames where it is <= d.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    hits_max: torch.Tensor
    hits_mean: torch.Tensor
    hits_joint: torch.Tensor
    count: torch.Tensor

    def __init__(
        self,
        num_joints: int,
        thresholds: Iterable[float] = range(21),
        scale: float = 1.0,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        values = [float(t) for t in thresholds]
        if not values:
            raise ValueError("WithinPixels needs at least one threshold")
        self.thresholds, self.num_joints, self.scale = values, num_joints, float(scale)
        self._thresholds = torch.tensor(values, dtype=torch.float64)  # (T,), not a state
        t, j = len(values), num_joints
        self.add_state("hits_max", torch.zeros(t, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("hits_mean", torch.zeros(t, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("hits_joint", torch.zeros(t, j, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        err = joint_errors_px(pred.detach(), target, self.scale)  # (N, J) float64
        if err.shape[1] != self.num_joints:
            raise ValueError(f"expected {self.num_joints} joints, got {err.shape[1]}")
        d = self._thresholds.to(err.device)  # (T,)
        worst = err.amax(dim=1)  # (N,); NaN propagates, and NaN <= d is False
        mean = err.mean(dim=1)  # (N,)
        self.hits_max += (worst[:, None] <= d).sum(dim=0)
        self.hits_mean += (mean[:, None] <= d).sum(dim=0)
        self.hits_joint += (err[:, None, :] <= d[None, :, None]).sum(dim=0)  # (T, J)
        self.count += err.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        def pct(hits: torch.Tensor) -> torch.Tensor:
            return (100.0 * hits.double() / self.count).float()

        return {
            "max": pct(self.hits_max),
            "mean": pct(self.hits_mean),
            "per_joint": pct(self.hits_joint),
        }
