"""End-to-end smoke training on tiny built-in shards: one process in-process, two through
`accelerate launch` with gloo on the CPU."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distsim import data
from distsim.checkpoints.models import load_models
from distsim.checkpoints.store import list_checkpoints, load_state
from distsim.config import make_config
from distsim.data.pixels import to_unit_range
from distsim.train import main
from distsim.training.loop import training_loop
from tests.helpers import saved_settings
from tests.helpers import scalars as _scalars

REPO = Path(__file__).resolve().parents[2]


def _check_run(run_dir: Path, cfg_steps: int, cache: Path) -> None:
    total = cfg_steps
    saved = saved_settings(run_dir / "config.json")
    assert saved["preset"] == "smoke" and saved["run_dir"] == str(run_dir)

    scalars = _scalars(run_dir)
    for tag in (
        "pretrain_r/r_reg",
        "pretrain_d/d_loss",
        "r_adv",
        "r_reg",
        "d_loss",
        "d_acc_real",
        "d_acc_refined",
    ):
        assert tag in scalars, sorted(scalars)
        assert all(math.isfinite(v) for v in scalars[tag])
    assert all(0.0 <= v <= 1.0 for v in scalars["d_acc_real"])
    # A healthy refiner keeps its output off tanh's limits (the collapse warning's measure).
    assert max(scalars["r_saturated"] + scalars["pretrain_r/r_saturated"]) < 0.1

    ckpts = list_checkpoints(run_dir)
    assert ckpts and ckpts[-1].name == f"step-{total:08d}"
    state = load_state(run_dir)
    assert state["counters"]["step"] == total
    assert state["history"]["count"] > 0

    pngs = sorted((run_dir / "images").glob("*.png"))
    assert pngs
    rows, cols = np.asarray(Image.open(pngs[-1])).shape[:2]
    assert rows > 35 * 4 * 2 and cols > 55 * 4 * 3  # 3 columns of >= 2 enlarged images

    # The saved refiner loads back and changes the images it is given.
    refiner, _, cfg = load_models(run_dir)
    syn_dir = data.ensure_builtin_shards(
        "synthetic", cfg.data.builtin_count, cfg.data.builtin_seed, cache
    )
    loader = data.make_loader(syn_dir, 16, rank=0, world_size=1, seed=0, num_workers=0)
    x = to_unit_range(next(iter(loader))["image"])
    with torch.no_grad():
        y = refiner(x)
    assert y.shape == x.shape
    assert (y - x).abs().mean() > 1e-3


def test_smoke_training_single_process(tmp_path, capsys):
    cache = tmp_path / "cache"
    cfg = make_config("smoke", run_dir=str(tmp_path / "run"), cache_dir=str(cache), progress=False)
    run_dir = training_loop(cfg)
    total = cfg.schedule.pretrain_r_steps + cfg.schedule.pretrain_d_steps + cfg.schedule.steps
    _check_run(run_dir, total, cache)
    # The run explains itself at the end: losses, D, where the pictures and weights are.
    out = capsys.readouterr().out
    for text in ("last losses: r_adv", "D tells current refined images from real ones",
                 f"newest grid: {run_dir / 'images' / 'step-00000007.png'}",
                 f"curves: {run_dir / 'images' / 'losses.png'}",
                 f"newest checkpoint: {run_dir / 'checkpoints' / 'step-00000007'}",
                 f"tensorboard --logdir {run_dir / 'tensorboard'}"):  # fmt: skip
        assert text in out, (text, out)
    assert Image.open(run_dir / "images" / "losses.png").size[0] > 500
    # One process hands nothing to collectives: no comm scalars.
    assert not any(tag.startswith("comm/") for tag in _scalars(run_dir))
    # The built-in shards were made once and are reused.
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [
        "sim-eyes-v3-real-n512-s0",
        "sim-eyes-v3-synthetic-n512-s0",
    ]


def test_collapsed_refiner_is_warned_about_once(tmp_path, capsys):
    # Adam at lr 10 drives every refined pixel to tanh's limits within a step or two: the
    # collapse seen in a global-adversarial ablation run, made on purpose.
    cfg = make_config(
        "smoke", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
        progress=False, lr_r=10.0, pretrain_r_steps=4, pretrain_d_steps=0, steps=6, log_every=2,
    )  # fmt: skip
    training_loop(cfg)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "tanh has saturated" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("distsim.train: warning: step ")
    assert str(tmp_path / "run" / "images") in warnings[0]
    scalars = _scalars(tmp_path / "run")
    assert max(scalars["r_saturated"]) > 0.9


def test_mismatched_shards_give_one_line_error(tmp_path, capsys):
    from shards.cli import main as shards_main

    syn, real = tmp_path / "syn", tmp_path / "real"
    assert (
        shards_main(
            [
                "convert",
                "sim-eyes",
                "--domain",
                "synthetic",
                "--count",
                "64",
                "--seed",
                "0",
                "--out",
                str(syn),
            ]
        )
        == 0
    )
    # Real shards of another size: 1x36x60 written by hand through the writer.
    from shards.writer import ShardSetWriter

    with ShardSetWriter(
        real, image_shape=(1, 36, 60), image_dtype="uint8", labels={}, source={"name": "test"}
    ) as w:
        w.add(np.zeros((16, 1, 36, 60), np.uint8), {})
    capsys.readouterr()
    code = main(
        [
            "--preset",
            "smoke",
            "--synthetic",
            str(syn),
            "--real",
            str(real),
            "--run-dir",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "36x60" in err[0] and "35x55" in err[0], err

    code = main(
        [
            "--preset",
            "smoke",
            "--synthetic",
            str(tmp_path / "missing"),
            "--real",
            str(real),
            "--run-dir",
            str(tmp_path / "run2"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "missing" in err[0], err


def test_smoke_training_two_processes_gloo(tmp_path):
    cache = tmp_path / "cache"
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29517",
        str(REPO / "distsim" / "train.py"),
        "--preset",
        "smoke",
        "--run-dir",
        str(run_dir),
        "--cache-dir",
        str(cache),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = make_config("smoke")
    total = cfg.schedule.pretrain_r_steps + cfg.schedule.pretrain_d_steps + cfg.schedule.steps
    _check_run(run_dir, total, cache)
    assert load_state(run_dir)["world_size"] == 2
    # Two ranks each push b/2 per D step: the buffer holds 2 * b/2 per D step taken.
    d_steps = cfg.schedule.pretrain_d_steps + cfg.schedule.steps * cfg.schedule.k_d
    assert load_state(run_dir)["history"]["count"] == min(
        cfg.history.size, d_steps * cfg.schedule.batch_size
    )


@pytest.mark.parametrize("flag", ["--steps", "--batch-size"])
def test_bad_flag_values_exit_2(flag, capsys):
    assert main(["--preset", "smoke", flag, "-1"]) == 2
    assert "must be" in capsys.readouterr().err


def test_truncated_shard_stops_or_is_skipped_and_counted(tmp_path, capsys):
    from shards.cli import main as shards_main

    syn, real = tmp_path / "syn", tmp_path / "real"
    for domain, out in (("synthetic", syn), ("real", real)):
        args = ["convert", "sim-eyes", "--domain", domain, "--count", "256", "--seed", "0"]
        assert shards_main([*args, "--out", str(out), "--shard-size", "128",
                            "--block-size", "32"]) == 0  # fmt: skip
    bad = syn / "shard-000001.tar"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    capsys.readouterr()
    flags = ["--preset", "smoke", "--synthetic", str(syn), "--real", str(real), "--no-progress"]

    assert main([*flags, "--run-dir", str(tmp_path / "stop")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shard-000001.tar" in err[0], err

    with pytest.warns(UserWarning, match="shard-000001.tar"):
        assert main([*flags, "--run-dir", str(tmp_path / "skip"), "--on-bad-shard", "skip"]) == 0
    scalars = _scalars(tmp_path / "skip")
    assert scalars["data/skipped_shards_synthetic"][-1] == 1
    assert scalars["data/skipped_shards_real"][-1] == 0


def test_global_adversarial_ablation_trains(tmp_path):
    cfg = make_config("smoke", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                      progress=False, adversarial="global", history=False)  # fmt: skip
    run_dir = training_loop(cfg)
    scalars = _scalars(run_dir)
    assert all(math.isfinite(v) for v in scalars["r_adv"] + scalars["d_loss"])
    # One decision per image: D's accuracy is a fraction of the 8 images of a batch.
    assert all(abs(v * 8 - round(v * 8)) < 1e-5 for v in scalars["d_acc_real"])
    assert saved_settings(run_dir / "config.json")["adversarial"] == "global"


def test_colour_images_train_with_channel_mean_psi(tmp_path):
    """psi = mean of the colour channels (the paper's choice for RGB) on 3-channel shards."""
    from shards.sim.eyes import generate
    from shards.writer import ShardSetWriter

    dirs = {}
    for domain, tint in (("synthetic", (1.0, 0.8, 0.6)), ("real", (0.7, 0.8, 1.0))):
        grey = generate(domain, 256, seed=0)["image"].astype(np.float32)  # (N, 35, 55)
        colour = np.stack([grey * t for t in tint], axis=1).round().astype(np.uint8)  # (N, 3, ...)
        dirs[domain] = tmp_path / domain
        with ShardSetWriter(dirs[domain], (3, 35, 55), "uint8", {}, {"name": "colour"}) as w:
            w.add(colour, {})
    cfg = make_config("smoke", run_dir=str(tmp_path / "run"), synthetic=str(dirs["synthetic"]),
                      real=str(dirs["real"]), psi="channel_mean", progress=False)  # fmt: skip
    run_dir = training_loop(cfg)
    refiner, _, _ = load_models(run_dir)
    assert refiner.stem.in_channels == 3 and refiner.head.out_channels == 3
    assert all(math.isfinite(v) for v in _scalars(run_dir)["r_reg"])
    with pytest.raises(ValueError, match="channel_mean needs colour"):
        grey = make_config("smoke", run_dir=str(tmp_path / "grey"), progress=False,
                           cache_dir=str(tmp_path / "cache"), psi="channel_mean")  # fmt: skip
        training_loop(grey)
