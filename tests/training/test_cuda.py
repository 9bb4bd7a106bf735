"""Training on a GPU: bf16, fp16 with the loss scaler, compiled vs eager, and resume.

Marked `cuda` and skipped without a GPU, except under `DISTSIM_TEST_DEVICE=cpu`, which
runs them on the CPU (what `benchmarks/gpu_check.sh --cpu-dry-run` does, so that the GPU
check cannot fail for a trivial reason on its first GPU call). On the CPU, fp16 is refused
by design, and that is what the fp16 test then checks.
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from distsim.checkpoints.store import latest_checkpoint, load_state
from distsim.config import make_config
from distsim.gan.discriminator import Discriminator
from distsim.gan.history import state_images
from distsim.gan.losses import psi_standardized
from distsim.gan.refiner import Refiner
from distsim.gan.step import SimGANStep
from distsim.training.loop import training_loop
from tests.helpers import saved_settings
from tests.helpers import scalars as _scalars

DEVICE = "cpu" if os.environ.get("DISTSIM_TEST_DEVICE") == "cpu" else "cuda"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(),
        reason="needs a GPU (or DISTSIM_TEST_DEVICE=cpu for a dry run)",
    ),
]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state: a run in bf16 would make the next run's fp16
    an error in the same process. Each test starts from none."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _cfg(tmp_path, name: str, **overrides):
    base = dict(run_dir=str(tmp_path / name), cache_dir=str(tmp_path / "cache"),
                progress=False, steps=6, ckpt_every=1000)  # fmt: skip
    return make_config("smoke", **{**base, **overrides})


def test_smoke_training_in_bf16(tmp_path):
    run = training_loop(_cfg(tmp_path, "bf16", mixed_precision="bf16", channels_last=True))
    scalars = _scalars(run)
    assert all(torch.isfinite(torch.tensor(scalars[t])).all() for t in ("r_loss", "d_loss"))
    assert saved_settings(run / "config.json")["mixed_precision"] == "bf16"
    history = state_images(load_state(run)["history"])
    assert history.dtype == torch.bfloat16 and history.shape[0] > 0


def test_fp16_scales_both_optimizers(tmp_path):
    cfg = _cfg(tmp_path, "fp16", mixed_precision="fp16")
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
            training_loop(cfg)
        return
    run = training_loop(cfg)
    state = load_state(run)
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    assert state["opt_r"]["state"] and state["opt_d"]["state"]  # both stepped
    weights = load_file(latest_checkpoint(run) / "refiner.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_compiled_step_matches_eager(tmp_path):
    """Four iterations from the same weights and data, eager and compiled (fp32; TF32 off so
    that both use full float32 matrix products): statistics and weights agree to 1e-4."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(DEVICE)
    x = torch.rand(8, 1, 35, 55, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    results = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        r, d = Refiner(1, 8, 1, 3).to(device), Discriminator(1, (8, 8, 8, 8)).to(device)
        step = SimGANStep(
            r, d, torch.optim.Adam(r.parameters(), 1e-3), torch.optim.Adam(d.parameters(), 1e-3),
            psi=psi_standardized, lambda_reg=0.5, compile=compiled,
        )  # fmt: skip
        stats = []
        for _ in range(4):
            stats += [step.refiner_step(x), step.discriminator_step(x, x)]
        results[compiled] = (stats, [p.detach().clone() for p in r.parameters()])
    for a, b in zip(results[False][0], results[True][0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(results[False][1], results[True][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_resume_with_compile_is_exact(tmp_path):
    """Deterministic kernels: stopping and resuming gives the weights never stopping gives."""
    common = dict(compile=True, deterministic=True)
    straight = training_loop(_cfg(tmp_path, "straight", **common))
    training_loop(_cfg(tmp_path, "parts", steps=2, **common))
    training_loop(_cfg(tmp_path, "parts", resume="auto", **common))
    for name in ("refiner", "discriminator"):
        want = load_file(latest_checkpoint(straight) / f"{name}.safetensors")
        got = load_file(latest_checkpoint(tmp_path / "parts") / f"{name}.safetensors")
        for k in want:
            assert torch.equal(want[k], got[k]), (name, k)
