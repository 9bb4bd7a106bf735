"""Image grids for people to look at: PNG files and TensorBoard images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] floats (N, C, H, W) -> uint8 (N, H, W, C)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def grid(columns: list[torch.Tensor], scale: int = 4, pad: int = 2) -> np.ndarray:
    """Tile images so that row i shows columns[0][i] | columns[1][i] | ...

    Each column is (N, C, H, W) in [-1, 1]; returns uint8 (rows, cols, C) with white gutters,
    each image enlarged `scale` times with nearest-neighbour so pixels stay visible.
    """
    n, c, h, w = columns[0].shape
    for col in columns:
        if col.shape != columns[0].shape:
            raise ValueError(f"grid columns differ in shape: {col.shape} vs {columns[0].shape}")
    hs, ws = h * scale, w * scale
    out = np.full((n * (hs + pad) + pad, len(columns) * (ws + pad) + pad, c), 255, np.uint8)
    for j, col in enumerate(columns):
        tiles = to_uint8(col).repeat(scale, axis=1).repeat(scale, axis=2)  # (N, hs, ws, C)
        for i in range(n):
            y, x = pad + i * (hs + pad), pad + j * (ws + pad)
            out[y : y + hs, x : x + ws] = tiles[i]
    return out


def save_png(array: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    img.save(path)
    return path
