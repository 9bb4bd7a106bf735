"""``shards convert nyu``: NYU's layout to depth crops; every value checked against the fixture.

The fixture (``tests.fixtures_sources.write_nyu_dir``) writes NYU's files with a disc "hand"
around joint 32, a wall behind it, an object near it, and holes of 0 and 32001 on it. The crop
geometry is restated here independently of the converter: a box (u0, v0, u1, v1) of side s
shown at S x S pixels puts crop pixel i's centre at u0 - 0.5 + (i + 0.5) s / S, so nearest
neighbour shows source pixel u0 + floor((i + 0.5) s / S), and a source coordinate u lands at
(u - u0 + 0.5) S / s - 0.5.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from shards.cli import inspect_shard_set, main
from shards.depth import CUBE_MM, decode_depth
from shards.format import read_manifest
from shards.sources.nyu import MASK_PAD, read_depth_png
from tests.fixtures_sources import (
    NYU_FOCAL,
    NYU_NO_DEPTH,
    NYU_OBJECT_MM,
    assert_one_line_error,
    read_shard_set,
    shard_digests,
    write_nyu_dir,
    write_nyu_mat_v73,
    write_nyu_png,
)

STEP = CUBE_MM / 65534  # one depth code
FRAMES = 6


def convert(src: Path, out: Path, *extra: str) -> int:
    return main(["convert", "nyu", "--input", str(src), "--out", str(out), *extra])


def crops(src: Path, out: Path, *extra: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Convert, expecting success, and read every crop and label back."""
    assert convert(src, out, *extra) == 0
    return read_shard_set(out)


@pytest.fixture(scope="module")
def nyu(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("nyu") / "train"
    return root, write_nyu_dir(root, frames=FRAMES)


def shown(source: np.ndarray, box: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The source millimetres each crop pixel shows (nearest neighbour), and whether that
    source pixel is inside the 480x640 frame."""
    u0, v0, u1, v1 = (int(b) for b in box)
    assert u1 - u0 == v1 - v0 > 0 and np.array_equal(box, [u0, v0, u1, v1])
    picked = np.floor((np.arange(size) + 0.5) * (u1 - u0) / size).astype(int)  # (size,)
    rows, cols = v0 + picked, u0 + picked
    inside = ((rows >= 0) & (rows < 480))[:, None] & ((cols >= 0) & (cols < 640))[None, :]
    mm = source[np.clip(rows, 0, 479)[:, None], np.clip(cols, 0, 639)[None, :]]
    return mm.astype(np.float64), inside


def check_pixels(
    codes: np.ndarray,
    source: np.ndarray,
    box: np.ndarray,
    cz: float,
    *,
    render: bool = False,
    keep: tuple[float, float] | None = None,
) -> dict[str, int]:
    """Codes 0 where the crop leaves the frame or the sensor measured nothing (0, 32001),
    65535 for background (beyond the cube's far plane, a render's 32001, real depth outside
    ``keep``), and the source millimetres within one code step elsewhere. Returns how many
    pixels fell in each class, so that a caller can see the check was not vacuous."""
    mm, inside = shown(source, box, len(codes))
    none = (mm == 0) | (mm >= NYU_NO_DEPTH)
    invalid = ~inside | (none & (not render))
    far = ~invalid & (none | (mm > cz + CUBE_MM / 2))
    if keep is not None:
        far |= ~invalid & ~none & ((mm < keep[0]) | (mm > keep[1]))
    valid = ~invalid & ~far
    assert (codes[invalid] == 0).all()
    assert (codes[far] == 65535).all()
    assert (mm[valid] >= cz - CUBE_MM / 2).all()  # nothing in the fixtures is nearer
    error = np.abs(decode_depth(codes, cz)[valid] - mm[valid])
    assert error.max() <= STEP + 1e-3, error.max()
    return {
        "outside": int((~inside).sum()),
        "holes": int((inside & none & (not render)).sum()),
        "far": int(far.sum()),
        "valid": int(valid.sum()),
    }


def back_to_source(uvd_crop: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    side = box[2] - box[0]
    out = np.array(uvd_crop, dtype=np.float64)
    out[..., 0] = (out[..., 0] + 0.5) * side / size + box[0] - 0.5
    out[..., 1] = (out[..., 1] + 0.5) * side / size + box[1] - 0.5
    return out


def object_pixel(ref: dict, view: int, frame: int, box: np.ndarray, size: int) -> tuple[int, int]:
    """(row, column) of the crop pixel nearest the centre of the fixture's 4x4 object."""
    ov, ou = ref["object"][view, frame]
    side = box[2] - box[0]
    row, col = np.floor((np.array([ov + 1.5, ou + 1.5]) - box[[1, 0]] + 0.5) * size / side)
    return int(row), int(col)


def test_depth_png_decoding_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    depth = rng.integers(0, 65536, (480, 640)).astype(np.uint16)
    depth[0, :8] = [0, 1, 255, 256, 257, 4660, NYU_NO_DEPTH, 65535]
    write_nyu_png(tmp_path / "depth_1_0000001.png", depth, seed=1)  # R is noise, unused
    decoded = read_depth_png(tmp_path / "depth_1_0000001.png")
    assert decoded.dtype == np.uint16 and decoded.shape == (480, 640)
    np.testing.assert_array_equal(decoded, depth)


def test_cube_crops_views_in_order_joints_and_depth_back_to_the_source(
    nyu: tuple[Path, dict], tmp_path: Path
) -> None:
    root, ref = nyu
    images, labels = crops(root, tmp_path / "out", "--crop", "cube", "--views", "1,2,3")
    size = 224
    assert images.shape == (3 * FRAMES, 1, size, size) and images.dtype == np.uint16
    # Frame-major: each frame's three views, then the next frame.
    assert labels["view"][:, 0].tolist() == [1, 2, 3] * FRAMES
    assert labels["frame"][:, 0].tolist() == [f for f in range(FRAMES) for _ in range(3)]
    f_mean = (NYU_FOCAL[0] + NYU_FOCAL[1]) / 2
    for k, (view, frame) in enumerate(np.hstack([labels["view"], labels["frame"]]).tolist()):
        uvd = ref["joint_uvd"][view - 1, frame]  # (36, 3) source-frame pixels, mm
        palm = uvd[32]
        box = labels["box"][k]
        side = box[2] - box[0]
        np.testing.assert_allclose(labels["joints_xyz"][k], ref["joint_xyz"][view - 1, frame])
        np.testing.assert_allclose(labels["center"][k], palm, rtol=1e-6)
        # A 300 mm cube at the palm's depth, centred on the palm to within half a pixel.
        assert abs(side - CUBE_MM * f_mean / palm[2]) <= 0.5
        assert np.abs((box[:2] + box[2:] - 1) / 2 - palm[:2]).max() <= 0.5
        # Joints in crop pixels map back through the box to NYU's uvd; depth kept in mm.
        crop_uvd = labels["joints_uvd"][k]
        np.testing.assert_allclose(back_to_source(crop_uvd, box, size), uvd, atol=2e-3)
        # The crop is centred on the hand: the palm lands in the middle pixel.
        assert np.abs(crop_uvd[32, :2] - (size - 1) / 2).max() <= 0.5 * size / side + 1e-3
        codes = images[k, 0]
        counts = check_pixels(codes, ref["depth"][view, frame], box, palm[2])
        assert counts["holes"] >= 2 and counts["far"] > 0 and counts["valid"] > 0
        # A known pixel: the one under the palm holds the palm's depth, within the fixture's
        # rounding to whole millimetres plus a code step.
        u, v = np.rint(crop_uvd[32, :2]).astype(int)
        assert abs(decode_depth(codes[v, u], palm[2]) - palm[2]) <= 0.5 + 0.1 + STEP
        # The object 100 mm behind the palm is inside the cube, so the cube crop keeps it.
        object_mm = decode_depth(codes[object_pixel(ref, view, frame, box, size)], palm[2])
        assert abs(object_mm - (round(palm[2]) + NYU_OBJECT_MM)) <= STEP + 1e-3
        if (view, frame) == (1, 0):  # palm at u = 40: the crop leaves the frame on the left
            assert counts["outside"] > 0 and (codes[:, 0] == 0).all()


def test_mask_crop_is_the_renders_box_and_segments_real_depth(
    nyu: tuple[Path, dict], tmp_path: Path
) -> None:
    root, ref = nyu
    size = 112  # boxes of 100-160 pixels: both enlarged and reduced
    images, labels = crops(root, tmp_path / "out", "--views", "1,2,3", "--size", str(size))
    assert images.shape == (3 * FRAMES, 1, size, size)
    for k, (view, frame) in enumerate(np.hstack([labels["view"], labels["frame"]]).tolist()):
        render = ref["synth"][view, frame]
        hand = (render > 0) & (render < NYU_NO_DEPTH)
        rows, cols = np.flatnonzero(hand.any(axis=1)), np.flatnonzero(hand.any(axis=0))
        extent = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
        box = labels["box"][k]
        side = box[2] - box[0]
        # The render's bounding box, made square and widened by MASK_PAD on each side.
        assert side == math.ceil(extent * (1 + 2 * MASK_PAD))
        middle = np.array([cols[0] + cols[-1], rows[0] + rows[-1]]) / 2
        assert np.abs((box[:2] + box[2:] - 1) / 2 - middle).max() <= 0.5
        cz = labels["center"][k, 2]
        assert cz == pytest.approx(np.median(render[hand]))
        np.testing.assert_allclose(labels["center"][k, :2], middle)
        uvd = ref["joint_uvd"][view - 1, frame]
        np.testing.assert_allclose(
            back_to_source(labels["joints_uvd"][k], box, size), uvd, atol=2e-3
        )
        # Real depth on the disc is kept; the wall and the object 100 mm behind the palm lie
        # outside the render's depth range, so they are background (65535).
        keep = (render[hand].min() - 30.0, render[hand].max() + 30.0)
        codes = images[k, 0]
        counts = check_pixels(codes, ref["depth"][view, frame], box, cz, keep=keep)
        assert counts["holes"] >= 2 and counts["far"] > 0 and counts["valid"] > 0
        assert codes[object_pixel(ref, view, frame, box, size)] == 65535
        if (view, frame) == (1, 0):  # the disc is cut by the frame's left edge
            assert counts["outside"] > 0 and (codes[:, 0] == 0).all()


def test_synthetic_depth_has_no_holes_and_far_background(
    nyu: tuple[Path, dict], tmp_path: Path
) -> None:
    root, ref = nyu
    images, labels = crops(root, tmp_path / "out", "--depth", "synth", "--size", "64")
    assert labels["view"][:, 0].tolist() == [1] * FRAMES  # --views 1 is the default
    assert labels["frame"][:, 0].tolist() == list(range(FRAMES))
    for k in range(FRAMES):
        render = ref["synth"][1, k]
        counts = check_pixels(
            images[k, 0], render, labels["box"][k], labels["center"][k, 2], render=True
        )
        assert counts["holes"] == 0 and counts["far"] > 0 and counts["valid"] > 0
    assert read_manifest(tmp_path / "out").source["depth"] == "synth"


def test_workers_give_byte_identical_shards_and_limit_takes_the_first(
    nyu: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, _ = nyu
    args = ["--views", "1,2,3", "--size", "32", "--block-size", "4", "--shard-size", "8"]
    assert convert(root, tmp_path / "w1", *args) == 0
    assert convert(root, tmp_path / "w2", *args, "--workers", "2") == 0
    one, two = shard_digests(tmp_path / "w1"), shard_digests(tmp_path / "w2")
    assert len(one) == 3 and one == two
    assert convert(root, tmp_path / "l5", *args, "--limit", "5", "--workers", "2") == 0
    full, limited = read_shard_set(tmp_path / "w1"), read_shard_set(tmp_path / "l5")
    np.testing.assert_array_equal(limited[0], full[0][:5])
    for name, values in limited[1].items():
        np.testing.assert_array_equal(values, full[1][name][:5])
    m = inspect_shard_set(tmp_path / "w1", out=lambda line: None)
    assert m.image_dtype == "uint16" and m.count == 18 and m.labelled
    assert m.source["views"] == [1, 2, 3] and m.source["crop"] == "mask"


def test_v73_joint_data_gives_the_same_shards(nyu: tuple[Path, dict], tmp_path: Path) -> None:
    root, ref = nyu
    copy = tmp_path / "train"
    shutil.copytree(root, copy)
    write_nyu_mat_v73(copy / "joint_data.mat", ref["joint_uvd"], ref["joint_xyz"])
    args = ["--views", "1,2,3", "--crop", "cube", "--size", "32"]
    assert convert(root, tmp_path / "v5", *args) == 0
    assert convert(copy, tmp_path / "v73", *args) == 0
    assert shard_digests(tmp_path / "v5") == shard_digests(tmp_path / "v73")


def test_cube_crop_needs_no_renders(tmp_path: Path) -> None:
    write_nyu_dir(tmp_path / "test", frames=2, views=(1,), synth=False)
    assert convert(tmp_path / "test", tmp_path / "out", "--crop", "cube", "--size", "16") == 0
    assert read_manifest(tmp_path / "out").count == 2


def _png(root: Path, name: str) -> Path:
    return root / f"{name}.png"


def _save_mat(root: Path, **arrays: np.ndarray) -> None:
    scipy.io.savemat(root / "joint_data.mat", arrays)


def _wrong_size(root: Path) -> None:
    Image.new("RGB", (320, 240)).save(_png(root, "depth_1_0000002"))


def _truncate(root: Path) -> None:
    path = _png(root, "depth_1_0000002")
    path.write_bytes(path.read_bytes()[:200])


def _empty_render(root: Path) -> None:
    write_nyu_png(_png(root, "synthdepth_1_0000001"), np.full((480, 640), NYU_NO_DEPTH))


J = np.zeros((3, 2, 36, 3)) + 600.0  # joints of the right shape for 2 frames


def _nan_at(view: int, frame: int, joint: int) -> np.ndarray:
    joints = J.copy()
    joints[view, frame, joint, 2] = np.nan
    return joints


Case = tuple[Callable[[Path], object], list[str], Callable[[Path], str], str]
BAD_INPUTS: dict[str, Case] = {
    "no joint_data.mat": (
        lambda r: (r / "joint_data.mat").unlink(),
        [],
        lambda r: f"{r / 'joint_data.mat'}: ",
        "does not exist",
    ),
    "corrupt joint_data.mat": (
        lambda r: (r / "joint_data.mat").write_bytes(b"MATLAB? no" * 30),
        [],
        lambda r: f"{r / 'joint_data.mat'}: ",
        "cannot read .mat file",
    ),
    "no joint_xyz": (
        lambda r: _save_mat(r, joint_uvd=J),
        [],
        lambda r: f"{r / 'joint_data.mat'}: ",
        "missing key joint_xyz",
    ),
    "14 joints": (
        lambda r: _save_mat(r, joint_uvd=J[:, :, :14], joint_xyz=J[:, :, :14]),
        [],
        lambda r: f"{r / 'joint_data.mat'}: ",
        "joint_uvd has shape (3, 2, 14, 3), expected (3, N, 36, 3)",
    ),
    "xyz for other frames": (
        lambda r: _save_mat(r, joint_uvd=J, joint_xyz=np.zeros((3, 3, 36, 3))),
        [],
        lambda r: f"{r / 'joint_data.mat'}: ",
        "joint_xyz has shape (3, 3, 36, 3), joint_uvd (3, 2, 36, 3)",
    ),
    "a NaN joint": (
        lambda r: _save_mat(r, joint_uvd=J, joint_xyz=_nan_at(1, 1, 5)),
        [],
        lambda r: f"{r / 'joint_data.mat'}: ",
        "joint_xyz of view 2, frame 2 is not finite",
    ),
    "truncated png": (
        _truncate,
        ["--workers", "2"],
        lambda r: f"{_png(r, 'depth_1_0000002')}: ",
        "cannot read image",
    ),
    "text as png": (
        lambda r: _png(r, "synthdepth_1_0000001").write_text("not a png"),
        ["--workers", "2"],
        lambda r: f"{_png(r, 'synthdepth_1_0000001')}: ",
        "cannot read image",
    ),
    "320x240 png": (
        _wrong_size,
        [],
        lambda r: f"{_png(r, 'depth_1_0000002')}: ",
        "is a 320x240 RGB image, expected 640x480 RGB",
    ),
    "labelled frame without png": (
        lambda r: _png(r, "depth_1_0000002").unlink(),
        [],
        lambda r: f"{_png(r, 'depth_1_0000002')}: missing; {r / 'joint_data.mat'} labels 2 ",
        "frames",
    ),
    "png without labels": (
        lambda r: shutil.copy(_png(r, "depth_1_0000002"), _png(r, "depth_1_0000003")),
        [],
        lambda r: f"{_png(r, 'depth_1_0000003')}: ",
        "frame 3 has no labels; ",
    ),
    "a render missing": (
        lambda r: _png(r, "synthdepth_1_0000002").unlink(),
        [],
        lambda r: f"{_png(r, 'synthdepth_1_0000002')}: ",
        "missing; ",
    ),
    "no renders for --crop mask": (
        lambda r: [p.unlink() for p in r.glob("synthdepth_*.png")],
        [],
        lambda r: f"{r}: ",
        "no synthdepth_1_NNNNNNN.png files (--crop mask takes the hand mask from them",
    ),
    "an empty render": (
        _empty_render,
        [],
        lambda r: f"{_png(r, 'synthdepth_1_0000001')}: ",
        "no hand pixels",
    ),
    "a view with no files": (
        lambda r: None,
        ["--views", "1,2"],
        lambda r: f"{r}: ",
        "no depth_2_NNNNNNN.png files (view 2 asked for with --views)",
    ),
    "no such folder": (
        lambda r: shutil.rmtree(r),
        [],
        lambda r: f"{r}: ",
        "does not exist",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    damage, args, where, message = BAD_INPUTS[case]
    root = tmp_path / "test"
    write_nyu_dir(root, frames=2, views=(1,))
    damage(root)
    assert convert(root, tmp_path / "out", "--size", "16", *args) == 2
    assert_one_line_error(capsys.readouterr().err, where(root), message)
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("views", ["4", "0", "1,1", "front", ""])
def test_bad_views_are_a_usage_error(views: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "nyu", "--input", "x", "--out", "y", "--views", views])
    assert exit_info.value.code == 2
    assert "expected views among 1, 2, 3" in capsys.readouterr().err


def test_renders_converted_as_sensor_depth_are_warned_about(tmp_path: Path, capsys) -> None:
    """A folder of clean renders (depth_1 the same as synthdepth_1) converted as sensor depth:
    every pixel off the hand becomes invalid instead of background, which the converter says;
    as does a folder whose crops are mostly without depth."""
    import shutil

    root = tmp_path / "renders"
    write_nyu_dir(root, frames=2, views=(1,))
    for f in (1, 2):
        shutil.copy(root / f"synthdepth_1_{f:07d}.png", root / f"depth_1_{f:07d}.png")
    capsys.readouterr()
    assert convert(root, tmp_path / "a", "--size", "32") == 0
    err = capsys.readouterr().err
    assert f"shards: warning: {root}: its depth_* frames equal its synthdepth_* renders" in err
    assert "--depth synth" in err
    assert convert(root, tmp_path / "b", "--size", "32", "--depth", "synth") == 0
    assert "warning" not in capsys.readouterr().err
    images, _ = read_shard_set(tmp_path / "a")
    assert (images == 0).mean() > 0.4  # what the warning is about: all but the hand
    # Renders one millimetre off their synthdepth twins: not equal, and in a cube round the
    # palm mostly invalid.
    for f in (1, 2):
        depth = read_depth_png(root / f"synthdepth_1_{f:07d}.png").astype(np.int64)
        write_nyu_png(root / f"depth_1_{f:07d}.png", np.where(depth < 32001, depth + 1, depth))
    assert convert(root, tmp_path / "c", "--size", "32", "--crop", "cube") == 0
    assert "2 of the first 2 crops are mostly without depth" in capsys.readouterr().err
    # A sensor's frames (the fixture's own) draw no warning.
    write_nyu_dir(tmp_path / "sensor", frames=2, views=(1,))
    assert convert(tmp_path / "sensor", tmp_path / "d", "--size", "32", "--crop", "cube") == 0
    assert "warning" not in capsys.readouterr().err
