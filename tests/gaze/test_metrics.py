"""Gaze metrics: against shards.gaze's numpy reference, and across 2 gloo processes."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distsim.gaze.metrics import MeanAngularError, WithinAngle, angular_error_deg
from shards.gaze import angular_error_deg as angular_error_deg_np

THRESHOLDS = list(range(1, 21))
# Uneven split over 2 ranks, and a different number of update() calls on each.
RANK_BATCHES = ((0, 16, 32, 37), (37, 50, 57))


def _data(n: int = 57, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3) predictions of any length, errors spread over 0-40 degrees; (n, 3) unit targets."""
    g = torch.Generator().manual_seed(seed)
    target = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    noise = torch.randn(n, 3, generator=g) * torch.linspace(0.0, 0.7, n)[:, None]
    pred = (target + noise) * torch.empty(n, 1).uniform_(0.2, 5.0, generator=g)
    return pred, target


def _numpy_reference(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, list[float]]:
    err = angular_error_deg_np(pred.numpy(), target.numpy()).astype(np.float64)  # (N,)
    within = [100.0 * float((err <= d).mean()) for d in THRESHOLDS]
    return float(err.mean()), within


def test_angular_error_matches_numpy() -> None:
    pred, target = _data(200)
    # Near 0 and 180 degrees, where arccos(dot) would lose precision.
    pred[:2] = target[:2] + 1e-4
    pred[2] = -target[2] * 3
    want = torch.from_numpy(angular_error_deg_np(pred.numpy(), target.numpy()))
    torch.testing.assert_close(angular_error_deg(pred, target), want, atol=1e-4, rtol=1e-5)
    assert float(angular_error_deg(pred[2:3], target[2:3])) == pytest.approx(180.0)


def test_angular_error_shape_check() -> None:
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        angular_error_deg(torch.zeros(4, 2), torch.zeros(4, 2))


def test_single_process_matches_numpy() -> None:
    pred, target = _data()
    mean, within = MeanAngularError(), WithinAngle(THRESHOLDS)
    for lo, hi in ((0, 20), (20, 21), (21, 57)):
        mean.update(pred[lo:hi], target[lo:hi])
        within.update(pred[lo:hi], target[lo:hi])
    want_mean, want_within = _numpy_reference(pred, target)
    torch.testing.assert_close(mean.compute(), torch.tensor(want_mean), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(within.compute(), torch.tensor(want_within))
    pct = within.compute()
    assert pct.shape == (20,) and bool((pct[1:] >= pct[:-1]).all())
    assert 0 < float(pct[0]) < float(pct[-1]) <= 100  # the data spans the thresholds


def test_degenerate_predictions_never_count() -> None:
    target = torch.tensor([[0.0, 0.0, -1.0]] * 3)
    pred = torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, 0.0], [0.0, 0.0, -1e-12]])
    within = WithinAngle([1, 179])
    within.update(pred, target)
    # Zero-length predictions are 180 degrees off, not atan2(0, 0) = 0 (a perfect score).
    torch.testing.assert_close(within.compute(), torch.tensor([100 / 3, 100 / 3]))
    mean = MeanAngularError()
    mean.update(pred, target)
    torch.testing.assert_close(mean.compute(), torch.tensor(120.0))
    mean.update(torch.tensor([[float("nan"), 0.0, 1.0]]), target[:1])
    assert torch.isnan(mean.compute())  # loud, not hidden


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    # A forked child must not enter the parent's OpenMP pool (it can hang there), as in
    # DataLoader workers.
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        pred, target = _data()
        mean, within = MeanAngularError(), WithinAngle(THRESHOLDS)
        bounds = RANK_BATCHES[rank]
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            mean.update(pred[lo:hi], target[lo:hi])
            within.update(pred[lo:hi], target[lo:hi])
        result = {"mean": mean.compute(), "within": within.compute()}
        with mean.sync_context():
            result["count"] = mean.count.clone()
        result["local_count"] = mean.count.clone()  # unsynced again after compute
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_single_process(tmp_path: Path) -> None:
    world = 2
    mp.start_processes(
        _rank, args=(world, _free_port(), str(tmp_path)), nprocs=world, start_method="fork"
    )
    pred, target = _data()
    mean, within = MeanAngularError(), WithinAngle(THRESHOLDS)
    mean.update(pred, target)
    within.update(pred, target)
    want_mean, want_within = _numpy_reference(pred, target)
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["mean"], mean.compute())
        torch.testing.assert_close(got["within"], within.compute())
        torch.testing.assert_close(got["mean"], torch.tensor(want_mean), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(got["within"], torch.tensor(want_within))
        assert int(got["count"]) == 57
        bounds = RANK_BATCHES[rank]
        assert int(got["local_count"]) == bounds[-1] - bounds[0]
