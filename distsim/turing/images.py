"""Shard images for the page: random access to single images, and PNGs of them.

Images are enlarged without smoothing by the page (CSS ``image-rendering: pixelated``). uint8
images are shown as stored (grey or RGB). Depth images are shown through a colour map with
invalid pixels (0) in neutral grey, on one depth range for the whole session (see
``depth_range``), so real and refined images are coloured alike. A set is depth when its
manifest's ``source`` (or, for a refined set, its input's) says ``"modality": "depth"``, or,
since no converter writes that yet, when its images are single-channel uint16 or float32.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from distsim import data
from distsim.turing.common import TuringError
from shards.format import MANIFEST_NAME, BlockRef, Manifest, decode_block, read_block

DISPLAYS = ("auto", "image", "depth")
NEUTRAL = (128, 128, 128)  # invalid depth pixels: a grey that viridis-like maps never produce


def _depth_mark(source: dict[str, Any]) -> bool | None:
    """The manifest's own word on depth: True/False when it says, None when silent."""
    for _ in range(8):  # a refined set's input_source nests; a loop bound keeps odd data finite
        modality = source.get("modality")
        if isinstance(modality, str):
            return modality.lower() == "depth"
        inner = source.get("input_source")
        if not isinstance(inner, dict):
            return None
        source = inner
    return None


def is_depth(manifest: Manifest) -> bool:
    """Whether a set holds depth images (see the module docstring for the rule)."""
    marked = _depth_mark(manifest.source)
    if marked is not None:
        return marked
    return manifest.image_shape[0] == 1 and manifest.image_dtype in ("uint16", "float32")


class ShardImages:
    """Random access to single images of a shard set, reading only the blocks needed."""

    def __init__(self, directory: str | Path, cache_blocks: int = 8) -> None:
        self.directory = Path(directory)
        self.manifest = data.open_shards(directory)  # ShardError (one line) if missing etc.
        self.blocks: list[BlockRef]
        self.blocks, _ = data.index_shard_set(directory, self.manifest)
        self._starts = np.cumsum([0] + [b.count for b in self.blocks]).tolist()  # (blocks + 1,)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_blocks = cache_blocks
        self._lock = threading.Lock()  # the server reads from several threads

    def __len__(self) -> int:
        return self._starts[-1]

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` in manifest order: (C, H, W) in the stored dtype."""
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} is not in [0, {len(self)})")
        b = bisect.bisect_right(self._starts, index) - 1
        with self._lock:
            block = self._cache.get(b)
            if block is None:
                ref = self.blocks[b]
                path = self.directory / self.manifest.shards[ref.shard].name
                with open(path, "rb") as f:
                    block, _ = decode_block(read_block(f, ref, ("image.npy",)), self.manifest)
                self._cache[b] = block
                if len(self._cache) > self._cache_blocks:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(b)
        return block[index - self._starts[b]]

    def fingerprint(self) -> str:
        """sha256 of manifest.json: names the set's exact contents (it lists every shard's)."""
        return hashlib.sha256((self.directory / MANIFEST_NAME).read_bytes()).hexdigest()


def depth_range(images: Iterable[np.ndarray]) -> tuple[float, float]:
    """(lo, hi): the 1st and 99th percentile of the valid (non-zero, finite) pixels."""
    valid = [x[(x != 0) & np.isfinite(x)].astype(np.float64).ravel() for x in images]
    pixels = np.concatenate(valid) if valid else np.zeros(0)
    if pixels.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(pixels, [1, 99])
    return float(lo), float(max(hi, lo + 1e-6))


def to_display(
    image: np.ndarray,
    depth: bool,
    limits: tuple[float, float] = (0.0, 1.0),
    colormap: str = "viridis",
) -> np.ndarray:
    """One (C, H, W) image as uint8 for a PNG: (H, W) grey or (H, W, 3) RGB.

    Non-depth images: uint8 as stored, uint16 scaled by 1/257, float32 read as [-1, 1] (the
    trainer's range for float images). Depth: ``colormap`` over ``limits``, 0 in NEUTRAL.
    """
    c = image.shape[0]
    if depth:
        if c != 1:
            raise TuringError(f"depth images need 1 channel, these have {c}")
        from matplotlib import colormaps  # only depth sets pay for importing matplotlib

        x = image[0].astype(np.float64)  # (H, W)
        valid = (x != 0) & np.isfinite(x)
        lo, hi = limits
        t = np.clip((np.where(valid, x, lo) - lo) / (hi - lo), 0.0, 1.0)
        rgb = (colormaps[colormap](t)[..., :3] * 255).round().astype(np.uint8)  # (H, W, 3)
        rgb[~valid] = NEUTRAL
        return rgb
    if c not in (1, 3):
        raise TuringError(f"images with {c} channels cannot be shown: only 1 (grey) or 3 (RGB)")
    if image.dtype == np.uint8:
        out = image
    elif image.dtype == np.uint16:
        out = (image.astype(np.float64) / 257).round().astype(np.uint8)
    else:
        out = ((np.clip(image.astype(np.float64), -1, 1) + 1) * 127.5).round().astype(np.uint8)
    return out[0] if c == 1 else np.ascontiguousarray(out.transpose(1, 2, 0))


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
