"""The Table 2 report end to end at toy scale: every row, every seed, the table and the plot."""

import json
import re

import pytest
from PIL import Image

from distsim.report import main
from tests.helpers import saved_settings


def _rows(table: str) -> list[str]:
    return [line.split("|")[1].strip() for line in table.splitlines()
            if line.startswith("| ") and "---" not in line]  # fmt: skip


def test_report_runs_every_row_and_seed(tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["gaze", "--out", str(out), "--preset", "smoke", "--seeds", "0", "1",
            "--domains", "real",
            "--variants", "simgan", "no-history", "--train-count", "64", "--test-count", "64",
            "--estimator-steps", "2", "--estimator-batch", "16",
            "--width-mult", "0.25", "--simgan-flags", "--lr-d 0.002 --k-g 1"]  # fmt: skip
    assert main(argv) == 0
    assert _rows((out / "table.md").read_text()) == [
        "trained on", "synthetic", "synthetic 4x", "refined", "refined 4x",
        "refined (last weights)", "refined (best by realism)", "refined (no-history)",
        "refined (no-history) 4x",
    ]  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert len(report["seeds"]) == 2
    for seed in report["seeds"]:
        real = seed["domains"]["real"]
        assert set(real["pupil_shift_px"]) == {"refined", "refined (no-history)"}
        for result in real["rows"].values():
            assert result["counts"]["test_images"] == 64
            assert len(result["within_pct"]) == 20
        # No weight average and no realism scores in this run: both rows are "refined".
        assert real["rows"]["refined (last weights)"] == real["rows"]["refined"]
        assert real["rows"]["refined (best by realism)"] == real["rows"]["refined"]
    # The 1x rows train on the first quarter of the 4x rows' images.
    first = report["seeds"][0]["domains"]["real"]["rows"]
    assert first["synthetic"]["config"]["train_count"] == 64
    assert first["synthetic 4x"]["config"]["train_count"] == 256
    assert Image.open(out / "cumulative_error_real.png").size[0] > 300
    captured = capsys.readouterr()
    assert "refined (no-history)" in captured.out
    # On a log (not a terminal), every stage says what it makes, where, and that it finished.
    work, err = out / "work", captured.err
    assert f"sim-eyes synthetic -> {work / 'synthetic-s0'}: 256/256 img (100%)" in err
    assert f"distsim.report: seed 1, real: SimGAN 'no-history' in {work}" in err
    assert f"refine -> {work / 'refined-simgan-s0'}: 256/256 img (100%)" in err
    assert "train estimator: 2/2 steps (100%)" in err
    assert re.search(r"^adversarial: (\d+)/\1 updates \(100%\)", err, re.MULTILINE)  # SimGAN
    # Extra SimGAN flags reach every run; the variant and the seed still win.
    for name, history, seed in (("run-simgan-s1", True, 1), ("run-no-history-s0", False, 0)):
        cfg = saved_settings(out / "work" / name / "config.json")
        assert (cfg["lr_d"], cfg["k_g"], cfg["history"], cfg["seed"]) == (0.002, 1, history, seed)


def test_report_reuses_finished_rows_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "report"
    base = ["gaze", "--out", str(out), "--preset", "smoke", "--seeds", "0", "--domains", "real",
            "--train-count", "32", "--test-count", "32", "--estimator-steps", "2",
            "--estimator-batch", "16", "--width-mult", "0.25"]  # fmt: skip
    assert main([*base, "--variants", "simgan"]) == 0
    first = json.loads((out / "report.json").read_text())["seeds"][0]["domains"]["real"]
    ckpts = out / "work" / "run-simgan-s0" / "checkpoints"
    stamps = {p.name: p.stat().st_mtime_ns for p in ckpts.rglob("*")}

    # A second variant and a second seed: the first seed's rows come back as they were
    # (their timings too, so nothing was retrained) and its SimGAN run is left alone.
    assert main([*base[:6], "0", "1", *base[7:], "--variants", "simgan", "global"]) == 0
    second = {e["seed"]: e["domains"]["real"]
              for e in json.loads((out / "report.json").read_text())["seeds"]}  # fmt: skip
    assert set(second) == {0, 1}
    for name in ("synthetic", "synthetic 4x", "refined", "refined 4x"):
        assert second[0]["rows"][name] == first["rows"][name]
    assert second[0]["pupil_shift_px"]["refined"] == first["pupil_shift_px"]["refined"]
    assert set(second[0]["rows"]) >= {"refined (global)", "refined (global) 4x"}
    assert {p.name: p.stat().st_mtime_ns for p in ckpts.rglob("*")} == stamps
    table = (out / "table.md").read_text()
    assert "refined (global) 4x" in table and "2 seed(s)" in table

    # A report that died after the global run finished but before its rows were written:
    # the finished run is resumed (no new training) and its rows are made again.
    report = json.loads((out / "report.json").read_text())
    for entry in report["seeds"]:
        real = entry["domains"]["real"]
        for name in ("refined (global)", "refined (global) 4x"):
            del real["rows"][name]
        del real["pupil_shift_px"]["refined (global)"]
    (out / "report.json").write_text(json.dumps(report))
    capsys.readouterr()
    assert main([*base, "--variants", "simgan", "global"]) == 0
    assert "resuming from" in capsys.readouterr().out
    again = {e["seed"]: e["domains"]["real"]
             for e in json.loads((out / "report.json").read_text())["seeds"]}  # fmt: skip
    assert "refined (global)" in again[0]["rows"] and set(again) == {0, 1}

    # Rows made with other settings are never mixed in.
    assert main([*base[:-1], "0.5", "--variants", "simgan"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distsim.report: error: ") and "report.json" in err
    assert "--width-mult '0.25', not '0.5'" in err and "\n" not in err


def test_report_that_dies_before_a_seed_still_guards_its_work(tmp_path, monkeypatch, capsys):
    from distsim.gaze import report

    out = tmp_path / "report"
    base = ["gaze", "--out", str(out), "--preset", "smoke", "--seeds", "0", "--domains", "real",
            "--train-count", "32", "--test-count", "32", "--estimator-steps", "2"]  # fmt: skip

    def dies(*args, **kwargs):
        raise KeyboardInterrupt  # as a user's Ctrl-C in the middle of the first SimGAN run

    monkeypatch.setattr(report, "run_seed", dies)
    with pytest.raises(KeyboardInterrupt):
        main([*base, "--width-mult", "0.25"])
    saved = json.loads((out / "report.json").read_text())
    assert saved["seeds"] == [] and saved["args"]["width_mult"] == "0.25"
    monkeypatch.undo()
    # Its half-made runs in OUT/work are not resumed under other settings.
    assert main([*base, "--width-mult", "0.5"]) == 2
    assert "--width-mult '0.25', not '0.5'" in capsys.readouterr().err


def test_report_refuses_an_out_whose_report_json_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    for text in ("{not json", '{"seeds": []}'):
        (out / "report.json").write_text(text)
        assert main(["gaze", "--out", str(out), "--seeds", "0"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("distsim.report: error: ")
        assert f"{out / 'report.json'}: not a report this command wrote" in err
    assert not (out / "work").exists()  # refused before making anything


def test_report_over_two_domains_shares_the_synthetic_rows_and_scores_realism(tmp_path):
    out = tmp_path / "report"
    argv = ["gaze", "--out", str(out), "--preset", "smoke", "--seeds", "0",
            "--domains", "real", "real-ir", "--variants", "simgan", "--train-count", "32",
            "--test-count", "32", "--estimator-steps", "2", "--estimator-batch", "16",
            "--width-mult", "0.25",
            "--simgan-flags", "--ema-halflife 50 --realism-images 64 --ckpt-every 2"]  # fmt: skip
    assert main(argv) == 0
    domains = json.loads((out / "report.json").read_text())["seeds"][0]["domains"]
    assert set(domains) == {"real", "real-ir"}
    real, ir = domains["real"]["rows"], domains["real-ir"]["rows"]
    # One synthetic estimator, tested on each domain's own test set.
    assert real["synthetic"]["train_loss"] == ir["synthetic"]["train_loss"]
    assert real["synthetic"]["test_dir"] != ir["synthetic"]["test_dir"]
    assert "real-ir" in ir["synthetic"]["test_source"]["domain"]
    for domain in ("real", "real-ir"):
        here = domains[domain]
        realism = here["realism"]["refined"]
        assert 0 <= realism["final"]["c2st_refined"] <= 1 and realism["best"]["checkpoint"]
        # The weight average is what refine uses; the last weights make their own row.
        assert here["rows"]["refined (last weights)"] != here["rows"]["refined"]
        cfg = saved_settings(out / "work" / f"run-simgan-{'' if domain == 'real' else domain + '-'}"
                          f"s0" / "config.json")  # fmt: skip
        assert cfg["builtin_real"] == domain
    table = (out / "table.md").read_text()
    assert "**real**" in table and "**real-ir**" in table and "1 seed(s)." in table
    assert "+-" not in table
    for domain in ("real", "real-ir"):
        assert (out / f"cumulative_error_{domain}.png").is_file()


def test_report_without_4x_rows_renders_only_the_1x_eyes_and_keeps_apart(tmp_path, capsys):
    out = tmp_path / "report"
    base = ["gaze", "--out", str(out), "--preset", "smoke", "--seeds", "0", "--domains", "real",
            "--variants", "simgan", "--train-count", "32", "--test-count", "32",
            "--estimator-steps", "2", "--estimator-batch", "16",
            "--width-mult", "0.25"]  # fmt: skip
    assert main([*base, "--no-4x"]) == 0
    assert _rows((out / "table.md").read_text()) == [
        "trained on", "synthetic", "refined", "refined (last weights)",
        "refined (best by realism)",
    ]  # fmt: skip
    from distsim.data import open_shards

    assert open_shards(out / "work" / "synthetic-s0").count == 32
    assert open_shards(out / "work" / "refined-simgan-s0").count == 32
    # The same OUT with the 4x rows would mix refined sets of two sizes: refused.
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err.strip()
    assert "made without the 4x rows" in err and "\n" not in err


ROW_KEYS = ("preset", "train_count")


def _save_many(out: str, seed: int, domain: str, rows: int) -> None:
    """One report process: adds `rows` rows to (seed, domain), saving after each."""
    import argparse
    from pathlib import Path

    from distsim.tables.store import save_report

    args = argparse.Namespace(**{k: "x" for k in ROW_KEYS}, seeds=[seed])
    results = {seed: {"seed": seed, "domains": {domain: {"rows": {}}}}}
    for i in range(rows):
        results[seed]["domains"][domain]["rows"][f"row {i}"] = {"value": i}
        save_report(Path(out), args, results, ROW_KEYS)


def test_report_processes_sharing_an_out_merge_under_the_lock(tmp_path):
    """Seeds and domains filled by separate processes at once all end up in report.json, and
    what one process already holds is taken into another's results, never overwritten."""
    import argparse
    import multiprocessing

    from distsim.tables.store import finished_seeds, save_report

    out = tmp_path / "report"
    out.mkdir()
    jobs = [(0, "real"), (0, "real-ir"), (1, "real")]
    ctx = multiprocessing.get_context("fork")  # the child only writes JSON
    procs = [ctx.Process(target=_save_many, args=(str(out), s, d, 20)) for s, d in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    args = argparse.Namespace(**{k: "x" for k in ROW_KEYS}, seeds=[0, 1])
    done = finished_seeds(out, args, ROW_KEYS)
    assert sorted(done) == [0, 1]
    assert sorted(done[0]["domains"]) == ["real", "real-ir"]
    for s, d in jobs:
        assert done[s]["domains"][d]["rows"] == {f"row {i}": {"value": i} for i in range(20)}
    assert not (out / "report.json.tmp").exists()
    # A process with a stale view: its own row stays, the file's rows join its results.
    mine = {0: {"seed": 0, "domains": {"real": {"rows": {"row 0": {"value": -1}}}}}}
    save_report(out, args, mine, ROW_KEYS)
    assert mine[0]["domains"]["real"]["rows"]["row 0"] == {"value": -1}
    assert mine[0]["domains"]["real"]["rows"]["row 19"] == {"value": 19}
    assert sorted(mine) == [0, 1] and "real-ir" in mine[0]["domains"]
    again = finished_seeds(out, args, ROW_KEYS)
    assert again[0]["domains"]["real"]["rows"]["row 0"] == {"value": -1}
