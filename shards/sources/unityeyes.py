"""Source ``unityeyes``: raw UnityEyes output, a directory of ``N.jpg`` + ``N.json`` pairs.

Each eye is cropped 84x140 (H x W) around the centre of the bounding box of
``interior_margin_2d``, converted to grey and resized to 35x55 with antialiased bilinear
filtering. Labels: gaze and pitchyaw from ``eye_details.look_vec`` (through ``shards.gaze``),
the pupil centre (mean of ``iris_2d``) mapped into the 35x55 crop, and ``head_pose``.

Coordinates: UnityEyes' 2-D points are screen coordinates, continuous, origin at the
bottom-left *corner* of the image, so pixel column i spans [i, i + 1) and y counts from the
bottom. The pupil label uses the simulator's convention: x right, y down, pixel centres at
integer coordinates.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shards.format import Manifest
from shards.gaze import pitchyaw_from_vector, unityeyes_to_mpiigaze
from shards.sources.common import (
    Batch,
    InputError,
    Output,
    add_output_args,
    chunks,
    existing,
    numeric_sort,
    output_from_args,
    write_tasks,
)

NAME = "unityeyes"
SHAPE = (35, 55)
CROP = (84, 140)  # (H, W) in source pixels, around the eye-opening centre
LABELS = {
    "gaze": ((3,), "float32", "unit gaze vector, MPIIGaze normalised camera coords (shards.gaze)"),
    "pitchyaw": ((2,), "float32", "gaze (pitch, yaw) in radians (shards.gaze convention)"),
    "pupil": ((2,), "float32", "pupil centre (x, y) in pixels of the 35x55 crop, x right, y down"),
    "head_pose": ((3,), "float32", "UnityEyes head_pose (pitch, yaw, roll) in degrees, as written"),
}
_CHUNK = 128  # files per task
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _vector(text: Any, sizes: tuple[int, ...], file: str, key: str) -> np.ndarray:
    """Parse UnityEyes' "(x, y, z)" strings; anything else is an InputError naming the key."""
    if isinstance(text, str):
        body = text.strip().removeprefix("(").removesuffix(")")
        parts = [p.strip() for p in body.split(",")]
        if all(_NUMBER.fullmatch(p) for p in parts) and len(parts) in sizes:
            return np.array([float(p) for p in parts])
    want = " or ".join(str(s) for s in sizes)
    raise InputError(f"{file}: {key} is {text!r}, expected a string of {want} numbers '(...)'")


def _points(meta: dict[str, Any], key: str, count: int, file: str) -> np.ndarray:
    if key not in meta:
        raise InputError(f"{file}: missing key {key}")
    values = meta[key]
    if not isinstance(values, list) or len(values) != count:
        got = f"{len(values)} entries" if isinstance(values, list) else repr(values)[:40]
        raise InputError(f"{file}: {key} has {got}, expected a list of {count} points")
    try:
        # Fast path: one float conversion of all points; the slow path names a bad one.
        xyz = np.array([v.strip().removeprefix("(").removesuffix(")").split(",") for v in values])
        points = xyz.astype(np.float64)  # (count, 2 or 3)
        if points.shape[1] in (2, 3) and np.isfinite(points).all():
            return points[:, :2]
    except (AttributeError, ValueError):
        pass
    return np.stack([_vector(v, (2, 3), file, key)[:2] for v in values])  # (count, 2)


def _field(meta: dict[str, Any], dotted: str, file: str) -> Any:
    node: Any = meta
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise InputError(f"{file}: missing key {dotted}")
        node = node[part]
    return node


def _load_gray(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            # Decode only the JPEG's luma plane: the same grey as convert("L"), at less cost.
            im.draft("L", im.size)
            return im.convert("L")
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{path}: cannot read image: {' '.join(str(e).split())}") from None


def _convert_one(jpg: str, jsn: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (35, 55) uint8 crop, (4,) look_vec, (2,) pupil in the crop, (3,) head pose."""
    try:
        with open(jsn) as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{jsn}: cannot read JSON: {' '.join(str(e).split())}") from None
    if not isinstance(meta, dict):
        raise InputError(f"{jsn}: expected a JSON object")
    margin = _points(meta, "interior_margin_2d", 16, jsn)  # (16, 2)
    iris = _points(meta, "iris_2d", 32, jsn)  # (32, 2)
    look = _vector(_field(meta, "eye_details.look_vec", jsn), (3, 4), jsn, "eye_details.look_vec")
    head = _vector(_field(meta, "head_pose", jsn), (3,), jsn, "head_pose")

    im = _load_gray(jpg)
    width, height = im.size
    ys = height - margin[:, 1]  # y from the top, still continuous
    cx = (margin[:, 0].min() + margin[:, 0].max()) / 2
    cy = (ys.min() + ys.max()) / 2
    ch, cw = CROP
    left, top = cx - cw / 2, cy - ch / 2
    box = (left, top, left + cw, top + ch)
    if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
        # PIL refuses boxes outside the image: extend it by repeating the border pixels.
        pad = max(cw, ch)
        im = Image.fromarray(np.pad(np.asarray(im), pad, mode="edge"))
        box = (box[0] + pad, box[1] + pad, box[2] + pad, box[3] + pad)
    crop = np.asarray(im.resize((SHAPE[1], SHAPE[0]), Image.Resampling.BILINEAR, box=box))

    # Continuous crop coordinates scale exactly; -0.5 moves to integer pixel centres.
    px = (iris[:, 0].mean() - left) * SHAPE[1] / cw - 0.5
    py = (height - iris[:, 1].mean() - top) * SHAPE[0] / ch - 0.5
    look4 = np.zeros(4)
    look4[: len(look)] = look
    return crop, look4, np.array([px, py]), head


def _convert(task: Sequence[tuple[str, str]]) -> Batch:
    parts = [_convert_one(jpg, jsn) for jpg, jsn in task]
    images = np.stack([p[0] for p in parts])  # (n, 35, 55)
    look = np.stack([p[1] for p in parts])  # (n, 4)
    try:
        gaze = unityeyes_to_mpiigaze(look)  # (n, 3)
    except ValueError as e:
        bad = next(jsn for (_, jsn), v in zip(task, look, strict=True) if not np.any(v[:3]))
        raise InputError(f"{bad}: eye_details.look_vec: {e}") from None
    labels = {
        "gaze": gaze,
        "pitchyaw": pitchyaw_from_vector(gaze),
        "pupil": np.stack([p[2] for p in parts]).astype(np.float32),
        "head_pose": np.stack([p[3] for p in parts]).astype(np.float32),
    }
    return images, labels


def list_pairs(directory: Path) -> list[tuple[str, str]]:
    """(N.jpg, N.json) pairs of a UnityEyes directory, numerically ordered by N."""
    existing(directory, "directory")
    jsons = {p.stem: p for p in directory.glob("*.json")}
    jpgs = {p.stem: p for p in directory.glob("*.jpg")}
    if not jsons and not jpgs:
        raise InputError(f"{directory}: no UnityEyes N.jpg + N.json pairs found")
    for stem in numeric_sort(jsons.keys() ^ jpgs.keys()):
        have, missing = (jsons[stem], "jpg") if stem in jsons else (jpgs[stem], "json")
        raise InputError(f"{have}: no matching {stem}.{missing}")
    return [(str(jpgs[s]), str(jsons[s])) for s in numeric_sort(jsons)]


def convert_unityeyes(input_dir: str | Path, output: Output) -> Manifest:
    """Convert a UnityEyes output directory into a labelled 35x55 shard set."""
    directory = Path(input_dir)
    pairs = list_pairs(directory)
    if output.limit is not None:
        pairs = pairs[: output.limit]
    return write_tasks(
        output,
        _convert,
        chunks(pairs, _CHUNK),
        image_shape=SHAPE,
        labels=LABELS,
        source={"name": NAME, "input": str(directory), "crop": list(CROP)},
        total=len(pairs),
        desc=directory.name,
    )


def add_parser(sources: argparse._SubParsersAction) -> None:
    p = sources.add_parser(
        NAME,
        help="UnityEyes output: N.jpg + N.json pairs (cropped to 35x55 grey)",
        description="Convert raw UnityEyes output. Each eye is cropped 84x140 around the eye "
        "opening, greyscaled and resized to 35x55. Labels: gaze (3), pitchyaw (2), pupil (2) "
        "in the 35x55 crop, head_pose (3, degrees).",
    )
    p.add_argument("--input", type=Path, required=True, help="directory of N.jpg + N.json")
    add_output_args(p)
    p.set_defaults(run=lambda a: convert_unityeyes(a.input, output_from_args(a)))
