"""Depth crops as the models see them: codes -> [-1, 1], what invalid pixels become, and
colour pictures.

Crops are ``shards.depth``'s: uint16 (1, S, S) codes 1..65535 over a cube centred on the hand
(1 = near plane, 65535 = far plane and everything behind it), 0 = invalid (no measurement).

Two hole policies (``depth_to_unit``'s ``holes``): "fill", what SimGAN's refiner and
discriminator see (below), and "far", what the pose estimator sees: invalid = far plane, the
background, so a synthetic-trained estimator meets no value it never saw and a hole never
becomes a phantom surface in front of the hand.

Normalisation: one affine map for every crop, code 1 -> -1 (near), 65535 -> +1 (far), so a
refiner's input and output live in the same [-1, 1] as eye images and its tanh can reach both
planes.

Invalid pixels (only the real domain has them: sensor holes, projector shadows, flying-pixel
drop-outs; a render never fails to measure): left as they are, code 0 would map just below -1,
a value no synthetic or refined pixel ever takes, and D would win by spotting it alone. So
before anything sees a real crop (D, the realism probe), ``fill_invalid`` gives every pixel
of a hole the **farthest valid depth on that hole's rim** within ``fill_passes`` pixels of it
(an eighth of the crop's side, at least 8: a shadow band is 4-10 px of a 64 px crop;
measured through the hole: a max spread a pixel per pass, hole pixels included), and
whatever is still invalid after that (a hole wider than twice that) becomes the far plane.
Why the farthest rim depth and not the nearest or the mean: a Kinect's shadows and drop-outs
sit on the background side of a depth edge, so the far side is what the sensor would have
seen, and a max never invents a depth between hand and wall (a mean would make flying
pixels). Why the whole hole's rim and not each pixel's nearest: a projector shadow between
the hand and the background would then be half hand, a silhouette fattened on the shadow
side, which D rewarded R for copying; so it is background,
as the estimator reads it (the "far" policy), while a hole inside the
hand still takes the hand's depth (a far-plane pit there is something R cannot draw). After
filling, every pixel of a real crop is a valid depth that also occurs in its own crop, and
the mask of where filling happened is not shown to D. A validity mask channel for R and D
was the alternative; it would hand D the answer (synthetic masks are all ones).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from shards.depth import CODE_STEPS, FAR_CODE, NEAR_CODE

__all__ = ["FAR", "HOLES", "NEAR", "codes_to_unit", "depth_rgb", "depth_to_unit", "fill_invalid"]

NEAR, FAR = -1.0, 1.0
# Passes of the hole filling (fill_passes): holes up to twice that across fill from their rims.
_MIN_PASSES, _PASSES_PER_SIDE = 8, 1 / 8
HOLES = ("fill", "far")  # what depth_to_unit makes of invalid pixels
_UNSET = -3.0  # below every valid value: marks a still-invalid pixel during filling


def codes_to_unit(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint16 (or int32) depth codes (B, 1, H, W) -> (float depth in [-1, 1], valid mask).

    Code c maps to (c - 1) / CODE_STEPS * 2 - 1; invalid pixels (code 0) come out as NaN-free
    placeholders (the far plane) with ``valid`` False there. No host syncs.
    """
    c = codes.to(torch.int32)
    valid = c > 0  # (B, 1, H, W) bool
    x = (c - 1).float().mul_(2.0 / CODE_STEPS).sub_(1.0)
    return torch.where(valid, x, torch.full_like(x, FAR)), valid


def fill_passes(side: int) -> int:
    """Passes of ``fill_invalid`` for a crop of `side` px: a shadow band grows with the crop."""
    return max(_MIN_PASSES, round(side * _PASSES_PER_SIDE))


def fill_invalid(x: torch.Tensor, valid: torch.Tensor, passes: int | None = None) -> torch.Tensor:
    """Invalid pixels of `x` (B, C, H, W) -> the farthest valid depth on their hole's rim
    within `passes` px (default ``fill_passes`` of the larger side); pixels still unset then
    become the far plane (module docstring). Valid pixels are returned unchanged. Fixed work,
    no host syncs (compile-friendly)."""
    if passes is None:
        passes = fill_passes(max(x.shape[-2:]))
    out = torch.where(valid, x, torch.full_like(x, _UNSET))
    for _ in range(passes):
        # Hole pixels keep taking the max over their 3x3, hole pixels included, so the
        # farthest depth on a hole's rim spreads through the whole hole (geodesically, a pixel
        # per pass) instead of each pixel keeping whatever rim reached it first.
        grown = F.max_pool2d(out, 3, stride=1, padding=1)  # padding is -inf: never picked
        out = torch.where(valid, x, grown)
    return torch.where(out > _UNSET, out, torch.full_like(out, FAR))


def depth_to_unit(codes: torch.Tensor, holes: str = "fill") -> torch.Tensor:
    """Depth codes (B, 1, H, W) -> float32 in [-1, 1], invalid pixels filled from their
    hole's rim (``holes="fill"``: what SimGAN sees) or at the far plane (``"far"``: what the
    pose estimator sees); see the module docstring."""
    x, valid = codes_to_unit(codes)
    if holes == "far":
        return x
    if holes != "fill":
        raise ValueError(f"holes must be one of {HOLES}, got {holes!r}")
    return fill_invalid(x, valid)


def unit_to_codes(x: torch.Tensor) -> torch.Tensor:
    """Inverse of ``codes_to_unit`` for valid depth: [-1, 1] -> codes 1..65535 (int32)."""
    codes = x.float().add(1.0).mul_(CODE_STEPS / 2).add_(NEAR_CODE).round_()
    return codes.clamp_(NEAR_CODE, FAR_CODE).to(torch.int32)


def depth_rgb(
    x: np.ndarray,
    *,
    lo: float,
    hi: float,
    valid: np.ndarray | None = None,
    invalid: tuple[int, int, int] = (255, 0, 255),
) -> np.ndarray:
    """Depth in [-1, 1], (..., H, W) -> uint8 (..., H, W, 3) through viridis, `lo` (dark,
    near) to `hi` (yellow, far), clipped; pixels where `valid` is False in ``invalid``
    (magenta, a colour viridis never takes)."""
    from matplotlib import colormaps

    t = np.clip((np.asarray(x, np.float64) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    rgb = colormaps["viridis"](t, bytes=True)[..., :3]
    if valid is not None:
        rgb[~valid] = invalid
    return rgb
