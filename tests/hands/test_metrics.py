"""Hand-pose metrics: against a numpy reference, and across 2 gloo processes."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distsim.hands.metrics import MeanJointError, WithinPixels, joint_errors_px

J = 14
N = 45
SCALE = 224 / 64
THRESHOLDS = list(range(21))
RANK_BATCHES = ((0, 10, 30), (30, 31, 45))  # uneven, different numbers of updates


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, J, 3) predictions with errors of 0-6 crop px (0-21 px at 224), (N, J, 3) truth."""
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(N, J, 3, generator=g) * 64
    noise = torch.randn(N, J, 3, generator=g) * torch.linspace(0.0, 3.0, N)[:, None, None]
    pred = target + noise
    pred[0] = target[0]  # a perfect frame: within 0 px
    return pred, target


def _numpy_reference(pred: torch.Tensor, target: torch.Tensor) -> dict[str, np.ndarray]:
    p, t = pred.numpy().astype(np.float64), target.numpy().astype(np.float64)
    err = np.sqrt(((p[..., :2] - t[..., :2]) ** 2).sum(-1)) * SCALE  # (N, J)
    d = np.array(THRESHOLDS, np.float64)
    return {
        "max": 100 * (err.max(1)[:, None] <= d).mean(0),
        "mean": 100 * (err.mean(1)[:, None] <= d).mean(0),
        "per_joint": 100 * (err[:, None, :] <= d[None, :, None]).mean(0),  # (T, J)
        "error": np.array(err.mean()),
        "error_per_joint": err.mean(0),
    }


def _check(got: dict[str, torch.Tensor], want: dict[str, np.ndarray]) -> None:
    for key, value in got.items():
        torch.testing.assert_close(value, torch.from_numpy(want[key]).float(), msg=key)


def _metrics() -> tuple[WithinPixels, MeanJointError]:
    return WithinPixels(J, THRESHOLDS, SCALE), MeanJointError(J, SCALE)


def _results(within: WithinPixels, mean: MeanJointError) -> dict[str, torch.Tensor]:
    return {**within.compute(), "error": mean.compute(), "error_per_joint": mean.per_joint()}


def test_single_process_matches_numpy() -> None:
    pred, target = _data()
    within, mean = _metrics()
    for lo, hi in ((0, 7), (7, 8), (8, N)):
        within.update(pred[lo:hi], target[lo:hi])
        mean.update(pred[lo:hi], target[lo:hi])
    want = _numpy_reference(pred, target)
    got = _results(within, mean)
    _check(got, want)
    assert got["max"].shape == (21,) and got["per_joint"].shape == (21, J)
    assert 0 < float(got["max"][0]) < float(got["max"][5]) < float(got["max"][-1])  # spans d
    # The largest error is the strictest: max <= per joint, and max <= mean.
    assert bool((got["max"][:, None] <= got["per_joint"] + 1e-4).all())
    assert bool((got["max"] <= got["mean"] + 1e-4).all())


def test_errors_use_uv_only_and_nan_never_counts() -> None:
    target = torch.zeros(2, J, 3)
    pred = torch.zeros(2, J, 3)
    pred[:, :, 0] = 3.0
    pred[:, :, 1] = 4.0
    pred[:, :, 2] = 1000.0  # depth is not part of a pixel error
    torch.testing.assert_close(
        joint_errors_px(pred, target, 2.0), torch.full((2, J), 10.0).double()
    )
    pred[1, 3, 0] = float("nan")
    within = WithinPixels(J, [10, 20], 2.0)
    within.update(pred, target)
    result = within.compute()
    torch.testing.assert_close(result["max"], torch.tensor([50.0, 50.0]))
    assert float(result["per_joint"][0, 3]) == 50.0 and float(result["per_joint"][0, 2]) == 100
    mean = MeanJointError(J, 2.0)
    mean.update(pred, target)
    assert torch.isnan(mean.compute())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        pred, target = _data()
        within, mean = _metrics()
        bounds = RANK_BATCHES[rank]
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            within.update(pred[lo:hi], target[lo:hi])
            mean.update(pred[lo:hi], target[lo:hi])
        result = _results(within, mean)
        with within.sync_context():
            result["count"] = within.count.clone()
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_single_process(tmp_path: Path) -> None:
    world = 2
    mp.start_processes(
        _rank, args=(world, _free_port(), str(tmp_path)), nprocs=world, start_method="fork"
    )
    pred, target = _data()
    within, mean = _metrics()
    within.update(pred, target)
    mean.update(pred, target)
    single = _results(within, mean)
    want = _numpy_reference(pred, target)
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert int(got.pop("count")) == N
        for key, value in single.items():
            torch.testing.assert_close(got[key], value, msg=key)
        _check(got, want)
