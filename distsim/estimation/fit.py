"""The estimators' training loop, and the hook that decides how it runs.

``fit`` trains any estimator (the gaze CNN, the hand-pose hourglass) for a number of steps on an
iterator of ``(input, target)`` batches and a per-sample loss. It does not know about ranks,
wrappers or engines: a ``Prepare`` hook turns the bare model and its optimizer into what the
loop calls, and afterwards puts the trained float32 weights back into the bare model, which is
what every caller tests and saves. Two hooks exist:

- ``Plain()``: the model itself (one process), or ``Plain(wrap)`` with ``wrap`` e.g. DDP or
  Accelerate's ``prepare_model`` (N processes);
- ``distsim.estimation.deepspeed.DeepSpeed``: Accelerate's DeepSpeed plugin (ZeRO, bf16 on
  GPUs), chosen with ``evaluate --deepspeed CONFIG``.

So any estimator trained through ``fit`` gets DeepSpeed with no code of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

import torch
import torch.distributed as dist
from torch import nn

from shards.progress import Progress


class Prepared(NamedTuple):
    """What the loop calls, made by a ``Prepare`` hook from the bare model and optimizer."""

    model: nn.Module  # called on each batch: the bare model, a DDP wrapper, a DeepSpeed engine
    optimizer: torch.optim.Optimizer  # zero_grad() and step() once per batch
    backward: Callable[[torch.Tensor], None]  # loss -> gradients (an engine also steps here)
    finish: Callable[[], None]  # after the last step: the bare model holds float32 weights
    input_dtype: torch.dtype = torch.float32  # the dtype the model's first layer takes


class Prepare(Protocol):
    # What the report records under config.deepspeed: None, or the DeepSpeed settings used.
    deepspeed: dict[str, Any] | None

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> Prepared: ...


def _backward(loss: torch.Tensor) -> None:
    loss.backward()


def _nothing() -> None:
    pass


class Plain:
    """Train the model itself, or what ``wrap`` makes of it (DDP); the optimizer as it is."""

    deepspeed = None

    def __init__(self, wrap: Callable[[nn.Module], nn.Module] | None = None) -> None:
        self.wrap = wrap

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> Prepared:
        trained = self.wrap(model) if self.wrap is not None else model
        return Prepared(trained, optimizer, _backward, _nothing)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    *,
    prepare: Prepare | None = None,
    rank: int = 0,
    log_every: int = 100,
    progress: bool = False,
    desc: str = "train estimator",
) -> list[dict[str, float]]:
    """Train ``model`` for ``steps`` batches: ``loss_fn(pred, target)`` gives per-sample losses
    (B,), reduced here by their mean. ``batches`` yields ``(input, target)`` on the device.

    Returns the mean loss over each ``log_every`` steps (over all ranks when a process group is
    up), as ``{"step", "loss"}``. On return ``model`` (the bare module, whatever ``prepare``
    wrapped it in) holds the trained float32 weights. ``prepare`` defaults to ``Plain()``.
    """
    losses: list[dict[str, float]] = []
    if steps <= 0:
        return losses
    run = (prepare or Plain())(model, optimizer)
    run.model.train()
    loss_sum: torch.Tensor | None = None
    since = 0
    # Progress, not a bare tqdm: on a log file (SLURM) it still prints how far along it is.
    bar = Progress(steps, desc, unit="steps", enabled=progress and rank == 0)
    for step in range(1, steps + 1):
        x, y = next(batches)
        loss = loss_fn(run.model(x.to(run.input_dtype)).float(), y).mean()
        run.optimizer.zero_grad(set_to_none=True)
        run.backward(loss)
        run.optimizer.step()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        since += 1
        if step % log_every == 0 or step == steps:
            mean = float(mean_over_ranks(loss_sum / since))  # the one host sync
            if not math.isfinite(mean):
                raise FloatingPointError(f"non-finite training loss at step {step}")
            losses.append({"step": step, "loss": mean})
            bar.set_postfix({"loss": f"{mean:.4f}"})
            loss_sum, since = None, 0
        bar.update(1)
    bar.close()
    run.finish()
    return losses
