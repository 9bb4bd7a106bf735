"""The paper's hand-pose estimator: a stacked hourglass network (Newell et al. 2016).

Architecture and heatmap coding only: no ranks, devices, data or optimisers here. Input:
(B, 1, N, N) depth in [-1, 1] (``distsim.data.depth.depth_to_unit``, holes "far"); output:
(B, stacks, J, H, H) heatmaps, one set per stack, every one supervised (intermediate
supervision).

    stem (stride 4): conv7x7 s2 (w/4) -> BN, ReLU -> residual (w/2) -> maxpool2x2 ->
                     residual (w/2) -> residual (w)              # N -> N/4 = heatmap size
    per stack:       hourglass(depth d, w) -> residual (w) -> conv1x1 (w), BN, ReLU -> feature
                     feature -> conv1x1 (J) -> heatmaps of this stack
                     (not the last stack) x <- x + conv1x1(feature) + conv1x1(heatmaps)

The paper (Shrivastava et al. 2017, section 4.2): "a stacked hourglass net ... 2 hourglass
blocks, with an output heatmap of size 64x64", 14 joints. What it leaves open, and ours:

- Newell's residual module (pre-activation bottleneck BN-ReLU-conv1x1 (w/2), BN-ReLU-conv3x3
  (w/2), BN-ReLU-conv1x1 (w), plus the input, through a 1x1 convolution when widths differ),
  width ``width`` (Newell's 256) and hourglass depth ``depth`` (Newell's 4 downsamplings:
  64 -> 4). Hourglass down-sampling is max-pooling (floor), up-sampling nearest to the size of
  the skip branch, so any heatmap size works (56 for 224 input, 16 or 32 for CPU crops).
- ``stem_stride`` 4 is Newell's stem (a 256 input gives the paper's 64x64 heatmaps; the
  evaluation warps 224 crops to 256 for that, see ``distsim.evaluate_hands``); 2 and 1 keep
  more resolution for small CPU crops (e.g. 64 px crops with 32x32 heatmaps), at more cost.
- Heatmap coordinates: heatmap cell i covers input pixels [s i, s i + s) for stride s, so a
  point at input pixel u (pixel centres at integers) is at (u + 0.5) / s - 0.5 on the heatmap
  (the align_corners=False convention); ``render_heatmaps`` and ``decode_heatmaps`` share it.
- Targets: 2-D Gaussians of peak 1 and ``sigma`` 1 heatmap pixel (Newell's), loss: mean
  squared error per stack over joints and pixels, summed over stacks (``heatmap_loss``).
- Decoding: Newell's arg-max with a quarter-pixel step towards the higher neighbour on each
  axis ("quarter", the default); "parabola" fits a parabola to the log heatmap around the
  arg-max on each axis instead, exact for a Gaussian target (Zhang et al. 2020, DARK).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "DECODERS",
    "Hourglass",
    "Residual",
    "StackedHourglass",
    "decode_heatmaps",
    "heatmap_loss",
    "render_heatmaps",
]

DECODERS = ("quarter", "parabola")
STEM_STRIDES = (1, 2, 4)


class Residual(nn.Module):
    """Newell's bottleneck residual module: (B, c_in, H, W) -> (B, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        mid = max(1, c_out // 2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in),
            nn.ReLU(),
            nn.Conv2d(c_in, mid, 1),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, c_out, 1),
        )
        self.skip: nn.Module = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class Hourglass(nn.Module):
    """One hourglass of ``depth`` down-samplings: (B, w, H, W) -> (B, w, H, W)."""

    def __init__(self, depth: int, width: int) -> None:
        super().__init__()
        self.skip = Residual(width, width)
        self.down = Residual(width, width)
        self.inner: nn.Module = Hourglass(depth - 1, width) if depth > 1 else Residual(width, width)
        self.up = Residual(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(x)  # (B, w, H, W)
        h = self.down(F.max_pool2d(x, 2))  # (B, w, H // 2, W // 2)
        h = self.up(self.inner(h))
        return skip + F.interpolate(h, size=skip.shape[-2:], mode="nearest")


class StackedHourglass(nn.Module):
    """(B, 1, N, N) depth in [-1, 1] -> (B, stacks, joints, N / s, N / s) heatmaps."""

    def __init__(
        self,
        joints: int = 14,
        stacks: int = 2,
        width: int = 256,
        depth: int = 4,
        stem_stride: int = 4,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if stacks < 1 or depth < 1 or joints < 1:
            raise ValueError(f"need stacks, depth, joints >= 1, got {stacks}, {depth}, {joints}")
        if width < 4 or width % 4:
            raise ValueError(f"width must be a multiple of 4 and >= 4, got {width}")
        if stem_stride not in STEM_STRIDES:
            raise ValueError(f"stem_stride must be one of {STEM_STRIDES}, got {stem_stride}")
        self.stacks, self.joints, self.stem_stride = stacks, joints, stem_stride
        first = nn.Sequential(
            nn.Conv2d(in_channels, width // 4, 7, stride=1 if stem_stride == 1 else 2, padding=3),
            nn.BatchNorm2d(width // 4),
            nn.ReLU(),
            Residual(width // 4, width // 2),
        )
        pool: nn.Module = nn.MaxPool2d(2) if stem_stride == 4 else nn.Identity()
        self.stem = nn.Sequential(
            first, pool, Residual(width // 2, width // 2), Residual(width // 2, width)
        )
        self.hourglasses = nn.ModuleList(Hourglass(depth, width) for _ in range(stacks))
        self.features = nn.ModuleList(
            nn.Sequential(
                Residual(width, width),
                nn.Conv2d(width, width, 1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            )
            for _ in range(stacks)
        )
        self.heads = nn.ModuleList(nn.Conv2d(width, joints, 1) for _ in range(stacks))
        self.merge_features = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(stacks - 1))
        self.merge_heatmaps = nn.ModuleList(nn.Conv2d(joints, width, 1) for _ in range(stacks - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, w, H, H), H = N / stem_stride
        outputs = []
        for i in range(self.stacks):
            feature = self.features[i](self.hourglasses[i](x))  # (B, w, H, H)
            heatmaps = self.heads[i](feature)  # (B, J, H, H)
            outputs.append(heatmaps)
            if i < self.stacks - 1:
                x = x + self.merge_features[i](feature) + self.merge_heatmaps[i](heatmaps)
        return torch.stack(outputs, dim=1)  # (B, stacks, J, H, H)


def render_heatmaps(
    points: torch.Tensor, size: int, stride: int, sigma: float = 1.0
) -> torch.Tensor:
    """(B, J, 2) input-pixel (u, v) -> (B, J, size, size) Gaussians of peak 1 (float32).

    A point outside the heatmap gives the part of its Gaussian that falls inside (all but
    zeros far outside), so a joint an augmentation pushed out of view asks for low heatmaps.
    """
    p = (points.float() + 0.5) / stride - 0.5  # (B, J, 2) heatmap coordinates
    grid = torch.arange(size, device=points.device, dtype=torch.float32)  # (size,)
    gu = torch.exp(-((grid - p[..., 0:1]) ** 2) / (2 * sigma**2))  # (B, J, size) along u
    gv = torch.exp(-((grid - p[..., 1:2]) ** 2) / (2 * sigma**2))  # (B, J, size) along v
    return gv[..., :, None] * gu[..., None, :]  # (B, J, size (v), size (u))


def heatmap_loss(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, stacks, J, H, W) outputs, (B, J, H, W) targets -> (B,) per-sample loss: mean
    squared error over joints and pixels of each stack, summed over the stacks."""
    diff = outputs.float() - target.float()[:, None]  # (B, stacks, J, H, W)
    return diff.square().mean(dim=(2, 3, 4)).sum(dim=1)


def decode_heatmaps(heatmaps: torch.Tensor, stride: int, mode: str = "quarter") -> torch.Tensor:
    """(B, J, H, W) heatmaps -> (B, J, 2) input-pixel (u, v) of each joint (float32).

    No host syncs: arg-max, gathers and arithmetic on the device.
    """
    if mode not in DECODERS:
        raise ValueError(f"mode must be one of {DECODERS}, got {mode!r}")
    b, j, h, w = heatmaps.shape
    hm = heatmaps.float().reshape(b, j, h * w)
    idx = hm.argmax(dim=2)  # (B, J)
    v, u = torch.div(idx, w, rounding_mode="floor"), idx % w  # (B, J) each

    def at(du: int, dv: int) -> torch.Tensor:
        uu, vv = (u + du).clamp(0, w - 1), (v + dv).clamp(0, h - 1)
        return hm.gather(2, (vv * w + uu)[..., None])[..., 0]  # (B, J)

    centre = at(0, 0)
    left, right, up, down = at(-1, 0), at(1, 0), at(0, -1), at(0, 1)
    # A neighbour outside the map does not exist: no step towards it.
    left = torch.where(u > 0, left, centre)
    right = torch.where(u < w - 1, right, centre)
    up = torch.where(v > 0, up, centre)
    down = torch.where(v < h - 1, down, centre)
    if mode == "quarter":
        du = 0.25 * torch.sign(right - left)
        dv = 0.25 * torch.sign(down - up)
    else:
        du = _parabola_offset(left, centre, right)
        dv = _parabola_offset(up, centre, down)
    pu = u.float() + du
    pv = v.float() + dv
    heat = torch.stack([pu, pv], dim=-1)  # (B, J, 2) heatmap coordinates
    return (heat + 0.5) * stride - 0.5


def _parabola_offset(minus: torch.Tensor, centre: torch.Tensor, plus: torch.Tensor) -> torch.Tensor:
    """The vertex of a parabola through the log values at -1, 0, +1, clamped to [-0.5, 0.5]."""
    eps = 1e-10
    lm, l0, lp = (torch.log(t.clamp_min(eps)) for t in (minus, centre, plus))
    curvature = lm - 2 * l0 + lp  # < 0 at a maximum
    offset = 0.5 * (lm - lp) / torch.where(curvature < -eps, curvature, -math.inf)
    return offset.clamp(-0.5, 0.5)
