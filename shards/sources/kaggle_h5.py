"""Source ``kaggle-h5``: the Kaggle "eye-gaze" files ``gaze.h5`` and ``real_gaze.h5``.

Layout (FORMATS.md): ``image`` is a Group with one (35, 55) dataset per image, named "0", "1",
... (a single (N, 35, 55) dataset is accepted too); ``look_vec`` (N, 3 or 4) is UnityEyes'
gaze, present in ``gaze.h5`` only. Without ``look_vec`` the set is written unlabelled.

Pairing (``pair_names``): image i is the dataset whose name holds the number i, the names
being one number each with the same text around it ("12", "img_12", "eye-00012.png"), and
the numbers exactly 0..N-1 or 1..N for N label rows. A Group whose names do not pair that
way with ``look_vec`` one to one is refused: iterating it gives string order ("10" before
"2"), which would pair images with the wrong labels.

Pixels (``to_uint8``): uint8 as stored; other numbers in 0..255 as those levels (a float's
fractions rounded to the nearest level), except that a float image within [0, 1] is taken as
fractions of full scale (x 255, rounded). Anything else (values outside 0..255, a float image
of only 0 and 1, which could be either, NaN) is refused, naming the image: clipping or
truncating it would change the eye without a word.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import h5py
import numpy as np

from shards.format import Manifest
from shards.gaze import pitchyaw_from_vector, unityeyes_to_mpiigaze
from shards.sources.common import (
    Batch,
    InputError,
    Output,
    add_output_args,
    existing,
    numeric_sort,
    output_from_args,
    write_tasks,
)

NAME = "kaggle-h5"
SHAPE = (35, 55)
LABELS = {
    "gaze": ((3,), "float32", "unit gaze vector, MPIIGaze normalised camera coords (shards.gaze)"),
    "pitchyaw": ((2,), "float32", "gaze (pitch, yaw) in radians (shards.gaze convention)"),
}
# Images per task: large enough that opening the file per task costs nothing.
_CHUNK = 2048

# (file, Group member names or a (start, stop) range of a 3-D dataset, {label: (n, ...)})
Task = tuple[str, list[str] | tuple[int, int], dict[str, np.ndarray]]


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: cannot read as HDF5: {' '.join(str(e).split())}") from None


def to_uint8(a: np.ndarray, where: str) -> np.ndarray:
    """Stored pixels -> uint8 by the module docstring's rule; InputError naming `where`."""
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind not in "uif":
        raise InputError(f"{where}: has dtype {a.dtype}, expected numbers")
    x = a.astype(np.float64)
    if not np.isfinite(x).all():
        raise InputError(f"{where}: has non-finite pixels (NaN or infinity)")
    lo, hi = float(x.min()), float(x.max())
    whole = bool((x == np.rint(x)).all())
    if lo >= 0 and hi <= 255 and (hi > 1 or a.dtype.kind != "f"):
        return np.rint(x).astype(np.uint8)  # 0-255 levels (a float's fractions rounded)
    if lo >= 0 and hi <= 1 and not whole:
        return np.rint(x * 255).astype(np.uint8)  # fractions of full scale
    if lo >= 0 and hi <= 1:
        raise InputError(f"{where}: holds only {sorted(set(np.unique(x).tolist()))}: 0-255 "
                         "levels or 0-1 fractions? Convert it to uint8 first")  # fmt: skip
    raise InputError(
        f"{where}: pixel values span [{lo:g}, {hi:g}], neither 0-255 levels nor 0-1 fractions"
    )


def pair_names(names: list[str], rows: int | None, where: str) -> list[str]:
    """The Group's names in image order (module docstring); `rows`: label rows to pair with
    (None: unlabelled, any names in that order or else string order)."""
    parsed = [re.fullmatch(r"(\D*)(\d+)(\D*)", n) for n in names]
    framing = {(m[1], m[3]) for m in parsed if m is not None}
    if all(m is not None for m in parsed) and len(framing) == 1:
        numbers = sorted((int(m[2]), n) for m, n in zip(parsed, names, strict=True))  # type: ignore[index]
        values = [v for v, _ in numbers]
        first = values[0] if values else 0
        if values == list(range(first, first + len(values))) and first in (0, 1):
            return [n for _, n in numbers]
    if rows is None:
        return numeric_sort(names)  # nothing to mislabel
    shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
    raise InputError(
        f"{where}: image names ({shown}) are not one number each, 0..N-1 or 1..N with the same "
        f"text around it, so they cannot be paired one to one with the {rows} look_vec rows"
    )


def _read(task: Task) -> Batch:
    path, which, labels = task
    with _open(Path(path)) as f:
        if isinstance(which, tuple):  # one (N, 35, 55) dataset
            images = f["image"][which[0] : which[1]]
            where = f"{path}: image[{which[0]}:{which[1]}]"
            return to_uint8(images, where), labels
        gid = f["image"].id
        out = np.empty((len(which), *SHAPE), np.uint8)  # (n, 35, 55)
        for i, name in enumerate(which):
            # The low-level API: h5py's high-level Dataset costs ~2x more per tiny image.
            ds = h5py.h5d.open(gid, name.encode())
            shape = ds.shape
            if shape != SHAPE:
                raise InputError(f"{path}: image/{name} has shape {shape}, expected {SHAPE}")
            if ds.dtype == np.uint8:
                ds.read(h5py.h5s.ALL, h5py.h5s.ALL, out[i])
            elif ds.dtype.kind in "uif":
                buf = np.empty(SHAPE, ds.dtype)
                ds.read(h5py.h5s.ALL, h5py.h5s.ALL, buf)
                out[i] = to_uint8(buf, f"{path}: image/{name}")
            else:
                raise InputError(f"{path}: image/{name} has dtype {ds.dtype}, expected numbers")
        return out, labels


def convert_kaggle_h5(input_path: str | Path, output: Output) -> Manifest:
    """Convert ``gaze.h5`` (labelled) or ``real_gaze.h5`` (unlabelled) into a shard set."""
    path = existing(Path(input_path), "file")
    with _open(path) as f:
        if "image" not in f:
            raise InputError(f"{path}: no key 'image' (keys: {', '.join(sorted(f.keys()))})")
        image = f["image"]
        if isinstance(image, h5py.Group):
            names: list[str] | None = list(image.keys())
            count = len(names)
        elif isinstance(image, h5py.Dataset) and image.shape[1:] == SHAPE:
            names, count = None, image.shape[0]
        else:
            raise InputError(
                f"{path}: 'image' is {type(image).__name__} of shape "
                f"{getattr(image, 'shape', None)}, expected a Group of {SHAPE} datasets"
            )
        if count == 0:
            raise InputError(f"{path}: 'image' holds no images")
        look_vec = f["look_vec"][()] if "look_vec" in f else None

    labels: dict[str, np.ndarray] = {}
    if look_vec is not None:
        if look_vec.ndim != 2 or look_vec.shape[1] not in (3, 4):
            raise InputError(f"{path}: look_vec has shape {look_vec.shape}, expected (N, 3 or 4)")
        if len(look_vec) != count:
            raise InputError(f"{path}: {count} images but look_vec has {len(look_vec)} rows")
        try:
            gaze = unityeyes_to_mpiigaze(look_vec)  # (N, 3)
        except ValueError as e:
            raise InputError(f"{path}: look_vec: {e}") from None
        labels = {"gaze": gaze, "pitchyaw": pitchyaw_from_vector(gaze)}
    if names is not None:
        names = pair_names(names, count if labels else None, str(path))

    if output.limit is not None:
        count = min(count, output.limit)
    tasks: list[Task] = []
    for start in range(0, count, _CHUNK):
        stop = min(start + _CHUNK, count)
        which = names[start:stop] if names is not None else (start, stop)
        tasks.append((str(path), which, {k: v[start:stop] for k, v in labels.items()}))
    return write_tasks(
        output,
        _read,
        tasks,
        image_shape=SHAPE,
        labels={k: LABELS[k] for k in labels},
        source={"name": NAME, "input": str(path)},
        total=count,
        desc=path.name,
        labelled=bool(labels),
    )


def add_parser(sources: argparse._SubParsersAction) -> None:
    p = sources.add_parser(
        NAME,
        help="Kaggle eye-gaze gaze.h5 / real_gaze.h5 (35x55 grey)",
        description="Convert the Kaggle 'eye-gaze' HDF5 files: gaze.h5 (UnityEyes, labelled: "
        "gaze (3) and pitchyaw (2) from look_vec) or real_gaze.h5 (MPIIGaze, unlabelled).",
    )
    p.add_argument("--input", type=Path, required=True, help="gaze.h5 or real_gaze.h5")
    add_output_args(p)
    p.set_defaults(run=lambda a: convert_kaggle_h5(a.input, output_from_args(a)))
