"""Source ``mpiigaze``: MPIIGaze's normalised eye images, ``Data/Normalized/pXX/dayYY.mat``.

``--subset all`` converts every frame of every day, left eye then right eye per day file;
``--subset evaluation`` converts the standard evaluation list (``Evaluation Subset/sample list
for eye image/pXX.txt``, lines like ``day08/0069.jpg left``) in its order. Right eyes are
flipped left-right so they look like left eyes, with gaze and head pose mirrored to match
(``shards.gaze``). Images are resized from 36x60 to 35x55 with antialiased bilinear filtering.
"""

from __future__ import annotations

import argparse
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from shards.format import Manifest
from shards.gaze import mirror_gaze, mirror_rotation_vector, pitchyaw_from_vector, unit_gaze
from shards.sources.common import (
    Batch,
    InputError,
    Output,
    add_output_args,
    existing,
    output_from_args,
    resize_batch,
    write_tasks,
)

NAME = "mpiigaze"
SOURCE_SHAPE = (36, 60)
SHAPE = (35, 55)
NORMALIZED = Path("Data", "Normalized")
EVALUATION = Path("Evaluation Subset", "sample list for eye image")
LABELS = {
    "gaze": ((3,), "float32", "unit gaze vector, MPIIGaze normalised camera coords (shards.gaze)"),
    "pitchyaw": ((2,), "float32", "gaze (pitch, yaw) in radians (shards.gaze convention)"),
    "head_pose": (
        (3,),
        "float32",
        "MPIIGaze data.*.pose: head rotation vector (radians) in normalised camera coords, "
        "mirrored with the image for right eyes",
    ),
}
_LINE = re.compile(r"(day\d+)/(\d+)\.\w+\s+(left|right)")
_DAY_CACHE = 4  # evaluation lists are grouped by day, so a few open days suffice

Eye = tuple[np.ndarray, np.ndarray, np.ndarray]  # (N, 36, 60) uint8, (N, 3) gaze, (N, 3) pose


def _attr(node: Any, name: str, path: Path, where: str) -> Any:
    value = getattr(node, name, None)
    if value is None:
        raise InputError(f"{path}: missing {where}.{name}")
    return value


def load_day(path: Path) -> dict[str, Eye]:
    """{"left": eye, "right": eye} of one dayYY.mat, shapes and values checked, 1-frame days
    unsqueezed."""
    if not path.is_file():
        raise InputError(f"{path}: no such day file")
    try:
        mat = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
    except Exception as e:  # scipy raises many types for a bad file; all mean "unreadable"
        raise InputError(f"{path}: cannot read .mat file: {' '.join(str(e).split())}") from None
    if "data" not in mat:
        raise InputError(f"{path}: missing key data")
    eyes = {}
    for side in ("left", "right"):
        eye = _attr(mat["data"], side, path, "data")
        where = f"data.{side}"
        image = np.asarray(_attr(eye, "image", path, where))
        gaze = np.asarray(_attr(eye, "gaze", path, where), dtype=np.float64)
        pose = np.asarray(_attr(eye, "pose", path, where), dtype=np.float64)
        if image.ndim == 2:  # squeeze_me turned a 1-frame day into a single image
            image, gaze, pose = image[None], gaze.reshape(1, -1), pose.reshape(1, -1)
        if image.ndim != 3 or image.shape[1:] != SOURCE_SHAPE:
            raise InputError(f"{path}: {where}.image has shape {image.shape}, expected (N, 36, 60)")
        if image.dtype != np.uint8:
            if image.dtype.kind not in "uif":
                raise InputError(f"{path}: {where}.image has dtype {image.dtype}")
            image = np.clip(np.rint(image.astype(np.float64)), 0, 255).astype(np.uint8)
        for name, values in (("gaze", gaze), ("pose", pose)):
            if values.shape != (len(image), 3):
                raise InputError(
                    f"{path}: {where}.{name} has shape {values.shape} for {len(image)} images, "
                    f"expected ({len(image)}, 3)"
                )
            bad = ~np.isfinite(values).all(axis=1)
            if name == "gaze":
                bad |= np.linalg.norm(np.nan_to_num(values), axis=1) == 0  # no direction
            if bad.any():
                frames = np.flatnonzero(bad) + 1  # numbered from 1, as the evaluation lists do
                raise InputError(
                    f"{path}: {where}.{name} of frame {frames[0]} is {values[frames[0] - 1]}"
                    f"{f' (and {len(frames) - 1} more frames)' if len(frames) > 1 else ''}; "
                    "convert without that day, or fix it"
                )
        eyes[side] = (image, gaze, pose)
    return eyes


def _batch(images: np.ndarray, gaze: np.ndarray, pose: np.ndarray, right: np.ndarray) -> Batch:
    """Eyes (N, 36, 60) with raw labels; ``right`` (N,) bool marks eyes to mirror."""
    images = np.where(right[:, None, None], images[:, :, ::-1], images)  # (N, 36, 60)
    gaze = np.where(right[:, None], mirror_gaze(gaze), unit_gaze(gaze))  # (N, 3)
    pose = np.where(right[:, None], mirror_rotation_vector(pose), pose).astype(np.float32)
    labels = {"gaze": gaze, "pitchyaw": pitchyaw_from_vector(gaze), "head_pose": pose}
    return resize_batch(images, SHAPE), labels  # (N, 35, 55)


def _convert_day(path: str) -> Batch:
    day = load_day(Path(path))
    parts = [day["left"], day["right"]]
    right = np.repeat([False, True], [len(p[0]) for p in parts])
    return _batch(*(np.concatenate([p[i] for p in parts]) for i in range(3)), right)


def _convert_listed(task: tuple[str, Sequence[tuple[str, int, str]], str]) -> Batch:
    person_dir, samples, listing = task
    cache: OrderedDict[str, dict[str, Eye]] = OrderedDict()
    picked: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for day, frame, side in samples:
        if day not in cache:
            path = Path(person_dir, f"{day}.mat")
            if not path.is_file():
                raise InputError(f"{listing}: lists {day}/{frame:04d} {side}, but {path} does "
                                 "not exist")  # fmt: skip
            cache[day] = load_day(path)
            if len(cache) > _DAY_CACHE:
                cache.popitem(last=False)
        image, gaze, pose = cache[day][side]
        if not 1 <= frame <= len(image):  # listed frames are numbered from 1
            raise InputError(
                f"{listing}: {day}/{frame:04d} {side}: {day}.mat has {len(image)} frames"
            )
        picked.append((image[frame - 1], gaze[frame - 1], pose[frame - 1]))
    right = np.array([side == "right" for _, _, side in samples])
    return _batch(*(np.stack([p[i] for p in picked]) for i in range(3)), right)


def _normalized_dir(root: Path) -> Path:
    existing(root, "directory")
    for candidate in (root / NORMALIZED, root / "Normalized", root):
        if any(candidate.glob("p*/day*.mat")):
            return candidate
    raise InputError(f"{root}: no {NORMALIZED}/pXX/dayYY.mat files found")


def _numbered(paths: Sequence[Path]) -> list[Path]:
    # "p2" before "p10", "day9" before "day10".
    return sorted(paths, key=lambda p: (int(re.sub(r"\D", "", p.stem) or -1), p.name))


def convert_mpiigaze(root: str | Path, output: Output, subset: str = "all") -> Manifest:
    """Convert MPIIGaze (all normalised frames, or the evaluation subset) into a shard set."""
    root = Path(root)
    normalized = _normalized_dir(root)
    if subset == "all":
        days = [
            str(day)
            for person in _numbered([p for p in normalized.glob("p*") if p.is_dir()])
            for day in _numbered(list(person.glob("day*.mat")))
        ]
        fn: Any = _convert_day
        tasks: list[Any] = days
        total = None  # frames per day are known only after loading
    elif subset == "evaluation":
        listings = _numbered(list((root / EVALUATION).glob("p*.txt")))
        if not listings:
            raise InputError(f"{root / EVALUATION}: no pXX.txt evaluation lists found")
        tasks, total = [], 0
        for listing in listings:
            samples = _parse_listing(listing)
            if output.limit is not None:
                samples = samples[: max(output.limit - total, 0)]
            if samples:
                tasks.append((str(normalized / listing.stem), samples, str(listing)))
                total += len(samples)
        fn = _convert_listed
    else:
        raise ValueError(f"unknown subset {subset!r}; expected 'all' or 'evaluation'")
    return write_tasks(
        output,
        fn,
        tasks,
        image_shape=SHAPE,
        labels=LABELS,
        source={"name": NAME, "input": str(root), "subset": subset, "right_eyes": "mirrored"},
        total=total,
        desc=f"mpiigaze {subset}",
    )


def _parse_listing(path: Path) -> list[tuple[str, int, str]]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read: {e}") from None
    samples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line.strip())
        if match is None:
            raise InputError(
                f"{path}: line {number} is {line.strip()!r}, expected like 'day08/0069.jpg left'"
            )
        samples.append((match[1], int(match[2]), match[3]))
    return samples


def add_parser(sources: argparse._SubParsersAction) -> None:
    p = sources.add_parser(
        NAME,
        help="MPIIGaze normalised eyes, ROOT/Data/Normalized/pXX/dayYY.mat (to 35x55 grey)",
        description="Convert MPIIGaze's normalised eye images (36x60, resized to 35x55). Both "
        "eyes, right eyes flipped to look like left eyes. Labels: gaze (3), pitchyaw (2), "
        "head_pose (3).",
    )
    p.add_argument(
        "--input", type=Path, required=True, help="MPIIGaze root (holding Data/Normalized)"
    )
    p.add_argument(
        "--subset",
        choices=("all", "evaluation"),
        default="all",
        help="all frames (default), or the list in 'Evaluation Subset/sample list for eye "
        "image/pXX.txt'",
    )
    add_output_args(p)
    p.set_defaults(run=lambda a: convert_mpiigaze(a.input, output_from_args(a), a.subset))
