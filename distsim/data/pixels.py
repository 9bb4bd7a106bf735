"""Stored pixels <-> the [-1, 1] images the models work on, for every dtype a shard set holds.

- ``uint8`` (eyes, any 8-bit image): 0 -> -1, 255 -> +1 (x / 127.5 - 1); back, round((y + 1)
  * 127.5) clipped to 0..255, half to even (``torch.round``, as ``np.round``).
- ``uint16`` (and int32): depth crops (``shards.depth``), through ``distsim.data.depth``:
  codes 1..65535 onto [-1, 1], invalid pixels (0) as the hole policy says; back, codes
  1..65535 and never 0 (a refined crop has no holes).
- ``float32``: as stored.

``CODE_LEVELS`` is the grid each integer dtype's pixels take in [-1, 1]: ``levels + 1``
evenly spaced values, which the history buffer rounds to so checkpoints can store codes
(``distsim.gan.history``).
"""

from __future__ import annotations

import torch

from distsim.data.depth import depth_to_unit, unit_to_codes
from shards.depth import CODE_STEPS

CODE_LEVELS = {"uint8": 255, "uint16": CODE_STEPS}


def to_unit_range(images: torch.Tensor, holes: str = "fill") -> torch.Tensor:
    """Integer images from the loader -> float in [-1, 1], on whatever device they are; a
    depth crop's invalid pixels by the hole policy `holes` (``distsim.data.depth``)."""
    if images.dtype == torch.uint8:
        return images.float().div_(127.5).sub_(1.0)
    if images.dtype == torch.uint16 or images.dtype == torch.int32:
        return depth_to_unit(images, holes)
    return images.float()


def from_unit_range(images: torch.Tensor, dtype: str) -> torch.Tensor:
    """Inverse of ``to_unit_range``: [-1, 1] floats -> the shard set's `dtype` (a numpy
    dtype name). uint16 comes back as int32 (torch's uint16 support is partial); the caller
    casts the numpy array."""
    if dtype == "uint8":
        return images.add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)
    if dtype == "uint16":
        return unit_to_codes(images)
    if dtype == "float32":
        return images.float()
    raise ValueError(f"cannot write {dtype} images")
