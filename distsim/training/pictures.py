"""Pictures for people to look at: image grids (PNG and TensorBoard) and training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from distsim.data.pixels import from_unit_range


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] floats (N, C, H, W) -> uint8 (N, H, W, C)."""
    x = from_unit_range(images.detach().float(), "uint8")  # (N, C, H, W), clipped to 0..255
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


def depth_scale(h: int, w: int) -> int:
    """How many times ``depth_grid`` enlarges an h x w crop: to about 128 px."""
    return max(1, 128 // max(h, w))


def depth_grid(
    columns: list[torch.Tensor], valid: list[torch.Tensor | None], pad: int = 2
) -> np.ndarray:
    """``grid`` for depth crops in [-1, 1] (N, 1, H, W): viridis, near dark and far yellow,
    each image enlarged to about 128 px. Every row shares one colour scale, stretched over its
    first column's depths short of the far plane (the hand's relief), so the columns of a row
    compare directly; pixels where ``valid[j]`` is False are magenta. Returns uint8
    (rows, cols, 3)."""
    from distsim.data.depth import FAR, depth_rgb

    n, _, h, w = columns[0].shape
    scale = depth_scale(h, w)
    first = columns[0][:, 0].detach().float().cpu().numpy()  # (N, H, W)
    rgb_cols: list[torch.Tensor] = []
    for col, mask in zip(columns, valid, strict=True):
        if col.shape != columns[0].shape:
            raise ValueError(f"grid columns differ in shape: {col.shape} vs {columns[0].shape}")
        x = col[:, 0].detach().float().cpu().numpy()
        m = None if mask is None else mask[:, 0].cpu().numpy()
        tiles = []
        for i in range(n):
            near = first[i][first[i] < FAR - 1e-3]
            lo, hi = (float(near.min()), float(near.max())) if near.size else (-1.0, 1.0)
            hi = max(hi, lo + 0.05)
            tiles.append(depth_rgb(x[i], lo=lo, hi=hi, valid=None if m is None else m[i]))
        # Back to [-1, 1] floats (N, 3, H, W) so that `grid` lays them out.
        rgb = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 127.5 - 1
        rgb_cols.append(rgb)
    return grid(rgb_cols, scale=scale, pad=pad)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    img.save(path)
    return path


def titled(picture: np.ndarray, titles: list[str], caption: str, scale: int = 4,
           pad: int = 2) -> np.ndarray:  # fmt: skip
    """A `grid` picture (rows, cols, C) with a band on top: `caption` on the left, then each
    column's title over its column. Columns are as `grid` lays them out."""
    rows, cols, c = picture.shape
    n_cols = len(titles)
    col_width = (cols - pad) // n_cols
    band = 28
    white, black = (255, 0) if c == 1 else ((255, 255, 255), (0, 0, 0))
    out = Image.new("L" if c == 1 else "RGB", (cols, rows + band), white)
    out.paste(Image.fromarray(picture[..., 0] if c == 1 else picture), (0, band))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for j, title in enumerate(titles):
        width = draw.textlength(title, font=font)
        x = pad + j * col_width + max(0, (col_width - pad - width) / 2)
        draw.text((x, band - 13), title, fill=black, font=font)
    draw.text((pad, 1), caption, fill=black, font=font)
    array = np.asarray(out)
    return array[..., None] if array.ndim == 2 else array


def plot_curves(
    series: dict[str, list[tuple[int, float]]], path: str | Path, *, phases: list[int]
) -> Path:
    """Training curves, one panel per group of series (losses, D's accuracies, the rest),
    with the phase boundaries (`phases`: steps) drawn as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    groups = {
        "losses": [k for k in series if k.endswith("_loss") or k in ("r_adv", "r_reg")],
        "D accuracy (0.5: chance)": [k for k in series if k.startswith("d_acc")],
        "refinement": [k for k in series if k in ("r_change", "r_saturated")],
    }
    groups = {k: v for k, v in groups.items() if v}
    fig, axes = plt.subplots(len(groups), 1, figsize=(7.0, 2.4 * len(groups)), dpi=110,
                             sharex=True, squeeze=False)  # fmt: skip
    try:
        for ax, (title, keys) in zip(axes[:, 0], groups.items(), strict=True):
            for key in sorted(keys):
                steps, values = zip(*series[key], strict=True)
                ax.plot(steps, values, label=key, linewidth=1.0)
            for boundary in phases:
                ax.axvline(boundary, color="grey", linewidth=0.8, linestyle=":")
            ax.set_title(title, fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="upper right", ncol=2)
        axes[-1, 0].set_xlabel("step (dotted: end of R pretraining, end of D pretraining)")
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
