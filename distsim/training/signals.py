"""Stopping a run on a signal: SIGTERM or SIGUSR1 (SLURM preemption, ``scancel``) and Ctrl-C.

``StopRequest`` remembers the first stop signal; every step the ranks agree on it over a small
CPU (gloo) group, so all of them stop after the same step even when the signal reached only
some of them, without a device sync in the hot step and with the agreement's latency hidden
behind the next step. The loop then saves a checkpoint and raises ``Preempted``.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist


class Preempted(Exception):
    """A stop signal arrived; every rank saved and stopped after the same step."""


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
