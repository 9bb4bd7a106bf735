"""The estimator pipeline both workloads share: train an estimator on one labelled shard set,
test it on others, and report (the paper's measure of a refiner, sections 4.1-4.2).

A ``Task`` (``distsim.gaze.task``, ``distsim.hands.task``) says what is workload-specific:
which shard sets it can use, the network, its loss and training batches (augmentation
included), its test metrics and plot. Everything else is here, once: the checks of the
arguments, the training itself (``distsim.estimation.fit``, under DDP or DeepSpeed through its
``prepare`` hook), testing every image of each test set exactly once over all ranks, and the
layout of the report written to metrics.json.

Training draws batches from the infinite resampled stream (``distsim.data.make_loader``) and
counts steps; ``epochs=E`` means as many steps as E passes over the training images would take
(E * N / global batch, rounded up), sampled with replacement. Testing uses the bare float32
estimator whatever trained it, and the metrics are sums all-reduced by torchmetrics.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from distsim import data
from distsim.estimation.fit import Plain, Prepare, fit
from shards.cliutil import written
from shards.format import Manifest


class TestMetrics(Protocol):
    def update(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> None: ...

    def report(self) -> dict[str, Any]:
        """The metrics' part of the report (a collective: every rank calls it)."""
        ...


class Task(Protocol):
    """What one workload's estimator needs; instances hold its own settings."""

    name: str  # "gaze" or "hands": the report's "task"
    label: str  # the manifest label the estimator learns
    plot_file: str  # the report's curve, beside metrics.json

    def check(self, directory: str | Path, manifest: Manifest) -> None:
        """ValueError (one line) unless the estimator can use this shard set."""
        ...

    def check_sets(self, train: Manifest, tests: Sequence[tuple[Path, Manifest]],
                   train_dir: Path) -> None:  # fmt: skip
        """ValueError (one line) unless the training and test sets fit together."""
        ...

    def build(self) -> tuple[nn.Module, torch.optim.Optimizer]: ...

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample losses (B,)."""
        ...

    def batches(self, loader: Iterator[dict[str, torch.Tensor]], device: torch.device,
                rank: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
        """(input, target) training pairs on the device, augmented as the task trains."""
        ...

    def metrics(self, device: torch.device) -> TestMetrics: ...

    def config(self) -> dict[str, Any]:
        """The task's settings, for the report's "config"."""
        ...

    def summary(self, report: dict[str, Any]) -> str:
        """One line of a report's headline numbers."""
        ...

    def plot(
        self,
        curves: dict[str, list[float]],
        path: str | Path,
        thresholds: Sequence[float] | None = None,
        title: str | None = None,
    ) -> Path: ...


def open_set(task: Task, directory: str | Path) -> Manifest:
    """The manifest of a shard set `task`'s estimator can use; ValueError with one line."""
    manifest = data.open_shards(directory)  # ShardError (a ValueError) for a missing dir etc.
    if task.label not in manifest.labels:
        raise ValueError(f"{directory}: no {task.label} labels")
    task.check(directory, manifest)
    return manifest


def steps_for_epochs(epochs: float, num_images: int, batch_size: int, world_size: int) -> int:
    """Steps that draw about ``epochs`` passes over ``num_images`` at the global batch."""
    return max(1, math.ceil(epochs * num_images / (batch_size * world_size)))


def say(rank: int, text: str, progress: bool = True, prog: str = "distsim.evaluate") -> None:
    if rank == 0 and progress:
        print(f"{prog}: {text}", file=sys.stderr, flush=True)


def train_and_test_many(
    task: Task,
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
    num_workers: int = 1,
    train_count: int | None = None,
    test_batch_size: int | None = None,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    prepare: Prepare | None = None,
    log_every: int = 100,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train one estimator of `task` on ``train_dir`` and test it on each of ``test_dirs``
    (one training, one report per test set: the synthetic baseline of several real domains
    costs one training). Returns the reports (the same on all ranks), in their order.

    Give exactly one of ``steps`` (0 tests the untrained estimator) and ``epochs``. Each of
    ``world_size`` ranks calls this with its ``rank``; with a process group initialised, the
    metrics and the logged loss are reduced over it. ``wrap_model`` (e.g. Accelerate's
    ``prepare_model``) wraps the estimator for training, for DDP; ``prepare`` (instead; e.g.
    ``distsim.estimation.deepspeed.DeepSpeed``) is the general hook of
    ``distsim.estimation.fit.fit``. ``batch_size`` is per rank.
    """
    started = time.perf_counter()
    device = torch.device(device)
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps and epochs")
    if (steps is not None and steps < 0) or (epochs is not None and not epochs > 0):
        raise ValueError(f"need steps >= 0 or epochs > 0, got steps={steps}, epochs={epochs}")
    if batch_size < 1 or not lr > 0:
        raise ValueError(f"need batch_size >= 1 and lr > 0, got {batch_size}, {lr}")
    if not test_dirs:
        raise ValueError("give at least one test set")
    if wrap_model is not None and prepare is not None:
        raise ValueError("give at most one of wrap_model and prepare")
    if prepare is None:
        prepare = Plain(wrap_model)
    train_manifest = open_set(task, train_dir)
    tests = [(Path(d), open_set(task, d)) for d in test_dirs]
    task.check_sets(train_manifest, tests, Path(train_dir))
    if train_manifest.labels_for_evaluation_only:
        # Allowed: the paper's "real" rows train on real data as the upper bound a refiner
        # is measured against. But it is not a sim-to-real result, so say so.
        say(rank, f"note: {train_dir} has labels for evaluation only (a real domain); training "
            "on it measures the real-data upper bound, not a synthetic or refined set")  # fmt: skip
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
    model, optimizer = task.build()
    model = model.to(device)
    losses: list[dict[str, float]] = []
    train_started = time.perf_counter()
    if steps > 0:
        loader = data.make_loader(
            train_dir, batch_size, rank, world_size, seed, num_workers, labels=(task.label,),
            max_images=train_count,
        )  # fmt: skip
        say(rank, f"training the {task.name} estimator on {used:,} images of {train_dir}",
            progress)  # fmt: skip
        with loader:
            losses = fit(
                model, optimizer, task.batches(iter(loader), device, rank, seed), task.loss,
                steps, prepare=prepare, rank=rank, log_every=log_every, progress=progress,
            )  # fmt: skip
    train_seconds = time.perf_counter() - train_started

    model.eval()
    reports = []
    for test_dir, manifest in tests:
        say(rank, f"testing on the {manifest.count:,} images of {test_dir}", progress)
        test_started = time.perf_counter()
        metrics = task.metrics(device)
        loader = data.make_epoch_loader(
            test_dir, test_batch_size or batch_size, rank, world_size, seed, num_workers,
            labels=(task.label,), shuffle=False, remainder="split",
        )  # fmt: skip
        with loader, torch.no_grad():
            for batch in loader:
                metrics.update(model, batch)
        results = metrics.report()  # syncs every rank
        tested = results.pop("test_images")
        reports.append({
            "task": task.name,
            **results,
            "train_dir": str(train_dir),
            "test_dir": str(test_dir),
            "train_labels_for_evaluation_only": train_manifest.labels_for_evaluation_only,
            "test_source": manifest.source,
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
                "seed": seed,
                "train_count": train_count,
                "num_workers": num_workers,
                "world_size": world_size,
                "device": device.type,
                "deepspeed": prepare.deepspeed,
                **task.config(),
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


def write_report(
    task: Task, report: dict[str, Any], out_dir: str | Path, name: str | None = None
) -> None:
    """OUT/metrics.json and the task's curve beside it, labelled `name` (default: the
    training set's directory name)."""
    out = Path(out_dir)
    with written(out / "metrics.json"):
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    label = name or Path(report["train_dir"]).name
    with written(out / task.plot_file):
        task.plot({label: report["within_pct"]}, out / task.plot_file)
