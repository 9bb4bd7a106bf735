"""The label-free realism score (a classifier two-sample test) and the checkpoint it picks."""

from __future__ import annotations

import json

import pytest
import torch

from distsim.checkpoints.realism import (
    MAX_PUPIL_SHIFT,
    RealismProbe,
    select_checkpoint,
    two_sample_test,
)
from distsim.checkpoints.store import best_checkpoint, list_checkpoints, realism_scores
from distsim.config import make_config
from distsim.gaze.pupil import pupil_scores
from distsim.refine import main as refine_main
from distsim.training.loop import training_loop
from shards.format import read_manifest
from shards.sim import eyes
from tests.helpers import scalars as _scalars


def _eyes(domain: str, n: int, seed: int) -> torch.Tensor:
    images = torch.from_numpy(eyes.generate(domain, n, seed)["image"])
    return images.float().div(127.5).sub(1).unsqueeze(1)  # (n, 1, 35, 55)


def test_two_sample_test_separates_domains_and_not_samples():
    real, real2, syn = _eyes("real", 256, 1), _eyes("real", 256, 2), _eyes("synthetic", 256, 3)
    different = two_sample_test(real, syn, seed=0, steps=150)
    same = two_sample_test(real, real2, seed=0, steps=150)
    assert different["accuracy"] > 0.8 and different["log_loss"] < 0.5
    assert 0.4 < same["accuracy"] < 0.62 and same["log_loss"] > 0.6
    # A seed of its own: same answer twice, and the caller's random stream is untouched.
    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert two_sample_test(real, syn, seed=0, steps=150) == different
    assert torch.equal(torch.get_rng_state(), before)
    with pytest.raises(ValueError, match="different shapes"):
        two_sample_test(real, real[:, :, :30], seed=0)


def test_probe_scores_refined_against_the_synthetic_reference():
    syn, real = _eyes("synthetic", 128, 4), _eyes("real", 128, 5)
    probe = RealismProbe(syn, real, seed=0, label_shift=pupil_scores)
    identity = probe.score(syn.clone())
    assert identity["c2st_refined"] == identity["c2st_synthetic"]  # same images, same test
    assert identity["pupil_shift_px"] == 0.0
    shifted = probe.score(torch.roll(syn, shifts=3, dims=3))  # every pupil 3 px to the right
    assert shifted["pupil_shift_px"] == pytest.approx(3.0, abs=0.3)


@pytest.mark.parametrize(
    ("scores", "best"),
    [
        ({}, None),
        ({"step-1": {"other": 1.0}}, None),
        # Lowest accuracy wins; equal accuracy: the classifier less sure (higher log-loss).
        ({"step-1": {"c2st_refined": 0.7}, "step-2": {"c2st_refined": 0.6}}, "step-2"),
        ({"step-1": {"c2st_refined": 0.6, "c2st_refined_log_loss": 0.6},
          "step-2": {"c2st_refined": 0.6, "c2st_refined_log_loss": 0.5}}, "step-1"),
        # A full tie goes to the later checkpoint.
        ({"step-1": {"c2st_refined": 0.6}, "step-2": {"c2st_refined": 0.6}}, "step-2"),
        # A refiner that moves pupils loses to one that keeps labels, however realistic.
        ({"step-1": {"c2st_refined": 0.5, "pupil_shift_px": MAX_PUPIL_SHIFT + 0.1},
          "step-2": {"c2st_refined": 0.9, "pupil_shift_px": 0.2}}, "step-2"),
        # If every one moves pupils, the one that moves them least.
        ({"step-1": {"c2st_refined": 0.5, "pupil_shift_px": 3.0},
          "step-2": {"c2st_refined": 0.9, "pupil_shift_px": 2.0}}, "step-2"),
    ],
)  # fmt: skip
def test_select_checkpoint(scores, best):
    assert select_checkpoint(scores) == best


def test_training_scores_checkpoints_keeps_the_best_and_refine_takes_it(tmp_path, capsys):
    cfg = make_config(
        "smoke", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
        progress=False, realism_images=64, steps=9, ckpt_every=2, keep_checkpoints=1,
    )  # fmt: skip
    run = training_loop(cfg, label_shift=pupil_scores)
    assert "scoring took" in capsys.readouterr().out
    scores = realism_scores(run)
    kept = [c.name for c in list_checkpoints(run)]
    best = best_checkpoint(run)
    assert best is not None and best.name in kept and kept[-1] == "step-00000013"
    assert len(kept) <= 2  # the newest, and the best if it is another one
    assert "step-00000004" not in scores
    for name in kept:
        s = scores[name]
        assert 0.0 <= s["c2st_refined"] <= 1.0 and 0.0 <= s["c2st_synthetic"] <= 1.0
        assert s["pupil_shift_px"] >= 0.0
    logged = _scalars(run)
    # Steps 6, 8, 10, 12 and 13: not before adversarial training (R is then the identity).
    assert len(logged["realism/c2st_refined"]) == 5
    # refine --checkpoint best takes it, and says why.
    syn = tmp_path / "cache" / "sim-eyes-v3-synthetic-n512-s0"
    out = tmp_path / "refined"
    flags = ["--run", str(run), "--input", str(syn), "--out", str(out), "--no-progress"]
    assert refine_main([*flags, "--checkpoint", "best", "--num-workers", "0"]) == 0
    assert read_manifest(out).source["checkpoint"]["path"] == str(best.resolve())
    assert "the best by realism" in capsys.readouterr().out
    meta = json.loads((best / "meta.json").read_text())
    assert meta["realism"] == scores[best.name]


def test_refine_best_without_scores_is_one_line(tmp_path, capsys):
    cfg = make_config("smoke", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                      progress=False)  # fmt: skip
    run = training_loop(cfg, label_shift=pupil_scores)
    syn = tmp_path / "cache" / "sim-eyes-v3-synthetic-n512-s0"
    args = ["--run", str(run), "--input", str(syn), "--out", str(tmp_path / "o"), "--checkpoint",
            "best"]  # fmt: skip
    capsys.readouterr()
    assert refine_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint has realism scores" in err[0]
