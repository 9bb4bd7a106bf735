"""``shards convert mpiigaze``: both eyes, mirroring, 1-frame days, resize, evaluation subset."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from shards.cli import main
from shards.format import read_manifest
from shards.sources.common import resize_batch
from tests.fixtures_sources import (
    assert_one_line_error,
    read_shard_set,
    write_mpiigaze_day,
    write_mpiigaze_root,
)


def convert(src: Path, out: Path, *extra: str) -> int:
    return main(["convert", "mpiigaze", "--input", str(src), "--out", str(out), *extra])


def test_all_frames_both_eyes_with_a_one_frame_day(tmp_path: Path) -> None:
    # Day 2 has a single frame: loadmat(squeeze_me=True) gives it as 2-D / 1-D arrays.
    ref = write_mpiigaze_root(tmp_path / "MPIIGaze", people=2, days=2, per_day=[4, 1], seed=3)
    assert convert(tmp_path / "MPIIGaze", tmp_path / "out") == 0
    images, labels = read_shard_set(tmp_path / "out")
    assert images.shape == (20, 1, 35, 55)  # 2 people x (4 + 1) frames x 2 eyes
    # 35x55 -> 36x60 (fixture) -> 35x55: the same eye, and right eyes flipped back.
    diff = np.abs(images[:, 0].astype(float) - ref["image"])  # (20, 35, 55)
    assert diff.mean() < 5.0, diff.mean()  # the fixture's sensor noise does not survive resizing
    dist = np.abs(images[:, None, 0].astype(float) - ref["image"][None]).mean(axis=(2, 3))
    assert dist.argmin(axis=1).tolist() == list(range(20))  # order, and right eyes unflipped
    np.testing.assert_allclose(labels["gaze"], ref["gaze"], atol=1e-6)
    np.testing.assert_allclose(labels["pitchyaw"], ref["pitchyaw"], atol=1e-5)
    np.testing.assert_allclose(labels["head_pose"], ref["head_pose"], atol=1e-6)
    m = read_manifest(tmp_path / "out")
    assert m.labelled and set(m.labels) == {"gaze", "pitchyaw", "head_pose"}
    assert m.source["subset"] == "all" and m.source["right_eyes"] == "mirrored"


def test_known_gaze_and_right_eye_mirroring(tmp_path: Path) -> None:
    # Left half dark: after mirroring a right eye, the right half is dark.
    image = np.full((1, 36, 60), 200, np.uint8)
    image[:, :, :30] = 10
    gaze = np.array([[0.48, -0.6, -0.64]])  # unit; MPIIGaze is already our convention
    pose = np.array([[0.1, 0.2, 0.3]])
    day = tmp_path / "root" / "Data" / "Normalized" / "p00" / "day01.mat"
    write_mpiigaze_day(day, (image, gaze, pose), (image, gaze, pose))
    assert convert(tmp_path / "root", tmp_path / "out") == 0
    images, labels = read_shard_set(tmp_path / "out")
    left, right = images[:, 0]  # (35, 55) each
    assert left[:, :25].max() < 30 and left[:, 30:].min() > 180
    assert right[:, 30:].max() < 30 and right[:, :25].min() > 180
    # pitch = asin(-y) = asin(0.6); yaw = atan2(-x, -z) = atan2(-0.48, 0.64) = -asin(0.6).
    a = math.asin(0.6)
    np.testing.assert_allclose(labels["gaze"], [[0.48, -0.6, -0.64], [-0.48, -0.6, -0.64]], 1e-6)
    np.testing.assert_allclose(labels["pitchyaw"], [[a, -a], [a, a]], atol=1e-6)
    # Mirroring a head rotation vector keeps its x (pitch) and negates y and z.
    np.testing.assert_allclose(labels["head_pose"], [[0.1, 0.2, 0.3], [0.1, -0.2, -0.3]], 1e-6)


def test_resize_matches_pil_bilinear() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 36, 60), dtype=np.uint8)
    ours = resize_batch(images, (35, 55))
    pil = np.stack(
        [
            np.asarray(Image.fromarray(im).resize((55, 35), Image.Resampling.BILINEAR))
            for im in images
        ]
    )
    assert np.abs(ours.astype(int) - pil).max() <= 1


def test_evaluation_subset_in_list_order(tmp_path: Path) -> None:
    ref = write_mpiigaze_root(tmp_path / "MPIIGaze", people=2, days=3, per_day=3)
    assert convert(tmp_path / "MPIIGaze", tmp_path / "out", "--subset", "evaluation") == 0
    images, labels = read_shard_set(tmp_path / "out")
    expected = ref["evaluation"]
    assert len(images) == len(expected["gaze"]) == 18
    np.testing.assert_allclose(labels["gaze"], expected["gaze"], atol=1e-6)
    np.testing.assert_allclose(labels["head_pose"], expected["head_pose"], atol=1e-6)
    assert np.abs(images[:, 0].astype(float) - expected["image"]).mean() < 5.0
    assert read_manifest(tmp_path / "out").source["subset"] == "evaluation"


def _day(root: Path) -> Path:
    return root / "Data" / "Normalized" / "p00" / "day01.mat"


def _rewrite(root: Path, change) -> None:
    mat = scipy.io.loadmat(_day(root), simplify_cells=True)
    change(mat["data"])
    scipy.io.savemat(_day(root), {"data": mat["data"]})


def _short_gaze(data: dict) -> None:
    data["left"]["gaze"] = data["left"]["gaze"][:2]


def _nan_gaze(data: dict) -> None:
    data["right"]["gaze"][1] = np.nan


def _zero_gaze(data: dict) -> None:
    data["left"]["gaze"][2] = 0.0


def _wrong_image_shape(data: dict) -> None:
    data["right"]["image"] = np.zeros((3, 36, 61), np.uint8)


@pytest.mark.parametrize(
    ("damage", "file", "message"),
    [
        (lambda r: _rewrite(r, lambda d: d.pop("left")), "day01.mat", "missing data.left"),
        (lambda r: scipy.io.savemat(_day(r), {"other": 1}), "day01.mat", "missing key data"),
        (lambda r: _rewrite(r, _short_gaze), "day01.mat", "data.left.gaze has shape (2, 3) for 3"),
        (
            lambda r: _rewrite(r, _wrong_image_shape),
            "day01.mat",
            "data.right.image has shape (3, 36, 61), expected (N, 36, 60)",
        ),
        (lambda r: _day(r).write_bytes(b"MATLAB? no" * 20), "day01.mat", "cannot read .mat file"),
        (lambda r: _rewrite(r, _nan_gaze), "day01.mat", "data.right.gaze of frame 2 is [nan"),
        (lambda r: _rewrite(r, _zero_gaze), "day01.mat", "data.left.gaze of frame 3 is [0. 0. 0.]"),
    ],
)
def test_bad_day_files_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, damage, file: str, message: str
) -> None:
    root = tmp_path / "MPIIGaze"
    write_mpiigaze_root(root, people=1, days=2, per_day=3)
    damage(root)
    assert convert(root, tmp_path / "out", "--workers", "2") == 2
    assert_one_line_error(capsys.readouterr().err, f"{_day(root)}: ", message)


def test_bad_evaluation_lists_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "MPIIGaze"
    write_mpiigaze_root(root, people=1, days=1, per_day=3)
    listing = root / "Evaluation Subset" / "sample list for eye image" / "p00.txt"
    listing.write_text("day01/0001.jpg left\nday01/0009.jpg right\n")
    assert convert(root, tmp_path / "out", "--subset", "evaluation") == 2
    assert_one_line_error(capsys.readouterr().err, f"{listing}: ", "day01.mat has 3 frames")
    listing.write_text("day01/0001.jpg left\nday01 0002 up\n")
    assert convert(root, tmp_path / "out", "--subset", "evaluation") == 2
    assert_one_line_error(capsys.readouterr().err, f"{listing}: line 2 is 'day01 0002 up'")
    listing.write_text("day01/0001.jpg left\nday07/0002.jpg right\n")  # no day07.mat
    assert convert(root, tmp_path / "out", "--subset", "evaluation") == 2
    missing = listing.parent.parent.parent / "Data" / "Normalized" / "p00" / "day07.mat"
    assert_one_line_error(capsys.readouterr().err, f"{listing}: lists day07/0002 right, but "
                          f"{missing} does not exist")  # fmt: skip


def test_empty_and_missing_roots(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty" / "Data" / "Normalized").mkdir(parents=True)
    assert convert(tmp_path / "empty", tmp_path / "out") == 2
    assert_one_line_error(capsys.readouterr().err, f"{tmp_path / 'empty'}: no Data/Normalized")
    assert convert(tmp_path / "nope", tmp_path / "out") == 2
    assert_one_line_error(capsys.readouterr().err, f"{tmp_path / 'nope'}: does not exist")
