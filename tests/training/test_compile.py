"""torch.compile on the CPU (inductor): the compiled step trains as the eager one does, and a
compiled run stops and resumes exactly. (tests/training/test_cuda.py does the same on a GPU.)"""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from distsim.checkpoints.store import latest_checkpoint
from distsim.config import make_config
from distsim.training.loop import training_loop


def _weights(run) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run)
    return {f"{m}.{k}": v for m in ("refiner", "discriminator")
            for k, v in load_file(ckpt / f"{m}.safetensors").items()}  # fmt: skip


def test_compiled_training_matches_eager_and_resumes_exactly(tmp_path, capsys):
    base = dict(cache_dir=str(tmp_path / "cache"), progress=False, steps=4, ckpt_every=1000,
                num_workers=0)  # fmt: skip
    eager = training_loop(make_config("smoke", run_dir=str(tmp_path / "eager"), **base))
    compiled = dict(base, compile=True)
    straight = training_loop(make_config("smoke", run_dir=str(tmp_path / "c"), **compiled))
    assert "torch.compile failed" not in capsys.readouterr().err  # no fallback to eager
    # 2 + 2 pretraining steps and 4 adversarial ones: compiled and eager kernels round
    # differently, by float32 rounding, which 8 Adam updates keep small.
    want, got = _weights(eager), _weights(straight)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-3, atol=1e-4, msg=k)
    # Stop after step 6 and resume: bitwise what never stopping gave.
    training_loop(make_config("smoke", run_dir=str(tmp_path / "p"), **{**compiled, "steps": 2}))
    training_loop(make_config("smoke", run_dir=str(tmp_path / "p"), resume="auto", **compiled))
    resumed = _weights(tmp_path / "p")
    for k in got:
        assert torch.equal(resumed[k], got[k]), k
