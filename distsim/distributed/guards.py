"""What keeps a multi-rank run honest, independent of Accelerate.

- ``check_rank_consistency``: every rank must hold bitwise the same R and D (DDP all-reduces
  gradients, so any difference is a bug: a rank-dependent branch, a missed sync). Checksums
  of every tensor are all-gathered and compared; a mismatch names the tensors.
- ``CommCounter``: counts the bytes this rank hands to collectives (DDP's gradient buckets
  through a comm hook, and the history-buffer all-gather), so the per-step communication is
  measured rather than assumed.

Process groups and ranks come in as arguments; nothing here reads the launch environment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks


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
