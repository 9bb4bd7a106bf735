"""Full-state checkpoints: exact resume, atomic saves, non-finite losses, mixed precision."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distsim.checkpoints import store as ckpt_mod
from distsim.checkpoints.store import latest_checkpoint, list_checkpoints, load_state
from distsim.config import load_config, make_config
from distsim.data.pixels import CODE_LEVELS
from distsim.gan.history import HistoryBuffer, state_images
from distsim.train import main
from distsim.training.loop import training_loop

REPO = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, name: str, **overrides):
    base = dict(
        run_dir=str(tmp_path / name), cache_dir=str(tmp_path / "cache"), progress=False,
        builtin_count=512, steps=8, history_size=24, ckpt_every=1000, num_workers=1,
    )  # fmt: skip
    return make_config("smoke", **{**base, **overrides})


def _everything(run_dir):
    last = latest_checkpoint(run_dir)
    tensors = {
        f"{m}.{k}": v
        for m in ("refiner", "discriminator")
        for k, v in load_file(last / f"{m}.safetensors").items()
    }
    state = load_state(last)
    h = state["history"]
    tensors["history.images"] = state_images(h)
    tensors["history.generator"] = h["generator"]
    for name in ("opt_r", "opt_d"):
        for i, s in state[name]["state"].items():
            for k, v in s.items():
                tensors[f"{name}.{i}.{k}"] = torch.as_tensor(v)
    return tensors, state


def _as_full_precision_buffer(ckpt: Path) -> None:
    """Rewrite a checkpoint's buffer as checkpoints held it before buffers were coded: float
    images (here exactly the coded ones), with SHA256SUMS to match."""
    state = load_state(ckpt)
    h = state["history"]
    state["history"] = {k: v for k, v in h.items() if k not in ("codes", "levels", "dtype")}
    state["history"]["images"] = state_images(h)
    torch.save(state, ckpt / "state.pt")
    sums = ckpt / ckpt_mod.CHECKSUMS
    lines = [line for line in sums.read_text().splitlines() if not line.endswith("  state.pt")]
    lines.append(f"{ckpt_mod.file_sha256(ckpt / 'state.pt')}  state.pt")
    sums.write_text("".join(f"{line}\n" for line in lines))


def test_stop_and_resume_equals_never_stopping(tmp_path, capsys):
    # smoke: 2 + 2 pretraining steps, then 8 adversarial ones; the break is mid-adversarial.
    straight = training_loop(_cfg(tmp_path, "straight"))
    part = _cfg(tmp_path, "parts", steps=3)
    training_loop(part)
    assert [p.name for p in list_checkpoints(part.outputs.run_dir)] == ["step-00000007"]
    # The same checkpoint with its buffer in the full-precision form of older checkpoints.
    shutil.copytree(tmp_path / "parts", tmp_path / "old")
    _as_full_precision_buffer(latest_checkpoint(tmp_path / "old"))
    capsys.readouterr()
    training_loop(_cfg(tmp_path, "parts", resume="auto"))
    out = capsys.readouterr().out
    assert "resuming from" in out and "at step 7" in out and "changed: steps 3 -> 8" in out
    assert "full precision" not in out
    training_loop(_cfg(tmp_path, "old", resume="auto"))
    assert "history buffer saved at full precision" in capsys.readouterr().out

    want, want_state = _everything(straight)
    for resumed in ("parts", "old"):
        got, got_state = _everything(tmp_path / resumed)
        assert want.keys() == got.keys()
        for k in want:  # bitwise: same data position, buffer choices and optimiser moments
            assert torch.equal(want[k], got[k]), (resumed, k)
        assert want_state["counters"] == got_state["counters"]
    assert got_state["history"]["codes"].dtype == torch.uint8  # saved coded from then on
    assert got_state["history"]["count"] == 24  # the buffer was full, then replaced into
    assert len(got_state["rng"]) == 1 and set(got_state["rng"][0]) >= {"torch", "numpy"}


def test_a_checkpoint_costs_one_byte_per_buffered_pixel(tmp_path):
    # A full buffer of 6400 eyes (the cpu preset's) was 49 MB of float32 in every checkpoint.
    buffer = HistoryBuffer(6400, (1, 35, 55), seed=0, levels=CODE_LEVELS["uint8"])
    gen = torch.Generator().manual_seed(0)
    while len(buffer) < buffer.capacity:
        buffer.push(torch.randn((1024, 1, 35, 55), generator=gen).tanh()[: 6400 - len(buffer)])
    torch.save({"history": buffer.state_dict()}, tmp_path / "state.pt")
    pixels = 6400 * 35 * 55
    assert pixels < (tmp_path / "state.pt").stat().st_size < pixels + 100_000


def test_resume_auto_starts_fresh_and_needs_a_run_dir(tmp_path):
    run = training_loop(_cfg(tmp_path, "fresh", resume="auto", steps=1))
    assert load_state(run)["counters"]["step"] == 5
    with pytest.raises(ValueError, match="needs --run-dir"):
        training_loop(_cfg(tmp_path, "x", resume="auto", run_dir=""))
    with pytest.raises(ValueError, match="no checkpoint found"):
        training_loop(_cfg(tmp_path, "y", resume=str(tmp_path / "nowhere")))


def test_a_crash_during_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    run = training_loop(_cfg(tmp_path, "run", steps=1))
    before = latest_checkpoint(run)
    saved = {k: v.clone() for k, v in load_file(before / "refiner.safetensors").items()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        training_loop(_cfg(tmp_path, "run", steps=3, resume="auto"))
    monkeypatch.undo()
    # The half-written save is invisible; the previous checkpoint is whole and loads.
    assert list_checkpoints(run) == [before]
    assert load_state(before)["counters"]["step"] == 5
    for k, v in load_file(before / "refiner.safetensors").items():
        assert torch.equal(v, saved[k])
    # The next save clears the debris.
    training_loop(_cfg(tmp_path, "run", steps=3, resume="auto"))
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert latest_checkpoint(run).name == "step-00000007"


def test_retention_keeps_the_newest(tmp_path):
    run = training_loop(_cfg(tmp_path, "run", ckpt_every=2, keep_checkpoints=2))
    assert [p.name for p in list_checkpoints(run)] == ["step-00000010", "step-00000012"]


def test_nonfinite_loss_stops_naming_step_and_loss_and_keeps_last_checkpoint(tmp_path, capsys):
    # lambda = 1e39 (finite, so the config takes it, but inf once it meets float32 tensors)
    # makes the first adversarial refiner loss infinite (step 5 of 4 + 8), whose update
    # poisons R, so D's loss is NaN in the same step.
    flags = [
        "--preset", "smoke", "--cache-dir", str(tmp_path / "cache"), "--builtin-count", "512",
        "--no-progress", "--lambda-reg", "1e39", "--ckpt-every", "4", "--log-every", "3",
        "--steps", "8", "--num-workers", "0",
    ]  # fmt: skip
    run = tmp_path / "stop"
    assert main([*flags, "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at step 5 (checked at step 6)" in err[0], err
    assert "non-finite" in err[0] and "r_loss" in err[0], err
    # Checked before the save at step 8 too: nothing poisoned was written.
    assert [p.name for p in list_checkpoints(run)] == ["step-00000004"]
    weights = load_file(latest_checkpoint(run) / "refiner.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())

    # With --on-nonfinite skip, every adversarial R update is skipped and counted; D trains.
    run = tmp_path / "skip"
    assert main([*flags, "--run-dir", str(run), "--on-nonfinite", "skip"]) == 0
    state = load_state(run)
    assert state["counters"]["skipped"] == 8 * 2  # k_g refiner steps per iteration
    assert state["counters"]["d_steps"] == 2 + 8
    weights = load_file(latest_checkpoint(run) / "refiner.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def _train_subprocess(tmp_path, *flags: str) -> subprocess.CompletedProcess[str]:
    # A fresh process: Accelerate keeps one precision per process for its lifetime.
    cmd = [
        sys.executable, str(REPO / "distsim" / "train.py"), "--preset", "smoke",
        "--cache-dir", str(tmp_path / "cache"), "--builtin-count", "512", "--no-progress",
        "--num-workers", "0", *flags,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_bf16_trains_on_cpu_and_keeps_a_bf16_buffer(tmp_path):
    run = tmp_path / "bf16"
    proc = _train_subprocess(
        tmp_path, "--run-dir", str(run), "--mixed-precision", "bf16", "--steps", "3"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = load_state(run)
    # Stored as 8-bit codes of a bf16 buffer, which they give back.
    assert state["history"]["codes"].dtype == torch.uint8
    assert state_images(state["history"]).dtype == torch.bfloat16
    assert state["history"]["count"] == 5 * 4  # 5 D steps x b/2
    weights = load_file(latest_checkpoint(run) / "refiner.safetensors")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())
    images = state_images(state["history"]).float()
    assert math.isfinite(images.sum().item()) and images.abs().max() <= 1.0


def test_fp16_on_cpu_is_refused_with_a_clear_message(tmp_path):
    proc = _train_subprocess(
        tmp_path, "--run-dir", str(tmp_path / "r"), "--mixed-precision", "fp16"
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "fp16 needs a CUDA device" in err[-1], err


def _as_version_0_1_config(run_dir: Path, **settings) -> None:
    """Rewrite a run's config.json files as distsim 0.1.0 wrote them (one flat object, the
    settings it had then), with the checkpoints' SHA256SUMS to match."""
    old = json.loads((REPO / "tests" / "config" / "config-0.1.0-smoke.json").read_text())
    now = load_config(run_dir / "config.json")
    old |= {k: v for k, v in now.flat().items() if k in old} | settings
    text = json.dumps(old, indent=2, sort_keys=True)
    (run_dir / "config.json").write_text(text)
    for ckpt in list_checkpoints(run_dir):
        (ckpt / "config.json").write_text(text)
        sums = [line for line in (ckpt / ckpt_mod.CHECKSUMS).read_text().splitlines()
                if not line.endswith("  config.json")]  # fmt: skip
        sums.append(f"{ckpt_mod.file_sha256(ckpt / 'config.json')}  config.json")
        (ckpt / ckpt_mod.CHECKSUMS).write_text("\n".join(sorted(sums, key=lambda s: s[66:])) + "\n")


def test_a_run_from_before_the_config_groups_resumes_and_refines(tmp_path, capsys):
    from distsim.refine import main as refine_main

    run = training_loop(_cfg(tmp_path, "old", steps=3, ckpt_every=3))
    _as_version_0_1_config(run)
    assert "refiner_width" in json.loads((run / "config.json").read_text())  # flat, as then
    flags = ["--run-dir", str(run), "--resume", "auto", "--steps", "5", "--no-progress"]
    assert main(flags) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "changed: steps 3 -> 5" in out
    assert load_state(run)["counters"]["step"] == 9
    assert load_config(run / "config.json").schedule.steps == 5  # written in today's form
    _as_version_0_1_config(run)
    refined = tmp_path / "refined"
    syn = load_config(run / "config.json")
    assert refine_main(["--run", str(run), "--input", _builtin_synthetic(syn), "--out",
                        str(refined), "--no-progress"]) == 0  # fmt: skip
    assert (refined / "manifest.json").is_file()
    # A run made with a setting distsim no longer has: one line, saying which and why.
    _as_version_0_1_config(run, refiner_highpass=2.0)
    capsys.readouterr()
    assert main(flags) == 2
    err = capsys.readouterr().err.strip()
    assert "--refiner-highpass 2.0, which distsim no longer has" in err and "\n" not in err
    assert refine_main(["--run", str(run), "--input", _builtin_synthetic(syn), "--out",
                        str(tmp_path / "again"), "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "--refiner-highpass 2.0, which distsim no longer has" in err and "\n" not in err


def _builtin_synthetic(cfg) -> str:
    from distsim.data import builtin_shards_name

    name = builtin_shards_name("eyes", "synthetic", cfg.data.builtin_count, cfg.data.builtin_seed)
    return str(Path(cfg.data.cache_dir) / name)
