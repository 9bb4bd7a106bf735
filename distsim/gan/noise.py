"""The noise a refiner with noise inputs (``--refiner-noise``) is given, where it must be
reproducible: image i of a refined set always gets the same noise, whatever the batch, the
rank or the world size, so `refine` stays deterministic. Training draws its noise from a
generator instead (``distsim.gan.step``): there only the distribution matters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Mixes a run's seed with an image index into one 63-bit generator seed.
_STRIDE = 1_000_000_007


def indexed_noise(
    indices: Sequence[int] | torch.Tensor, shape: Sequence[int], seed: int
) -> torch.Tensor:
    """Standard normal noise of `shape` (k, H, W) per image index: (n, k, H, W) float32, CPU."""
    out = torch.empty((len(indices), *shape))
    gen = torch.Generator()
    for row, index in enumerate(torch.as_tensor(indices).tolist()):
        gen.manual_seed((seed * _STRIDE + int(index)) % (1 << 63))
        out[row] = torch.randn(tuple(shape), generator=gen)
    return out
