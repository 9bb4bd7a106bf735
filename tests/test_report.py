"""The Table 2 report end to end at toy scale: every row, every seed, the table and the plot."""

import json

from PIL import Image

from distsim.report import main


def test_report_runs_every_row_and_seed(tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["gaze", "--out", str(out), "--preset", "smoke", "--seeds", "0", "1",
            "--variants", "simgan", "no-history", "--train-count", "64", "--test-count", "64",
            "--estimator-steps", "2", "--estimator-batch", "16",
            "--width-mult", "0.25", "--simgan-flags", "--lr-d 0.002 --k-g 1"]  # fmt: skip
    assert main(argv) == 0
    table = (out / "table.md").read_text().splitlines()
    rows = [
        line.split("|")[1].strip() for line in table if line.startswith("| ") and "---" not in line
    ]
    assert rows == ["trained on", "synthetic", "synthetic 4x", "refined", "refined 4x",
                    "refined (no-history)", "refined (no-history) 4x"]  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert len(report["seeds"]) == 2
    for seed in report["seeds"]:
        assert set(seed["pupil_shift_px"]) == {"refined", "refined (no-history)"}
        for result in seed["rows"].values():
            assert result["counts"]["test_images"] == 64
            assert len(result["within_pct"]) == 20
    # The 1x rows train on the first quarter of the 4x rows' images.
    first = report["seeds"][0]["rows"]
    assert first["synthetic"]["config"]["train_count"] == 64
    assert first["synthetic 4x"]["config"]["train_count"] == 256
    assert Image.open(out / "cumulative_error.png").size[0] > 300
    assert "refined (no-history)" in capsys.readouterr().out
    # Extra SimGAN flags reach every run; the variant and the seed still win.
    for name, history, seed in (("run-simgan-s1", True, 1), ("run-no-history-s0", False, 0)):
        cfg = json.loads((out / "work" / name / "config.json").read_text())
        assert (cfg["lr_d"], cfg["k_g"], cfg["history"], cfg["seed"]) == (0.002, 1, history, seed)
