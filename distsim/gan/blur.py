"""The one Gaussian blur: separable, "same" size, any padding mode F.pad takes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, sigma: float, padding: str = "reflect") -> torch.Tensor:
    """Blur each channel of (B, C, H, W) by a Gaussian of `sigma` px, truncated at round(3
    sigma) px (at least 1): (B, C, H, W)."""
    if not sigma > 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma}")
    radius = max(1, round(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t * t) / (2 * sigma * sigma))
    k = k / k.sum()  # (2r + 1,)
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode=padding)  # (B, C, H + 2r, W + 2r)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H
