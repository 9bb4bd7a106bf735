"""``shards convert kaggle-h5``: layout, numeric key order, gaze convention, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from shards.cli import main
from shards.format import read_manifest
from tests.fixtures_sources import assert_one_line_error, read_shard_set, write_kaggle_h5


def convert(src: Path, out: Path, *extra: str) -> int:
    return main(["convert", "kaggle-h5", "--input", str(src), "--out", str(out), *extra])


def test_labelled_set_keeps_images_in_numeric_key_order(tmp_path: Path) -> None:
    # 12 images: string order would put "10" and "11" before "2".
    ref = write_kaggle_h5(tmp_path / "gaze.h5", 12, seed=1)
    assert convert(tmp_path / "gaze.h5", tmp_path / "out", "--block-size", "5") == 0
    images, labels = read_shard_set(tmp_path / "out")
    np.testing.assert_array_equal(images[:, 0], ref["image"])
    np.testing.assert_allclose(labels["gaze"], ref["gaze"], atol=1e-6)
    np.testing.assert_allclose(labels["pitchyaw"], ref["pitchyaw"], atol=1e-5)
    m = read_manifest(tmp_path / "out")
    assert m.labelled and set(m.labels) == {"gaze", "pitchyaw"}
    assert m.source["name"] == "kaggle-h5"


@pytest.mark.parametrize("columns", [3, 4])
def test_known_look_vec(tmp_path: Path, columns: int) -> None:
    # UnityEyes (x, y, z) -> ours (x, -y, -z) (FORMATS.md); pitch = asin(-y), yaw = atan2(-x, -z).
    look = np.array([[0.5, 0.5, math.sqrt(0.5), 0.0], [0.0, 0.0, 2.0, 0.0]])[:, :columns]
    with h5py.File(tmp_path / "gaze.h5", "w") as f:
        for i in range(2):
            f.create_dataset(f"image/{i}", data=np.full((35, 55), 7 * i, np.uint8))
        f["look_vec"] = look
    assert convert(tmp_path / "gaze.h5", tmp_path / "out") == 0
    _, labels = read_shard_set(tmp_path / "out")
    np.testing.assert_allclose(labels["gaze"], [[0.5, -0.5, -0.70710678], [0, 0, -1]], atol=1e-6)
    # Looking up (y < 0) and right (x > 0): pitch +30 degrees, yaw atan2(-0.5, 0.7071).
    np.testing.assert_allclose(
        labels["pitchyaw"], [[math.pi / 6, -0.6154797], [0.0, 0.0]], atol=1e-6
    )


def test_float_images_as_levels_or_fractions(tmp_path: Path) -> None:
    ref = write_kaggle_h5(tmp_path / "fractions.h5", 6, dtype="float32", scale=1 / 255)
    assert convert(tmp_path / "fractions.h5", tmp_path / "a") == 0  # [0, 1]: x 255
    np.testing.assert_array_equal(read_shard_set(tmp_path / "a")[0][:, 0], ref["image"])
    with h5py.File(tmp_path / "real_gaze.h5", "w") as f:
        f["image/0"] = np.full((35, 55), 12.6)
        f["image/1"] = np.full((35, 55), 99.5, np.float32)
    assert convert(tmp_path / "real_gaze.h5", tmp_path / "b") == 0  # 0-255 levels
    images, labels = read_shard_set(tmp_path / "b")
    assert images.dtype == np.uint8 and labels == {}
    assert images[0, 0, 0, 0] == 13 and images[1, 0, 5, 5] == 100  # rint: half to even


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        ({"0": 12.0, "1": [-3.0, 255.4, 300.0]}, "image/1: pixel values span [-3, 300]"),
        ({"0": np.uint16(70), "1": np.uint16(4000)}, "image/1: pixel values span [0, 4000]"),
        ({"0": [0.0, 1.0]}, "image/0: holds only [0.0, 1.0]: 0-255 levels or 0-1 fractions?"),
        ({"0": [np.nan, 3.0]}, "image/0: has non-finite pixels"),
    ],
)
def test_pixels_it_cannot_read_exactly_are_refused(tmp_path, capsys, pixels, message) -> None:
    with h5py.File(tmp_path / "real_gaze.h5", "w") as f:
        for name, values in pixels.items():
            img = np.zeros((35, 55), np.asarray(values).dtype)
            img.flat[: np.size(values)] = values
            f[f"image/{name}"] = img
    assert convert(tmp_path / "real_gaze.h5", tmp_path / "out") == 2
    assert_one_line_error(capsys.readouterr().err, f"{tmp_path / 'real_gaze.h5'}: ", message)
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("name", ["img_{}", "eye-{:05d}.png", "{}"])
def test_images_pair_with_labels_by_the_number_in_their_name(tmp_path: Path, name: str) -> None:
    # 20 images: string order would pair "img_10" with the third label row.
    ref = write_kaggle_h5(tmp_path / "gaze.h5", 20, seed=2, name=name)
    assert convert(tmp_path / "gaze.h5", tmp_path / "out") == 0
    images, labels = read_shard_set(tmp_path / "out")
    np.testing.assert_array_equal(images[:, 0], ref["image"])
    np.testing.assert_allclose(labels["gaze"], ref["gaze"], atol=1e-6)


@pytest.mark.parametrize(
    "names", [["a", "b", "c"], ["img_0", "img_1", "img_3"], ["img_0", "eye_1", "img_2"]]
)
def test_names_that_do_not_pair_one_to_one_are_refused(tmp_path, capsys, names) -> None:
    with h5py.File(tmp_path / "gaze.h5", "w") as f:
        for n in names:
            f[f"image/{n}"] = np.zeros((35, 55), np.uint8)
        f["look_vec"] = np.tile([0.0, 0.0, 1.0, 0.0], (3, 1))
    assert convert(tmp_path / "gaze.h5", tmp_path / "out") == 2
    assert_one_line_error(capsys.readouterr().err, f"{tmp_path / 'gaze.h5'}: image names",
                          "cannot be paired one to one with the 3 look_vec rows")  # fmt: skip
    with h5py.File(tmp_path / "gaze.h5", "a") as f:
        del f["look_vec"]  # unlabelled: nothing to mislabel, any names will do
    assert convert(tmp_path / "gaze.h5", tmp_path / "out") == 0


def test_unlabelled_without_look_vec(tmp_path: Path) -> None:
    ref = write_kaggle_h5(tmp_path / "real_gaze.h5", 20, labelled=False)
    assert convert(tmp_path / "real_gaze.h5", tmp_path / "out", "--limit", "7") == 0
    m = read_manifest(tmp_path / "out")
    assert not m.labelled and m.labels == {} and m.count == 7
    np.testing.assert_array_equal(read_shard_set(tmp_path / "out")[0][:, 0], ref["image"][:7])


def test_single_dataset_variant(tmp_path: Path) -> None:
    ref = write_kaggle_h5(tmp_path / "a.h5", 6)
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["image"] = ref["image"]  # one (N, 35, 55) dataset instead of a Group
    assert convert(tmp_path / "b.h5", tmp_path / "out") == 0
    np.testing.assert_array_equal(read_shard_set(tmp_path / "out")[0][:, 0], ref["image"])


def _no_image(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f["look_vec"] = np.zeros((3, 4))


def _short_look_vec(path: Path) -> None:
    write_kaggle_h5(path, 5)
    with h5py.File(path, "a") as f:
        del f["look_vec"]
        f["look_vec"] = np.tile([0.0, 0.0, 1.0, 0.0], (4, 1))


def _wrong_shape(path: Path) -> None:
    write_kaggle_h5(path, 5)
    with h5py.File(path, "a") as f:
        del f["image/3"]
        f["image/3"] = np.zeros((36, 60), np.uint8)


def _zero_look_vec(path: Path) -> None:
    write_kaggle_h5(path, 3)
    with h5py.File(path, "a") as f:
        f["look_vec"][1] = 0.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_no_image, "no key 'image' (keys: look_vec)"),
        (_short_look_vec, "5 images but look_vec has 4 rows"),
        (_wrong_shape, "image/3 has shape (36, 60), expected (35, 55)"),
        (_zero_look_vec, "look_vec: look_vec has zero-length or non-finite vectors at rows [1]"),
        (lambda p: p.write_bytes(b"not an hdf5 file" * 10), "cannot read as HDF5"),
        (lambda p: None, "does not exist"),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, make, message: str
) -> None:
    src = tmp_path / "gaze.h5"
    make(src)
    assert convert(src, tmp_path / "out", "--workers", "2") == 2
    assert_one_line_error(capsys.readouterr().err, f"{src}: ", message)
    assert not (tmp_path / "out" / "manifest.json").exists()
