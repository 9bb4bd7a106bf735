"""``shards inspect --sheet``: the contact sheet's size, and arrows drawn the convention's way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.cli import main
from shards.writer import ShardSetWriter

# Sheet layout (shards.sheet): tiles of 55x35 pixels zoomed 4x, 2 px apart, 8 per row.
ZOOM, PAD = 4, 2


def _one_image_set(out: Path, gaze: list[float], pupil: list[float] | None) -> Path:
    labels = {"gaze": ((3,), "float32", "")}
    values = {"gaze": np.array([gaze])}
    if pupil is not None:
        labels["pupil"] = ((2,), "float32", "")
        values["pupil"] = np.array([pupil])
    with ShardSetWriter(out, (35, 55), "uint8", labels, {"name": "test"}) as writer:
        writer.add(np.full((1, 35, 55), 128, np.uint8), values)
    return out


def _red(path: Path) -> np.ndarray:
    """(K, 2) (x, y) of the arrow's pixels."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)  # (H, W, 3)
    mask = (rgb[..., 0] > 200) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)
    ys, xs = np.nonzero(mask)
    return np.stack([xs, ys], axis=1)


@pytest.mark.parametrize(
    ("gaze", "pupil", "start", "tip"),
    [
        # Gaze x > 0 is image right (shards.gaze): the arrow runs right from the pupil at
        # (20, 17), drawn at PAD + ZOOM * (20.5, 17.5) = (84, 72); length 0.5 * 220 * 0.6 = 66.
        ([0.6, 0.0, -0.8], [20.0, 17.0], (84, 72), (150, 72)),
        # Positive pitch (y < 0) looks up: the arrow runs up, 0.5 * 220 * 0.6 = 66 px.
        ([0.0, -0.6, -0.8], [20.0, 17.0], (84, 72), (84, 6)),
        # Positive yaw (x < 0) looks left; without a pupil the arrow starts at the centre.
        ([-0.6, 0.0, -0.8], None, (112, 72), (46, 72)),
    ],
)
def test_arrow_follows_the_gaze(
    tmp_path: Path, gaze: list[float], pupil: list[float] | None, start, tip
) -> None:
    out = _one_image_set(tmp_path / "set", gaze, pupil)
    sheet = tmp_path / "sheet.png"
    assert main(["inspect", str(out), "--sheet", str(sheet), "--samples", "1"]) == 0
    assert Image.open(sheet).size == (PAD + 55 * ZOOM + PAD, PAD + 35 * ZOOM + PAD)
    red = _red(sheet)
    assert len(red) > 50
    lo, hi = red.min(0), red.max(0)  # bounding box of the arrow
    for axis in (0, 1):
        assert (
            min(start[axis], tip[axis]) - 6 <= lo[axis]
            and hi[axis] <= max(start[axis], tip[axis]) + 6
        )
    # The arrow reaches its tip, and its head (the widest part) is at the tip end.
    assert np.abs(red - np.array(tip)).sum(1).min() <= 3
    assert np.abs(red - np.array(start)).sum(1).min() <= 6


def test_sheet_size_and_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "eyes"
    assert (
        main(
            ["convert", "sim-eyes", "--domain", "synthetic", "--count", "50"] + ["--out", str(out)]
        )
        == 0
    )
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", str(out)]) == 0
    assert not list(tmp_path.glob("*.png"))  # no sheet unless asked
    assert main(["inspect", str(out), "--sheet", "--samples", "10", "--seed", "3"]) == 0
    sheet = tmp_path / "eyes_contact_sheet.png"
    # 10 samples: 8 columns, 2 rows.
    assert Image.open(sheet).size == (8 * (220 + PAD) + PAD, 2 * (140 + PAD) + PAD)
    assert not list(out.glob("*.png"))  # the shard set stays as written
    assert len(_red(sheet)) > 100
    # The seed picks the samples.
    assert main(["inspect", str(out), "--sheet", "b.png", "--samples", "10", "--seed", "4"]) == 0
    assert not np.array_equal(np.asarray(Image.open(sheet)), np.asarray(Image.open("b.png")))


def test_unlabelled_set_gets_a_sheet_without_arrows(tmp_path: Path) -> None:
    with ShardSetWriter(tmp_path / "set", (35, 55), "uint8", {}, {}, labelled=False) as writer:
        writer.add(np.full((3, 35, 55), 128, np.uint8), {})
    assert main(["inspect", str(tmp_path / "set"), "--sheet", str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size == (3 * (220 + PAD) + PAD, 140 + 2 * PAD)
    assert len(_red(tmp_path / "s.png")) == 0
