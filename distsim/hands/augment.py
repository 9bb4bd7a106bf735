"""The pose estimator's augmentation: random similarities of depth crops and their joints.

Everything here runs on batches on the device (no host syncs), with its random draws from a
``torch.Generator`` the caller owns.

Augmentation (``random_affine`` + ``warp``): a random similarity per crop, rotation
U(-``max_degrees``, ``max_degrees``) about the crop centre (the paper: +-20 degrees), scale
U(1 - ``scale_jitter``, 1 + ``scale_jitter``) and a shift U(-``max_shift``, ``max_shift``) crop
pixels per axis (the paper's "crops": a shifted window over the hand), applied to the image by
``warp`` and to the joints by ``transform_points`` with the same matrix. Sampling is
**nearest-neighbour**, so a pixel of the output is one pixel of the input (a real measurement,
or invalid-as-far), never a blend of a hand pixel and the background; what the window brings
in from outside the crop is far plane (+1), like the background. Pixel centres are at integers
(``shards.depth``): a point at (u, v) in the crop moves to ``A @ (u, v, 1)`` in the output.

``warp`` also resizes: its output side ``out_size`` may differ from the crop's, as when 224
crops are read at 256 to give the paper's 64x64 heatmaps with Newell's stride-4 stem; testing
uses the same warp with no rotation, shift or jitter.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

__all__ = [
    "invert",
    "random_affine",
    "resize_affine",
    "transform_points",
    "warp",
]


def resize_affine(
    batch: int, in_size: int, out_size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(B, 2, 3) matrices of the plain resize from ``in_size`` to ``out_size`` pixels."""
    return _similarity(
        torch.zeros(batch, device=device),
        torch.ones(batch, device=device),
        torch.zeros(batch, 2, device=device),
        in_size,
        out_size,
    )


def random_affine(
    batch: int,
    in_size: int,
    out_size: int,
    generator: torch.Generator,
    *,
    max_degrees: float = 20.0,
    max_shift: float = 0.0,
    scale_jitter: float = 0.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(B, 2, 3) crop-pixel -> output-pixel matrices: a random rotation, shift and scale.

    ``max_shift`` is in crop pixels. Draws come from ``generator`` (on ``device``).
    """
    if max_degrees < 0 or max_shift < 0 or not 0 <= scale_jitter < 1:
        raise ValueError(
            f"need max_degrees >= 0, max_shift >= 0, 0 <= scale_jitter < 1, got "
            f"{max_degrees}, {max_shift}, {scale_jitter}"
        )
    u = torch.rand(batch, 4, generator=generator, device=device) * 2 - 1  # (B, 4) in [-1, 1]
    angle = u[:, 0] * math.radians(max_degrees)
    scale = 1 + u[:, 1] * scale_jitter
    shift = u[:, 2:] * max_shift  # (B, 2) crop pixels
    return _similarity(angle, scale, shift, in_size, out_size)


def _similarity(
    angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, in_size: int, out_size: int
) -> torch.Tensor:
    """p_out = k s R(angle) (p_in - c_in) + k shift + c_out, with k = out_size / in_size.

    Rotation is counter-clockwise as seen on the image (v points down).
    """
    k = out_size / in_size
    c_in, c_out = (in_size - 1) / 2, (out_size - 1) / 2
    cos, sin = torch.cos(angle) * scale * k, torch.sin(angle) * scale * k  # (B,)
    # In (u right, v down) coordinates, a counter-clockwise turn on screen is
    # [[cos, sin], [-sin, cos]].
    a = torch.stack(
        [torch.stack([cos, sin], dim=1), torch.stack([-sin, cos], dim=1)], dim=1
    )  # (B, 2, 2)
    centre_in = torch.full((angle.shape[0], 2), c_in, device=angle.device)
    t = -(a @ centre_in[..., None])[..., 0] + k * shift + c_out  # (B, 2)
    return torch.cat([a, t[..., None]], dim=2)  # (B, 2, 3)


def transform_points(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) matrices, (B, J, 2) pixel (u, v) -> (B, J, 2) transformed (u, v)."""
    return points.float() @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]


def invert(matrix: torch.Tensor) -> torch.Tensor:
    """The inverse of (B, 2, 3) affine matrices."""
    a_inv = torch.linalg.inv(matrix[:, :, :2])  # (B, 2, 2)
    t = -(a_inv @ matrix[:, :, 2:])  # (B, 2, 1)
    return torch.cat([a_inv, t], dim=2)


def warp(images: torch.Tensor, matrix: torch.Tensor, out_size: int) -> torch.Tensor:
    """(B, C, S, S) images in [-1, 1], (B, 2, 3) crop -> output matrices -> (B, C, N, N).

    Nearest-neighbour; outside the crop reads +1 (the far plane).
    """
    b, c, h, w = images.shape
    inv = invert(matrix.float())  # output pixel -> crop pixel
    ys, xs = torch.meshgrid(
        torch.arange(out_size, device=images.device, dtype=torch.float32),
        torch.arange(out_size, device=images.device, dtype=torch.float32),
        indexing="ij",
    )
    out_pts = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)  # (N*N, 2) (u, v)
    src = transform_points(inv, out_pts.expand(b, -1, -1))  # (B, N*N, 2) crop pixels
    # Pixel centre u maps to (2u + 1) / W - 1 in grid_sample's align_corners=False convention.
    grid = torch.stack([(2 * src[..., 0] + 1) / w - 1, (2 * src[..., 1] + 1) / h - 1], dim=-1)
    grid = grid.reshape(b, out_size, out_size, 2)
    # Zero padding of (x - 1), plus 1: outside the crop reads +1, the far plane.
    out = F.grid_sample(images.float() - 1, grid, mode="nearest", align_corners=False)
    return out + 1
