"""Hand-pose metrics that stay correct when evaluation is split across processes.

Every state is a fixed-size sum reduced with ``dist_reduce_fx="sum"`` (as the gaze metrics'
are, ``distsim.gaze.metrics``): one small all-reduce per state whatever the test set's size.
``compute()`` syncs across the default process group when one is initialised, so every rank
must call it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torchmetrics import Metric

__all__ = ["MeanJointError", "WithinPixels", "joint_errors_px"]


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
