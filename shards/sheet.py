"""Contact sheets: a PNG grid of sample images with their gaze drawn as an arrow.

The arrow starts at the pupil label (or the image centre without one) and points along the
gaze's image-plane component (x, y): in the ``shards.gaze`` convention camera x is image right
and camera y is image down, so positive yaw (x < 0) points left and positive pitch (y < 0)
points up, the way the pupil moves. A gaze with no sideways component draws no arrow.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from shards.gaze import vector_from_pitchyaw

ZOOM = 4  # screen pixels per image pixel
PAD = 2  # pixels between tiles
COLUMNS = 8
ARROW_COLOUR = (255, 40, 40)
START_COLOUR = (0, 220, 255)
# Arrow length per unit of sideways gaze, as a fraction of the image width.
ARROW_SCALE = 0.5


def sheet_size(count: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    """(width, height) in pixels of a sheet of ``count`` images of (H, W)."""
    h, w = image_hw
    cols = min(COLUMNS, count)
    rows = math.ceil(count / cols)
    return cols * (w * ZOOM + PAD) + PAD, rows * (h * ZOOM + PAD) + PAD


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) any dtype -> (H, W, 3) uint8; non-uint8 images are stretched to 0-255."""
    x = image[:3] if image.shape[0] >= 3 else image[:1].repeat(3, axis=0)  # (3, H, W)
    if x.dtype != np.uint8:
        x = x.astype(np.float64)
        lo, hi = x.min(), x.max()
        x = np.zeros_like(x) if hi <= lo else (x - lo) * (255.0 / (hi - lo))
        x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(1, 2, 0))


def arrow_points(
    gaze: np.ndarray, start: tuple[float, float], width: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Start and tip, in the same (x right, y down) units as ``start``, for a (3,) gaze."""
    length = ARROW_SCALE * width
    return start, (start[0] + length * float(gaze[0]), start[1] + length * float(gaze[1]))


def write_contact_sheet(
    path: str | Path, images: np.ndarray, labels: dict[str, np.ndarray]
) -> tuple[int, int]:
    """Write images (N, C, H, W) with optional "gaze"/"pitchyaw" and "pupil" labels as a PNG.

    Returns the sheet's (width, height).
    """
    n, _, h, w = images.shape
    if n == 0:
        raise ValueError("no images for a contact sheet")
    gaze = labels.get("gaze")
    if gaze is None and "pitchyaw" in labels:
        gaze = vector_from_pitchyaw(labels["pitchyaw"])
    pupil = labels.get("pupil")
    size = sheet_size(n, (h, w))
    sheet = Image.new("RGB", size, (32, 32, 32))
    cols = min(COLUMNS, n)
    for i in range(n):
        tile = Image.fromarray(_to_rgb(images[i])).resize((w * ZOOM, h * ZOOM), Image.NEAREST)
        if gaze is not None:
            # Drawn on the tile, so a long arrow is clipped instead of crossing its neighbour.
            draw = ImageDraw.Draw(tile)
            # Pixel centres are at integer coordinates: pixel (x, y) is drawn at ZOOM * (x + .5).
            px, py = (pupil[i] + 0.5) if pupil is not None else (w / 2, h / 2)
            start, tip = arrow_points(gaze[i], (ZOOM * px, ZOOM * py), w * ZOOM)
            _arrow(draw, start, tip)
            r = 2
            box = [start[0] - r, start[1] - r, start[0] + r, start[1] + r]
            draw.ellipse(box, fill=START_COLOUR)
        x0 = PAD + (i % cols) * (w * ZOOM + PAD)
        y0 = PAD + (i // cols) * (h * ZOOM + PAD)
        sheet.paste(tile, (x0, y0))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return size


def _arrow(draw: ImageDraw.ImageDraw, start: tuple[float, float], tip: tuple[float, float]) -> None:
    dx, dy = tip[0] - start[0], tip[1] - start[1]
    length = math.hypot(dx, dy)
    if length < 1.0:
        return
    draw.line([start, tip], fill=ARROW_COLOUR, width=2)
    head = min(8.0, 0.4 * length)
    angle = math.atan2(dy, dx)
    for side in (-1, 1):
        a = angle + math.pi + side * math.radians(28)
        draw.line(
            [tip, (tip[0] + head * math.cos(a), tip[1] + head * math.sin(a))],
            fill=ARROW_COLOUR,
            width=2,
        )
