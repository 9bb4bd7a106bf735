"""``shards convert unityeyes``: crop, pupil label, gaze convention, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.cli import main
from shards.format import read_manifest
from tests.fixtures_sources import (
    assert_one_line_error,
    read_shard_set,
    unityeyes_json,
    write_unityeyes_dir,
)


def convert(src: Path, out: Path, *extra: str) -> int:
    return main(["convert", "unityeyes", "--input", str(src), "--out", str(out), *extra])


def test_converted_eyes_match_the_rendered_ones(tmp_path: Path) -> None:
    ref = write_unityeyes_dir(tmp_path / "imgs", 12, seed=2)
    assert convert(tmp_path / "imgs", tmp_path / "out") == 0
    images, labels = read_shard_set(tmp_path / "out")
    assert images.shape == (12, 1, 35, 55)
    # Upscaled into a JPEG, cropped back: the same eye up to resampling and compression. The
    # fixture tints grey g to RGB g * (255, 235, 220) / 255, whose luma is g * 0.938.
    luma = (0.299 * 255 + 0.587 * 235 + 0.114 * 220) / 255
    expected = ref["image"] * luma  # (12, 35, 55)
    diff = np.abs(images[:, 0] - expected)
    assert diff.mean() < 3.0 and np.median(diff) < 2.0, diff.mean()
    # Each image is closest to its own render: numeric order 1, 2, ..., 10, 11, 12.
    dist = np.abs(images[:, None, 0].astype(float) - expected[None]).mean(axis=(2, 3))  # (12, 12)
    assert dist.argmin(axis=1).tolist() == list(range(12))
    np.testing.assert_allclose(labels["gaze"], ref["gaze"], atol=2e-4)
    np.testing.assert_allclose(labels["pupil"], ref["pupil"], atol=0.01)
    np.testing.assert_allclose(labels["head_pose"], ref["head_pose"], atol=1e-4)
    m = read_manifest(tmp_path / "out")
    assert set(m.labels) == {"gaze", "pitchyaw", "pupil", "head_pose"} and m.labelled


def test_pupil_label_lands_on_the_dark_disc(tmp_path: Path) -> None:
    # A dark disc centred at continuous (x, y) = (301.3, 247.8), y measured from the top.
    h, w = 480, 640
    xc, yc, radius = 301.3, 247.8, 12.0
    yy, xx = np.mgrid[0:h, 0:w] + 0.5  # pixel centres, continuous coordinates
    img = np.where((xx - xc) ** 2 + (yy - yc) ** 2 <= radius**2, 20, 180).astype(np.uint8)
    src = tmp_path / "imgs"
    src.mkdir()
    Image.fromarray(img).convert("RGB").save(src / "1.jpg", quality=98)
    record = unityeyes_json(
        centre=(310.0, 240.0),
        pupil=(xc, yc),
        look_vec=np.array([0.5, 0.5, math.sqrt(0.5), 0.0]),
        head_pose=(10.0, -20.0, 5.0),
        iris_radius=radius,
    )
    # UnityEyes counts y from the bottom: the iris points' mean y is 480 - 247.8.
    iris_y = np.mean([float(p.strip("()").split(",")[1]) for p in record["iris_2d"]])
    assert iris_y == pytest.approx(h - yc, abs=1e-3)
    (src / "1.json").write_text(json.dumps(record))

    assert convert(src, tmp_path / "out") == 0
    images, labels = read_shard_set(tmp_path / "out")

    # The crop is 84x140 (H x W) around (310, 240): left 240, top 198; scale 55/140, 35/84,
    # and -0.5 to move from continuous coordinates to integer pixel centres.
    expected = ((xc - 240) * 55 / 140 - 0.5, (yc - 198) * 35 / 84 - 0.5)  # (23.58, 20.25)
    np.testing.assert_allclose(labels["pupil"][0], expected, atol=1e-3)
    # The same point measured in the converted image: the dark disc's centroid.
    weight = np.clip(180.0 - images[0, 0], 0, None)  # (35, 55)
    rows, cols = np.mgrid[0:35, 0:55]
    centroid = ((weight * cols).sum() / weight.sum(), (weight * rows).sum() / weight.sum())
    np.testing.assert_allclose(centroid, labels["pupil"][0], atol=0.5)

    # Gaze: UnityEyes (x, y, z) -> ours (x, -y, -z); pitch = asin(-y), yaw = atan2(-x, -z).
    np.testing.assert_allclose(labels["gaze"][0], [0.5, -0.5, -math.sqrt(0.5)], atol=1e-4)
    np.testing.assert_allclose(labels["pitchyaw"][0], [math.pi / 6, -0.6154797], atol=1e-4)
    np.testing.assert_allclose(labels["head_pose"][0], [10.0, -20.0, 5.0])


def test_eye_near_the_border_is_padded(tmp_path: Path) -> None:
    src = tmp_path / "imgs"
    src.mkdir()
    Image.new("RGB", (640, 480), (90, 90, 90)).save(src / "1.jpg")
    record = unityeyes_json((20.0, 470.0), (20.0, 470.0), np.array([0.0, 0.0, 1.0, 0.0]))
    (src / "1.json").write_text(json.dumps(record))
    assert convert(src, tmp_path / "out") == 0
    images, labels = read_shard_set(tmp_path / "out")
    assert abs(int(images.min()) - 90) <= 2 and abs(int(images.max()) - 90) <= 2
    np.testing.assert_allclose(labels["pupil"][0], [27.0, 17.0], atol=1e-3)


def _edit_json(key: str, value: object):
    def edit(src: Path) -> None:
        record = json.loads((src / "2.json").read_text())
        node = record
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
        (src / "2.json").write_text(json.dumps(record))

    return edit


@pytest.mark.parametrize(
    ("damage", "file", "message"),
    [
        (_edit_json("eye_details.look_vec", "(1, 2)"), "2.json", "look_vec is '(1, 2)'"),
        (_edit_json("eye_details.look_vec", "abc"), "2.json", "look_vec is 'abc'"),
        (_edit_json("eye_details.look_vec", None), "2.json", "missing key eye_details.look_vec"),
        (_edit_json("iris_2d", None), "2.json", "missing key iris_2d"),
        (_edit_json("interior_margin_2d", ["(1, 2, 3)"] * 15), "2.json", "has 15 entries"),
        (_edit_json("head_pose", "(1, x, 3)"), "2.json", "head_pose is '(1, x, 3)'"),
        (lambda s: (s / "2.json").write_text("{not json"), "2.json", "cannot read JSON"),
        (lambda s: (s / "2.jpg").write_bytes(b"\xff\xd8garbage"), "2.jpg", "cannot read image"),
        (lambda s: (s / "2.json").unlink(), "2.jpg", "no matching 2.json"),
        (lambda s: (s / "3.jpg").unlink(), "3.json", "no matching 3.jpg"),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, damage, file: str, message: str
) -> None:
    src = tmp_path / "imgs"
    write_unityeyes_dir(src, 3)
    damage(src)
    assert convert(src, tmp_path / "out") == 2
    assert_one_line_error(capsys.readouterr().err, f"{src / file}: ", message)


def test_empty_and_missing_directories(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert convert(tmp_path / "empty", tmp_path / "out") == 2
    assert_one_line_error(capsys.readouterr().err, f"{tmp_path / 'empty'}: no UnityEyes")
    assert convert(tmp_path / "nope", tmp_path / "out") == 2
    assert_one_line_error(capsys.readouterr().err, f"{tmp_path / 'nope'}: does not exist")
