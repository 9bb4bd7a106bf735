"""Source ``nyu``: NYU Hand Pose frames (``ROOT/train`` or ``ROOT/test``) as square depth crops.

Input, one folder in NYU's layout: ``depth_K_NNNNNNN.png`` and ``synthdepth_K_NNNNNNN.png`` (K
the Kinect view, 1 front, 2 top, 3 side; frames numbered from 0000001), each 640x480 RGB with
depth in millimetres = (G << 8) | B (R unused; 0 and 32001 hold no depth), and
``joint_data.mat`` with ``joint_uvd`` and ``joint_xyz`` of shape (3 views, N, 36, 3), MATLAB v5
(scipy) or v7.3 (HDF5, h5py). ``rgb_K_*`` files are ignored.

Crops (``--crop``), in the convention of ``shards.depth``:

- ``mask``, the paper's: the frame's synthetic render (``synthdepth``, depth where
  0 < d < 32001) is the hand mask. Its bounding box, made square and widened by ``MASK_PAD`` of
  its side on every side, is the crop; the cube's centre is the box centre at the mask's median
  depth. Real depth outside the mask's depth range -+ ``MASK_MARGIN_MM`` is not the hand: it
  becomes background.
- ``cube``: a ``CUBE_MM`` cube centred on joint 32 (the palm) of ``joint_uvd``, i.e. a square
  of CUBE_MM * f / z pixels around the palm's (u, v).

Pixels are ``shards.depth`` codes over the cube. Code 0 (invalid) marks what has no depth: real
depth 0 or >= 32001 (the sensor measured nothing) and pixels outside the 640x480 frame.
Background is the far-plane code 65535, as ``encode_depth`` gives any depth beyond the cube: a
wall behind the hand, real depth the mask segments away, and synthdepth's 32001 (the render has
no surface there; a render never fails to measure, so that is background, not a hole, and a
synthetic crop's background then looks like a segmented real crop's).

Resizing is nearest neighbour: crop pixel i takes source pixel u0 + floor((i + 0.5) * side /
size). Each output pixel is a depth the source holds, so invalid pixels never blend into valid
ones and no averaging across the hand's silhouette invents "flying" depths between hand and
background, which would be an artifact of this converter that D could learn.

Order: frame-major, for each frame (ascending) each requested view (ascending); ``--limit N``
keeps the first N crops of that order.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image

from shards.cliutil import positive_int
from shards.depth import CUBE_MM, FAR_CODE, FOCAL, INVALID, NUM_JOINTS, encode_depth
from shards.format import Manifest
from shards.sources.common import (
    Batch,
    InputError,
    Output,
    add_output_args,
    chunks,
    existing,
    output_from_args,
    warn,
    write_tasks,
)

NAME = "nyu"
FRAME_SIZE = (640, 480)  # (W, H)
NO_DEPTH = 32001  # NYU: this value (and 0, and anything larger) holds no depth
PALM = 32  # joint at the centre of the --crop cube cube
VIEWS = (1, 2, 3)
MASK_PAD = 0.1  # --crop mask widens the mask's square box by this fraction on each side
MASK_MARGIN_MM = 30.0  # real depth this far outside the mask's depth range is background
LABELS_FILE = "joint_data.mat"
_KEYS = ("joint_uvd", "joint_xyz")
_PREFIX = {"real": "depth", "synth": "synthdepth"}
_FILE = re.compile(r"(depth|synthdepth)_(\d)_(\d{7})\.png")
_CHUNK = 16  # crops per task

LABELS = {
    "joints_uvd": (
        (NUM_JOINTS, 3),
        "float32",
        "the 36 NYU joints: (u, v) in crop pixels (u right, v down, pixel centres at integers), "
        "d in mm (shards.depth)",
    ),
    "joints_xyz": (
        (NUM_JOINTS, 3),
        "float32",
        "the 36 NYU joints in camera mm (x right, y up, z away), as in joint_data.mat",
    ),
    "center": (
        (3,),
        "float32",
        "the cube's centre: (u, v) in source-frame pixels, z in mm; the image's codes are "
        "relative to z (shards.depth.decode_depth)",
    ),
    "box": ((4,), "float32", "the crop in source-frame pixels (u0, v0, u1, v1), u1/v1 exclusive"),
    "view": ((1,), "int64", "NYU Kinect view: 1 front, 2 top, 3 side"),
    "frame": ((1,), "int64", "frame index, 0-based (file number NNNNNNN - 1)"),
}


# --- reading ------------------------------------------------------------------------------------


def read_depth_png(path: str | Path) -> np.ndarray:
    """(480, 640) uint16 mm = (G << 8) | B of an NYU depth PNG; InputError if unreadable."""
    try:
        with Image.open(path) as im:
            size, mode = im.size, im.mode
            rgb = np.asarray(im) if (size, mode) == (FRAME_SIZE, "RGB") else None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: cannot read image: {' '.join(str(e).split())}") from None
    if rgb is None:
        w, h = FRAME_SIZE
        raise InputError(f"{path}: is a {size[0]}x{size[1]} {mode} image, expected {w}x{h} RGB")
    return (rgb[..., 1].astype(np.uint16) << 8) | rgb[..., 2]  # (480, 640)


def load_joints(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(joint_uvd, joint_xyz) of a v5 or v7.3 joint_data.mat, each (3, N, 36, 3) float64."""
    existing(path, "file")
    arrays: dict[str, np.ndarray | None] = {}
    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                for key in _KEYS:
                    node = f.get(key)
                    # MATLAB is column-major: h5py sees a v7.3 array's axes reversed.
                    arrays[key] = np.asarray(node).T if isinstance(node, h5py.Dataset) else None
        else:
            mat = scipy.io.loadmat(path, variable_names=list(_KEYS))
            arrays = {key: mat.get(key) for key in _KEYS}
    except Exception as e:  # scipy and h5py raise many types for a bad file; all mean unreadable
        raise InputError(f"{path}: cannot read .mat file: {' '.join(str(e).split())}") from None
    checked = []
    for key, a in arrays.items():
        if a is None:
            raise InputError(f"{path}: missing key {key}")
        if a.ndim != 4 or a.shape[0] != len(VIEWS) or a.shape[2:] != (NUM_JOINTS, 3):
            raise InputError(f"{path}: {key} has shape {a.shape}, expected (3, N, 36, 3)")
        if a.dtype.kind not in "uif":
            raise InputError(f"{path}: {key} has dtype {a.dtype}, expected numbers")
        a = a.astype(np.float64, copy=False)
        bad = np.argwhere(~np.isfinite(a))
        if len(bad):
            view, frame = bad[0, :2]
            raise InputError(
                f"{path}: {key} of view {view + 1}, frame {frame + 1} is not finite (NaN or inf)"
            )
        checked.append(a)
    uvd, xyz = checked
    if uvd.shape != xyz.shape:
        raise InputError(f"{path}: joint_xyz has shape {xyz.shape}, joint_uvd {uvd.shape}")
    if uvd.shape[1] == 0:
        raise InputError(f"{path}: joint_uvd has shape {uvd.shape}: no frames")
    return uvd, xyz


def list_frames(directory: Path) -> dict[tuple[str, int], set[int]]:
    """{(kind, view): file numbers} of the depth and synthdepth PNGs in an NYU folder."""
    found: dict[tuple[str, int], set[int]] = defaultdict(set)
    with os.scandir(directory) as entries:
        for entry in entries:
            match = _FILE.fullmatch(entry.name)
            if match:
                found[(match[1], int(match[2]))].add(int(match[3]))
    return found


def _png(directory: Path | str, kind: str, view: int, number: int) -> Path:
    return Path(directory, f"{kind}_{view}_{number:07d}.png")


def _check_frames(
    directory: Path, found: set[int], kind: str, view: int, frames: int, why: str
) -> None:
    """Files 1..frames of (kind, view) exist and no others: one line naming the first that
    does not fit."""
    if not found:
        raise InputError(f"{directory}: no {kind}_{view}_NNNNNNN.png files {why}")
    if len(found) == frames and min(found) == 1 and max(found) == frames:
        return
    labels = directory / LABELS_FILE
    missing = next((n for n in range(1, frames + 1) if n not in found), None)
    if missing is not None:
        raise InputError(
            f"{_png(directory, kind, view, missing)}: missing; {labels} labels {frames} frames"
        )
    extra = min(n for n in found if not 1 <= n <= frames)
    raise InputError(
        f"{_png(directory, kind, view, extra)}: frame {extra} has no labels; {labels} labels "
        f"{frames} frames"
    )


# --- cropping -----------------------------------------------------------------------------------


def box_corner(cu: float, cv: float, side: int) -> tuple[int, int]:
    """Top-left pixel of the side x side box whose centre is nearest (cu, cv) (pixel centres at
    integers, so the box's centre is (u0 + (side - 1) / 2, v0 + (side - 1) / 2))."""
    return math.floor(cu - (side - 1) / 2 + 0.5), math.floor(cv - (side - 1) / 2 + 0.5)


def sample_nearest(
    image: np.ndarray, u0: int, v0: int, side: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour resample of the box [u0, u0 + side) x [v0, v0 + side) of ``image``
    (H, W) to (size, size): crop pixel i takes source pixel u0 + floor((i + 0.5) * side / size).
    Returns (values (size, size), inside (size, size) bool: the source pixel is in the frame)."""
    step = (2 * np.arange(size) + 1) * side // (2 * size)  # (size,) exact integer floor
    rows, cols = v0 + step, u0 + step
    h, w = image.shape
    in_rows, in_cols = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
    values = image[np.clip(rows, 0, h - 1)[:, None], np.clip(cols, 0, w - 1)[None, :]]
    return values, in_rows[:, None] & in_cols[None, :]


def uvd_to_crop(uvd: np.ndarray, u0: int, v0: int, side: int, size: int) -> np.ndarray:
    """(..., 3) source-frame (u, v, d) -> crop pixels (pixel centres at integers), d kept."""
    scale = size / side
    out = np.array(uvd, dtype=np.float64)
    out[..., 0] = (out[..., 0] - u0 + 0.5) * scale - 0.5
    out[..., 1] = (out[..., 1] - v0 + 0.5) * scale - 0.5
    return out


@dataclass(frozen=True)
class _Task:
    directory: str
    depth: str  # "real" | "synth"
    crop: str  # "mask" | "cube"
    size: int
    items: tuple[tuple[int, int], ...]  # (view, 0-based frame) per crop
    uvd: np.ndarray  # (n, 36, 3) joint_uvd of those crops
    xyz: np.ndarray  # (n, 36, 3)


def _mask_geometry(
    synth: np.ndarray, path: Path
) -> tuple[float, float, float, int, tuple[float, float]]:
    """(cu, cv, cz, side, (lo, hi) depth range kept as hand) of a synthetic render's mask."""
    hand = (synth > 0) & (synth < NO_DEPTH)  # (480, 640)
    if not hand.any():
        raise InputError(
            f"{path}: no hand pixels (all 0 or >= {NO_DEPTH}), so no --crop mask; "
            "--crop cube needs none"
        )
    rows, cols = np.flatnonzero(hand.any(axis=1)), np.flatnonzero(hand.any(axis=0))
    hand_mm = synth[hand]
    extent = max(cols[-1] - cols[0], rows[-1] - rows[0]) + 1
    side = math.ceil(extent * (1 + 2 * MASK_PAD))
    keep = (float(hand_mm.min()) - MASK_MARGIN_MM, float(hand_mm.max()) + MASK_MARGIN_MM)
    centre = ((cols[0] + cols[-1]) / 2, (rows[0] + rows[-1]) / 2, float(np.median(hand_mm)))
    return (*centre, side, keep)


def _crop_one(task: _Task, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    view, frame = task.items[i]
    image = read_depth_png(_png(task.directory, _PREFIX[task.depth], view, frame + 1))
    keep = None
    if task.crop == "mask":
        synth_path = _png(task.directory, "synthdepth", view, frame + 1)
        synth = image if task.depth == "synth" else read_depth_png(synth_path)
        cu, cv, cz, side, keep = _mask_geometry(synth, synth_path)
    else:
        cu, cv, cz = (float(x) for x in task.uvd[i, PALM])
        if not cz > 0:
            raise InputError(
                f"{Path(task.directory, LABELS_FILE)}: joint_uvd of view {view}, frame "
                f"{frame + 1}: the palm (joint {PALM}) is at depth {cz}, not in front of the camera"
            )
        fx, fy = FOCAL[:2]
        side = max(1, round(CUBE_MM * (fx + fy) / 2 / cz))
    u0, v0 = box_corner(cu, cv, side)
    raw, inside = sample_nearest(image, u0, v0, side, task.size)  # (S, S) each
    no_depth = (raw == 0) | (raw >= NO_DEPTH)
    codes = encode_depth(np.where(no_depth, np.nan, raw), cz)  # (S, S) uint16, 0 where no depth
    # A render's "no depth" is empty space (background); a sensor's is a failed measurement.
    background = no_depth.copy() if task.depth == "synth" else np.zeros_like(no_depth)
    if keep is not None:
        background |= ~no_depth & ((raw < keep[0]) | (raw > keep[1]))
    codes[background] = FAR_CODE
    codes[~inside] = INVALID
    labels = {
        "joints_uvd": uvd_to_crop(task.uvd[i], u0, v0, side, task.size),
        "joints_xyz": task.xyz[i],
        "center": np.array([cu, cv, cz]),
        "box": np.array([u0, v0, u0 + side, v0 + side], dtype=np.float64),
        "view": np.array([view]),
        "frame": np.array([frame]),
    }
    return codes, labels


def _convert(task: _Task) -> Batch:
    crops = [_crop_one(task, i) for i in range(len(task.items))]
    images = np.stack([c[0] for c in crops])  # (n, S, S) uint16
    labels = {
        name: np.stack([c[1][name] for c in crops]).astype(np.dtype(spec[1]))
        for name, spec in LABELS.items()
    }
    return images, labels


# --- driver -------------------------------------------------------------------------------------


def convert_nyu(
    input_dir: str | Path,
    output: Output,
    views: Sequence[int] = (1,),
    depth: str = "real",
    crop: str = "mask",
    size: int = 224,
) -> Manifest:
    """Convert one NYU folder (``train`` or ``test``) into (1, size, size) uint16 depth crops."""
    directory = Path(input_dir)
    if depth not in _PREFIX:
        raise ValueError(f"unknown depth {depth!r}; expected 'real' or 'synth'")
    if crop not in ("mask", "cube"):
        raise ValueError(f"unknown crop {crop!r}; expected 'mask' or 'cube'")
    views = sorted(set(views))
    if not views or not set(views) <= set(VIEWS):
        raise ValueError(f"views {views} must be among {list(VIEWS)}")
    existing(directory, "directory")
    uvd, xyz = load_joints(directory / LABELS_FILE)  # (3, N, 36, 3) each
    frames = uvd.shape[1]
    found = list_frames(directory)
    for view in views:
        _check_frames(
            directory,
            found[(_PREFIX[depth], view)],
            _PREFIX[depth],
            view,
            frames,
            f"(view {view} asked for with --views)",
        )
        if crop == "mask":
            why = "(--crop mask takes the hand mask from them; --crop cube needs none)"
            _check_frames(directory, found[("synthdepth", view)], "synthdepth", view, frames, why)

    items = [(view, frame) for frame in range(frames) for view in views]
    if output.limit is not None:
        items = items[: output.limit]
    tasks = [
        _Task(
            str(directory),
            depth,
            crop,
            size,
            tuple(part),
            np.stack([uvd[v - 1, f] for v, f in part]),
            np.stack([xyz[v - 1, f] for v, f in part]),
        )
        for part in chunks(items, _CHUNK)
    ]
    if tasks:
        _check_depth_kind(tasks[0], found)
    source: dict[str, object] = {
        "name": NAME,
        "input": str(directory),
        "views": views,
        "depth": depth,
        "crop": crop,
        "size": size,
        "cube_mm": CUBE_MM,
        "resize": "nearest",
        "order": "frame-major: each frame's views in ascending order",
    }
    if crop == "mask":
        source |= {"mask_pad": MASK_PAD, "mask_margin_mm": MASK_MARGIN_MM}
    return write_tasks(
        output,
        _convert,
        tasks,
        image_shape=(size, size),
        image_dtype="uint16",
        labels=LABELS,
        source=source,
        total=len(items),
        desc=f"nyu {directory.name}",
    )


# A real crop whose pixels are mostly invalid is more likely a render read as sensor depth
# (its empty space is no measurement) than a sensor's frame: a Kinect measures most of a hand
# and the wall behind it.
MOSTLY_INVALID = 0.5


def _check_depth_kind(task: _Task, found: dict[tuple[str, int], set[int]]) -> None:
    """Warn when the first task's frames look like renders converted as sensor depth: depth
    PNGs equal to the synthdepth renders, or crops mostly without depth."""
    if task.depth != "real":
        return
    same = [
        np.array_equal(read_depth_png(_png(task.directory, "depth", view, frame + 1)),
                       read_depth_png(_png(task.directory, "synthdepth", view, frame + 1)))
        for view, frame in task.items
        if frame + 1 in found[("synthdepth", view)]
    ]  # fmt: skip
    if same and all(same):
        warn(f"{task.directory}: its depth_* frames equal its synthdepth_* renders ({len(same)} "
             "checked): clean renders, not sensor depth? As sensor depth, a render's empty "
             "space becomes invalid (no measurement) instead of background; convert renders "
             "with --depth synth")  # fmt: skip
        return
    crops = [_crop_one(task, i)[0] for i in range(len(task.items))]
    mostly = sum(float((c == INVALID).mean()) > MOSTLY_INVALID for c in crops)
    if mostly > len(crops) / 2:
        warn(f"{task.directory}: {mostly} of the first {len(crops)} crops are mostly without "
             "depth (invalid): renders read as sensor depth? Convert renders with --depth "
             "synth")  # fmt: skip


def _views_arg(text: str) -> tuple[int, ...]:
    try:
        views = tuple(int(part) for part in text.split(","))
    except ValueError:
        views = ()
    if not views or not set(views) <= set(VIEWS) or len(set(views)) != len(views):
        raise argparse.ArgumentTypeError(f"{text!r}: expected views among 1, 2, 3, e.g. 1 or 1,2,3")
    return views


def add_parser(sources: argparse._SubParsersAction) -> None:
    p = sources.add_parser(
        NAME,
        help="NYU Hand Pose, ROOT/train or ROOT/test (to uint16 depth crops, 224x224)",
        description="Convert an NYU Hand Pose folder (depth_K_NNNNNNN.png, "
        "synthdepth_K_NNNNNNN.png, joint_data.mat) into square depth crops in the "
        "shards.depth convention: uint16 codes over a 300 mm cube around the hand, 0 invalid, "
        "65535 background. Labels: joints_uvd (36, 3) in crop pixels + mm, joints_xyz (36, 3), "
        "center (3), box (4), view (1), frame (1). Crops are frame-major: each frame's views "
        "in ascending order.",
    )
    p.add_argument(
        "--input", type=Path, required=True, help="an NYU folder: ROOT/train or ROOT/test"
    )
    p.add_argument(
        "--views",
        type=_views_arg,
        default=(1,),
        metavar="K[,K...]",
        help="Kinect views: 1 (front, default) or 1,2,3 (every view, the paper's '3x')",
    )
    p.add_argument(
        "--depth",
        choices=tuple(_PREFIX),
        default="real",
        help="crop the real depth_K PNGs (default) or the synthetic synthdepth_K renders",
    )
    p.add_argument(
        "--crop",
        choices=("mask", "cube"),
        default="mask",
        help="mask (default, the paper's): the square box around the synthetic render's hand "
        "mask, real depth outside the mask's depth range is background; cube: a 300 mm cube "
        "around joint 32 (the palm)",
    )
    p.add_argument(
        "--size", type=positive_int, default=224, help="crop side in pixels (default 224)"
    )
    add_output_args(p)
    p.set_defaults(
        run=lambda a: convert_nyu(a.input, output_from_args(a), a.views, a.depth, a.crop, a.size)
    )
