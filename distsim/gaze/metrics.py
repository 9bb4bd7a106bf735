"""Gaze metrics that stay correct when evaluation is split across processes.

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

__all__ = ["MeanAngularError", "WithinAngle", "angular_error_deg"]

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
