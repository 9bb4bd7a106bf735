"""The Table 4 report (`distsim.report hands`) end to end at toy scale: every row, two seeds,
the table and the plot, reuse of finished rows, and one-line errors."""

import json

import pytest
from PIL import Image

from distsim.hands import report as report_hands
from distsim.hands.report import ROWS
from distsim.report import main
from tests.helpers import saved_settings

# The smoke preset on 32 px built-in hands: SimGAN in a few steps.
HANDS = "--builtin-sim hands --builtin-size 32 --builtin-count 48 --disc-arch hands --psi identity"


def _argv(out, *more):
    return ["hands", "--out", str(out), "--preset", "smoke", "--simgan-flags",
            f"{HANDS} --history-size 32", "--train-count", "16", "--test-count", "24",
            "--estimator-steps", "2", "--estimator-batch", "8", "--estimator-width", "8",
            "--estimator-depth", "2", *more]  # fmt: skip


def _rows(table: str) -> list[str]:
    return [line.split("|")[1].strip() for line in table.splitlines()
            if line.startswith("| ") and "---" not in line]  # fmt: skip


def test_hands_report_runs_every_row_and_seed_then_reuses_them(tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    # Seed 1 runs as another report into the same OUT while seed 0's is under way (as two
    # processes would): neither report loses the other's rows.
    run_seed, others = report_hands.run_seed, []

    def meanwhile(args, *rest):
        if not others:
            others.append("started")
            others[0] = main(_argv(out, "--seeds", "1"))
        return run_seed(args, *rest)

    monkeypatch.setattr(report_hands, "run_seed", meanwhile)
    assert main(_argv(out, "--seeds", "0")) == 0 and others == [0]
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert main(_argv(out, "--seeds", "0", "1")) == 0
    assert "row '" not in capsys.readouterr().err  # both seeds' rows were on record
    table = (out / "table.md").read_text()
    assert _rows(table) == ["trained on", *ROWS]
    assert "2 seed(s); +- is the standard deviation over seeds" in table
    for line in table.splitlines()[2:7]:
        cells = [c.strip() for c in line.split("|")[2:-1]]
        means = [float(c.split(" +- ")[0]) for c in cells]
        assert all(0 <= m <= 100 for m in means[:3]) and means[3] > 0
    report = json.loads((out / "report.json").read_text())
    assert sorted(e["seed"] for e in report["seeds"]) == [0, 1]
    for entry in report["seeds"]:
        here = entry["domains"]["real"]
        assert set(here["rows"]) == set(ROWS)
        for name, result in here["rows"].items():
            curve = result["within_max_pct"]
            assert len(curve) == 21 and all(0 <= v <= 100 for v in curve)
            assert curve == sorted(curve)  # within d can only grow with d
            assert result["counts"]["test_images"] == 24
            assert result["counts"]["train_images_used"] == (48 if "3x" in name else 16)
            assert result["crop_size"] == 32 and result["pixel_scale"] == 7.0
        s = entry["seed"]
        assert here["rows"]["refined"]["train_dir"] == str(out / "work" / f"refined-s{s}")
        assert here["rows"]["real"]["train_labels_for_evaluation_only"]
        # Every set is a different simulator stream: test crops are no training crops.
        sources = {here["rows"][n]["test_source"]["seed"] for n in ROWS}
        assert sources == {5000 + s}
        cfg = saved_settings(out / "work" / f"run-simgan-s{s}" / "config.json")
        assert (cfg["seed"], cfg["builtin_sim"], cfg["history_size"]) == (s, "hands", 32)
    assert Image.open(out / "within_pixels.png").size[0] > 300
    assert "distsim.report: seed 1: row 'refined 3x' (48 crops of refined-s1)" in err
    assert f"distsim.report: seed 0: SimGAN in {out / 'work' / 'run-simgan-s0'}" in err

    # Again into the same OUT: every row comes back as it was, nothing is trained again.
    runs = sorted(p.name for p in (out / "work").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in (out / "work").rglob("*") if p.is_file()}
    assert main(_argv(out, "--seeds", "0", "1")) == 0
    assert json.loads((out / "report.json").read_text())["seeds"] == report["seeds"]
    assert sorted(p.name for p in (out / "work").iterdir()) == runs
    assert {p: p.stat().st_mtime_ns for p in (out / "work").rglob("*") if p.is_file()} == stamps
    assert "row '" not in capsys.readouterr().err
    # A subset of the seeds makes its own table from the stored rows.
    assert main(_argv(out, "--seeds", "1")) == 0
    assert "1 seed(s)." in (out / "table.md").read_text()

    # Rows made with other settings are never mixed in.
    assert main([*_argv(out, "--seeds", "0"), "--estimator-steps", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distsim.report: error: ") and "\n" not in err
    assert "--estimator-steps '2', not '3'" in err
    assert main([*_argv(out, "--seeds", "0"), "--estimator-seeds", "2"]) == 2
    assert "--estimator-seeds '1', not '2'" in capsys.readouterr().err
    # A report from before the option existed had one estimator per row, and says so.
    old = json.loads((out / "report.json").read_text())
    del old["args"]["estimator_seeds"]
    (out / "report.json").write_text(json.dumps(old))
    assert main(_argv(out, "--seeds", "0")) == 0


def test_hands_report_averages_several_estimators_per_row(tmp_path, capsys):
    """--estimator-seeds 2: each row is the mean of estimators seeded S and S + 100, each
    one's numbers kept; the estimator with seed S is the one a one-estimator report trains."""
    one, two = tmp_path / "one", tmp_path / "two"
    rows = ["--rows", "synthetic", "real"]
    assert main(_argv(one, "--seeds", "3", *rows)) == 0
    assert main(_argv(two, "--seeds", "3", "--estimator-seeds", "2", *rows)) == 0
    single = json.loads((one / "report.json").read_text())["seeds"][0]["domains"]["real"]
    double = json.loads((two / "report.json").read_text())["seeds"][0]["domains"]["real"]
    for name in ("synthetic", "real"):
        row, alone = double["rows"][name], single["rows"][name]
        first, second = row["estimators"]
        assert (first["seed"], second["seed"]) == (3, 103)
        assert first["mean_joint_error_px"] == alone["mean_joint_error_px"]
        assert first["mean_joint_error_px"] != second["mean_joint_error_px"]
        mean = (first["mean_joint_error_px"] + second["mean_joint_error_px"]) / 2
        assert row["mean_joint_error_px"] == pytest.approx(mean)
        for d in range(21):
            pair = (first["within_max_pct"][d], second["within_max_pct"][d])
            assert row["within_max_pct"][d] == pytest.approx(sum(pair) / 2)
        per_joint = row["mean_joint_error_per_joint_px"]  # averaged too: still adds up
        assert per_joint.keys() == alone["mean_joint_error_per_joint_px"].keys()
        assert sum(per_joint.values()) / len(per_joint) == pytest.approx(mean)
    assert "estimators" not in single["rows"]["synthetic"]


def test_hands_report_rows_split_between_calls(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(_argv(out, "--seeds", "0", "--rows", "real", "synthetic 3x")) == 0
    err = capsys.readouterr().err
    assert "row 'real'" in err and "SimGAN" not in err and "no table yet" in err
    assert not (out / "table.md").exists()
    assert main(_argv(out, "--seeds", "0")) == 0  # makes only the other three rows
    err = capsys.readouterr().err
    assert "row 'refined 3x'" in err and "row 'real'" not in err and "row 'synthetic 3x'" not in err
    assert _rows((out / "table.md").read_text()) == ["trained on", *ROWS]


def test_hands_report_refuses_bad_input_in_one_line(tmp_path, capsys):
    out = tmp_path / "report"
    for argv, said in (
        (["hands", "--out", str(out), "--preset", "cpu"], "--preset cpu trains on eyes"),
        (["hands", "--out", str(out), "--preset", "hands-cpu", "--simgan-flags=--no-such"],
         "--simgan-flags: "),
        (["hands", "--out", str(out), "--simgan-flags", "--builtin-size 36"],
         "36 px crops: need a multiple of --stem-stride 4"),
    ):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("distsim.report: error: ") and "\n" not in err, err
        assert said in err
    assert not out.exists()  # refused before making anything
