"""What keeps a multi-rank run honest and stoppable, independent of Accelerate.

- ``StopRequest``: SIGTERM or SIGUSR1 (SLURM preemption, ``scancel``) sets a flag; every step
  the ranks agree on it over a small CPU (gloo) group, so all of them stop after the same step
  even when the signal reached only some of them, without a device sync in the hot step and
  with the agreement's latency hidden behind the next step.
- ``check_rank_consistency``: every rank must hold bitwise the same R and D (DDP all-reduces
  gradients, so any difference is a bug: a rank-dependent branch, a missed sync). Checksums
  of every tensor are all-gathered and compared; a mismatch names the tensors.
- ``CommCounter``: counts the bytes this rank hands to collectives (DDP's gradient buckets
  through a comm hook, and the history-buffer all-gather), so the per-step communication is
  measured rather than assumed.

Process groups and ranks come in as arguments; nothing here reads the launch environment.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

# SIGINT is Ctrl-C: the first one saves and stops like SIGTERM, a second aborts at once.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequest:
    """Remembers the first stop signal; ``poll()`` gives every rank the same answer.

    With several ranks, each ``poll()`` waits for the all-reduce started by the previous
    poll and starts the next one asynchronously, so its latency (many hops of TCP at hundreds
    of ranks) hides behind one training step instead of adding to every step. The price: a
    signal is acted on one step later, still within the "stop within one step" budget.
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        # group: a gloo group over all ranks (None: single process, nothing to agree on).
        self.group = group
        self.signum = 0
        self._previous: dict[int, Any] = {}
        self._flag = torch.zeros(1, dtype=torch.int64)
        self._work: dist.Work | None = None
        self._interrupted = False

    def install(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._work is not None:
            self._work.wait()  # never leave a collective in flight
            self._work = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self._interrupted:
            raise KeyboardInterrupt  # the second Ctrl-C: no checkpoint, stop now
        if signum == signal.SIGINT:
            self._interrupted = True
            # os.write, not print: a signal handler may run in the middle of another print.
            os.write(2, b"\nstopping after this step to save a checkpoint; Ctrl-C again "
                        b"aborts without one\n")  # fmt: skip
        if not self.signum:
            self.signum = signum

    def poll(self) -> int:
        """The signal some rank had received by the previous poll (0: none). A collective:
        every rank must call it once per step."""
        if self.group is None:
            return self.signum
        agreed = 0
        if self._work is not None:
            self._work.wait()
            agreed = int(self._flag.item())
        self._flag = torch.tensor([self.signum], dtype=torch.int64)
        self._work = dist.all_reduce(
            self._flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True
        )
        return agreed


def tensor_checksums(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, 2) float64 per tensor: its sum and a position-weighted sum (catches permutations)."""
    rows = []
    for t in tensors.values():
        flat = t.detach().reshape(-1).double()
        weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
        rows.append(torch.stack([flat.sum(), (flat * weights.reciprocal()).sum()]))
    return torch.stack(rows).cpu() if rows else torch.zeros(0, 2, dtype=torch.float64)


def check_rank_consistency(
    tensors: dict[str, torch.Tensor], world_size: int, group: dist.ProcessGroup | None = None
) -> None:
    """Raise RuntimeError unless every rank holds the same values of `tensors`.

    A collective over `group` (gloo: checksums travel on the CPU). Every rank reaches the
    same verdict, so all of them raise together rather than leaving one hanging.
    """
    if world_size == 1:
        return
    local = tensor_checksums(tensors)  # (N, 2)
    everyone = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(everyone, local, group=group)
    names = list(tensors)
    differ = sorted(
        {names[i] for other in everyone[1:] for i in torch.nonzero((other != everyone[0]).any(1))}
    )
    if differ:
        shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise RuntimeError(f"ranks hold different values of {len(differ)} tensor(s): {shown}")


def named_state(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


@dataclass
class CommCounter:
    """Bytes this rank hands to collectives, by label, since the last ``pop``."""

    bytes: dict[str, int] = field(default_factory=dict)

    def add(self, label: str, nbytes: int) -> None:
        self.bytes[label] = self.bytes.get(label, 0) + int(nbytes)

    def pop(self) -> dict[str, int]:
        out, self.bytes = self.bytes, {}
        return out

    def counted(
        self, label: str, gather: Callable[[torch.Tensor], torch.Tensor]
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """`gather` (an all-gather along dim 0), counting the bytes received from others."""

        def counted_gather(x: torch.Tensor) -> torch.Tensor:
            out = gather(x)
            self.add(label, (out.numel() - x.numel()) * out.element_size())
            return out

        return counted_gather

    def ddp_hook(self, label: str) -> Any:
        """A DDP comm hook that counts each gradient bucket, then all-reduces it as DDP would."""

        # Unannotated on purpose: DDP rejects a hook whose annotations are not the real types,
        # and this module's annotations are strings (from __future__ import annotations).
        def hook(state, bucket):  # type: ignore[no-untyped-def]
            buffer = bucket.buffer()
            self.add(label, buffer.numel() * buffer.element_size())
            return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]

        return hook


def parameter_bytes(params: Iterable[torch.nn.Parameter]) -> int:
    return sum(p.numel() * p.element_size() for p in params if p.requires_grad)
