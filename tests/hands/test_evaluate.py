"""`evaluate hands` end to end on tiny built-in hand shards: report keys, plot, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from distsim.evaluate import main
from distsim.hands.task import default_input_size, train_and_test
from shards.cli import main as shards_main

TINY = ["--width", "8", "--depth", "1", "--batch-size", "8", "--num-workers", "0"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hands")
    out = {}
    for name, domain, count, seed in (("train", "synthetic", 64, 0), ("test", "real", 24, 1)):
        out[name] = root / name
        args = ["--count", str(count), "--seed", str(seed), "--size", "32", "--out"]
        assert shards_main(["convert", "sim-hands", "--domain", domain, *args, str(out[name])]) == 0
    out["eyes"] = root / "eyes"
    assert (
        shards_main(
            [
                "convert",
                "sim-eyes",
                "--domain",
                "synthetic",
                "--count",
                "8",
                "--out",
                str(out["eyes"]),
            ]
        )
        == 0
    )
    return out


def test_evaluate_hands_writes_report_and_plot(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["hands", "--train", str(sets["train"]), "--test", str(sets["test"]), "--out", str(out)]
    assert main([*args, "--steps", "4", "--log-every", "2", *TINY]) == 0
    assert "within 5 px" in capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())
    assert report["task"] == "hands" and report["thresholds_px"] == list(range(21))
    for key in ("within_max_pct", "within_mean_pct", "within_pct"):
        values = report[key]
        assert len(values) == 21 and all(0 <= v <= 100 for v in values)
        assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert report["within_5px_pct"] == report["within_max_pct"][5]
    assert report["within_5px_mean_pct"] == report["within_mean_pct"][5]
    assert report["mean_joint_error_px"] > 0 and report["pixel_scale"] == 224 / 32
    assert len(report["within_per_joint_pct"]) == 14 and report["crop_size"] == 32
    assert report["counts"]["test_images"] == 24
    assert report["config"]["heatmap_size"] == 8 and report["config"]["input_size"] == 32
    assert [e["step"] for e in report["train_loss"]] == [2, 4]
    png = out / "within_pixels.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000

    # evaluate plot overlays hand runs (Figure 9) and refuses to mix them with gaze runs.
    both = tmp_path / "both.png"
    assert main(["plot", str(out), str(out), "--names", "a", "b", "--out", str(both)]) == 0
    assert both.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resized_input_maps_predictions_back(sets: dict[str, Path]) -> None:
    # A 40 px network input for 32 px crops: the error is still measured in crop pixels.
    kwargs = {"width": 8, "depth": 1, "batch_size": 8, "num_workers": 0, "steps": 0}
    plain = train_and_test(sets["train"], sets["test"], **kwargs)
    resized = train_and_test(sets["train"], sets["test"], input_size=40, **kwargs)
    assert resized["config"]["heatmap_size"] == 10
    # An untrained net predicts near the same place in network pixels; mapped back it is
    # within the crop either way (errors below the crop's diagonal at 224 scale).
    for r in (plain, resized):
        assert 0 < r["mean_joint_error_px"] < 224 * 1.5
    assert default_input_size(224) == 256 and default_input_size(64) == 64


def test_one_line_errors(
    sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "out"), "--steps", "1"]
    assert main(["hands", "--train", str(sets["eyes"]), "--test", str(sets["test"]), *out]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no joints_uvd labels" in err
    missing = str(tmp_path / "nowhere")
    assert main(["hands", "--train", str(sets["train"]), "--test", missing, *out]) == 2
    assert missing in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
