"""Training statistics kept on the device between log steps."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate import Accelerator

from distsim.distributed.launch import reduce_min


@dataclass
class _Sums:
    total: torch.Tensor  # (k,) sums of the stacked statistics
    count: int
    first_bad: torch.Tensor  # (k,) int64: first step each was non-finite, -1 if never


@dataclass
class Meter:
    """Sums of the steps' stacked statistics, kept on the device and read only at log
    intervals: one add per step, one collective per log.

    It also remembers, per statistic, the first step at which it was not finite, without a
    host sync: ``first_nonfinite`` reads that at log and checkpoint steps.
    """

    groups: dict[tuple[str, ...], _Sums] = field(default_factory=dict)

    def add(self, step: int, names: tuple[str, ...], values: torch.Tensor) -> None:
        sums = self.groups.get(names)
        if sums is None:
            never = torch.full(values.shape, -1, dtype=torch.int64, device=values.device)
            sums = self.groups[names] = _Sums(torch.zeros_like(values), 0, never)
        sums.total += values
        sums.count += 1
        sums.first_bad = torch.where(~torch.isfinite(values) & (sums.first_bad < 0),
                                     step, sums.first_bad)  # fmt: skip

    def first_nonfinite(self, accelerator: Accelerator) -> tuple[list[str], int] | None:
        """(statistics, step) of the earliest step with a non-finite value on any rank."""
        if not self.groups:
            return None
        names = [n for group in self.groups for n in group]  # the same order on every rank
        never = torch.iinfo(torch.int64).max
        steps = torch.cat([s.first_bad for s in self.groups.values()])
        steps = torch.where(steps < 0, never, steps)
        earliest = reduce_min(accelerator, steps).tolist()  # a host sync: interval steps only
        step = min(earliest)
        if step == never:
            return None
        bad = [n for n, s in zip(names, earliest, strict=True) if s == step]
        return list(dict.fromkeys(bad)), int(step)

    def pop(self, accelerator: Accelerator) -> dict[str, float]:
        """Mean of each statistic since the last pop, over steps and ranks."""
        if not self.groups:
            return {}
        groups = list(self.groups.items())
        local = torch.cat([s.total / s.count for _, s in groups])
        means = accelerator.reduce(local, reduction="mean").tolist()  # the one host sync
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        i = 0
        for names, s in groups:
            for name in names:
                sums[name] = sums.get(name, 0.0) + means[i] * s.count
                counts[name] = counts.get(name, 0) + s.count
                i += 1
        self.groups.clear()
        return {name: sums[name] / counts[name] for name in sorted(sums)}
