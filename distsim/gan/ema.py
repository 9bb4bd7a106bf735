"""An exponential moving average of the refiner's weights (``--ema-halflife``).

A GAN's players never settle: the refiner's weights keep circling an equilibrium rather than
converging to it, so the refiner at any one step carries that step's overshoot. Averaging its
recent weights smooths the circling out, as NVlabs' training loops (StyleGAN, EDM) do for
their generators. The half-life is counted in refined images, so it means the same at any
batch size or world size; like EDM, it ramps up from zero (at most `rampup` times the images
seen so far), so the average does not remember the random initial weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, halflife_images: float, rampup: float = 0.05) -> None:
        if not halflife_images > 0:
            raise ValueError(f"EMA half-life must be > 0 images, got {halflife_images}")
        self.halflife = float(halflife_images)
        self.rampup = rampup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def beta(self, images_seen: int, batch_images: int) -> float:
        """Weight kept by the average in one update of `batch_images` images."""
        halflife = self.halflife
        if self.rampup > 0:
            halflife = min(halflife, images_seen * self.rampup)
        return 0.5 ** (batch_images / max(halflife, 1e-8))

    @torch.no_grad()
    def update(self, model: nn.Module, images_seen: int, batch_images: int) -> None:
        """Move the average towards `model` after an update that saw `batch_images` images
        (global), `images_seen` in all so far."""
        weight = 1.0 - self.beta(images_seen, batch_images)
        ema = [p for p in self.model.parameters()]
        now = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema, now, weight)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
