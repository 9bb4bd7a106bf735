"""The SimGAN update (distsim.gan.step): what each step touches, what it refines, pretraining to
identity, the refiner's weight average and its noise inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distsim import data
from distsim.checkpoints.models import load_models
from distsim.checkpoints.store import has_ema, load_weights
from distsim.config import make_config
from distsim.data.pixels import to_unit_range
from distsim.gan.discriminator import Discriminator
from distsim.gan.ema import EMA
from distsim.gan.history import HistoryBuffer
from distsim.gan.losses import psi_identity, psi_standardized
from distsim.gan.noise import indexed_noise
from distsim.gan.refiner import LocalRangeDropout, Refiner
from distsim.gan.step import D_STATS, D_STATS_HISTORY, R_STATS, SimGANStep
from distsim.refine import main as refine_main
from distsim.training.loop import training_loop
from tests.helpers import scalars as _scalars


def _step(history: HistoryBuffer | None = None, **kwargs) -> SimGANStep:
    torch.manual_seed(0)
    refiner = Refiner(1, 8, 1, 3, kwargs.pop("noise_channels", 0))
    discriminator = Discriminator(1, (8, 8, 8, 8))
    opt_r = torch.optim.Adam(refiner.parameters(), 1e-3)
    opt_d = torch.optim.Adam(discriminator.parameters(), 1e-3)
    return SimGANStep(
        refiner, discriminator, opt_r, opt_d, psi=psi_standardized, lambda_reg=0.5,
        history=history, noise_channels=refiner.noise_channels, **kwargs,
    )  # fmt: skip


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 1, 35, 55), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_refiner_step_never_forms_d_gradients_and_moves_only_r():
    step = _step()
    d_before = {k: v.clone() for k, v in step.d_raw.state_dict().items()}
    r_before = {k: v.clone() for k, v in step.r_raw.state_dict().items()}
    stats = step.refiner_step(_images(8), adversarial=True)
    assert stats.shape == (len(R_STATS),) and torch.isfinite(stats).all()
    assert all(p.grad is None for p in step.d_raw.parameters())
    assert all(p.requires_grad for p in step.d_raw.parameters())  # never toggled
    assert all(torch.equal(d_before[k], v) for k, v in step.d_raw.state_dict().items())
    assert any(not torch.equal(r_before[k], v) for k, v in step.r_raw.state_dict().items())
    # r_loss = r_adv + lambda * r_reg in the adversarial phase; r_adv is 0 in pretraining.
    loss, reg, adv = stats[:3].tolist()
    assert loss == pytest.approx(adv + 0.5 * reg, rel=1e-5)
    assert step.refiner_step(_images(8), adversarial=False)[2].item() == 0.0


def test_discriminator_step_refines_only_the_images_it_uses():
    history = HistoryBuffer(32, (1, 35, 55), seed=0)
    step = _step(history)
    seen: list[int] = []
    step.r_raw.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    first = step.discriminator_step(_images(8, 1), _images(8, 2))
    # An empty buffer: all 8 current refined images, half of them kept in the buffer.
    assert seen == [8] and len(history) == 4 and first.shape == (len(D_STATS),)
    second = step.discriminator_step(_images(8, 3), _images(8, 4))
    # The buffer supplies half: only the 4 images D uses are refined.
    assert seen == [8, 4] and len(history) == 8
    assert second.shape == (len(D_STATS_HISTORY),) and torch.isfinite(second).all()
    assert all(p.grad is not None for p in step.d_raw.parameters())


def test_ema_follows_the_half_life_and_ramps_up():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, halflife_images=64, rampup=0.0)
    torch.nn.init.constant_(model.weight, 1.0)
    before = ema.model.weight.detach().clone()
    ema.update(model, images_seen=1000, batch_images=64)  # one half-life in one update
    torch.testing.assert_close(ema.model.weight, 0.5 * before + 0.5)
    assert ema.beta(1000, 32) == pytest.approx(0.5**0.5)
    # Ramp-up: early on the half-life is at most 5% of the images seen.
    ramped = EMA(model, halflife_images=10_000)
    assert ramped.beta(images_seen=640, batch_images=32) == pytest.approx(0.5)
    assert not any(p.requires_grad for p in ramped.model.parameters())


def test_pretraining_reaches_identity_under_the_default_psi_with_a_noise_input(tmp_path):
    """Pretraining teaches R the identity whatever psi the adversarial phase uses (standardized
    would make contrast free and end pretraining on a flat image), and a noise input does not
    get in the way (its weights start at zero)."""
    cfg = make_config(
        "smoke", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
        progress=False, refiner_width=16, lr_r_pretrain=3e-3, pretrain_r_steps=200,
        pretrain_d_steps=0, steps=0, log_every=10, psi="standardized", refiner_noise=1,
    )  # fmt: skip
    run = training_loop(cfg)
    logged = _scalars(run)["pretrain_r/r_change"]
    assert logged[-1] <= 0.02 < logged[0]
    refiner, _, _ = load_models(run)
    held_out = data.ensure_builtin_shards("synthetic", 512, 5, tmp_path / "cache")
    x = to_unit_range(data.first_images(held_out, 128))  # never seen in training (seed 5)
    with torch.no_grad():
        y = refiner(x, torch.randn(x.shape[0], 1, *x.shape[2:]))
    assert (y - x).abs().mean().item() <= 0.02
    # Contrast kept: per-image std within 5% of the input's.
    ratio = (y.std(dim=(1, 2, 3)) / x.std(dim=(1, 2, 3))).mean().item()
    assert 0.95 < ratio < 1.05


def test_ema_and_noise_inputs_train_save_and_refine_deterministically(tmp_path, capsys):
    cfg = make_config(
        "smoke", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
        progress=False, ema_halflife=100.0, refiner_noise=1,
    )  # fmt: skip
    run = training_loop(cfg)
    assert has_ema(run)
    raw, _, _ = load_models(run)
    averaged, _, _ = load_models(run, ema=True)
    assert raw.noise_channels == 1 and raw.stem.in_channels == 2
    pairs = zip(raw.state_dict().values(), averaged.state_dict().values(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)
    # The noise matters: the same image with two noise draws refines differently.
    syn = Path(cfg.data.cache_dir) / "sim-eyes-v3-synthetic-n512-s0"
    x = to_unit_range(data.first_images(syn, 4))
    with torch.no_grad():
        a, b = raw(x, torch.randn(4, 1, 35, 55)), raw(x, torch.randn(4, 1, 35, 55))
    assert (a - b).abs().mean() > 1e-4
    # refine: the average by default, and image i's noise is (seed, i)'s whatever the batch.
    flags = ["--run", str(run), "--input", str(syn), "--no-progress", "--num-workers", "0"]
    outs = {}
    for batch in ("64", "100"):
        out = tmp_path / f"refined-{batch}"
        assert refine_main([*flags, "--out", str(out), "--batch-size", batch]) == 0
        outs[batch] = data.first_images(out, 512)
        source = json.loads((out / "manifest.json").read_text())["source"]
        assert source["checkpoint"]["weights"] == "ema" and source["noise_seed"] == 0
    assert torch.equal(outs["64"], outs["100"])
    want = averaged(
        to_unit_range(data.first_images(syn, 3)), indexed_noise([0, 1, 2], (1, 35, 55), 0)
    )
    got = to_unit_range(outs["64"][:3])
    assert (got - want.detach()).abs().max() <= 1 / 127.5 + 1e-6
    capsys.readouterr()
    out = tmp_path / "raw"
    assert refine_main([*flags, "--out", str(out), "--weights", "raw"]) == 0
    assert not torch.equal(data.first_images(out, 512), outs["64"])


def test_resume_with_ema_and_noise_is_exact(tmp_path):
    base = dict(cache_dir=str(tmp_path / "cache"), progress=False, ema_halflife=50.0,
                refiner_noise=1, steps=6, ckpt_every=1000)  # fmt: skip
    straight = training_loop(make_config("smoke", run_dir=str(tmp_path / "a"), **base))
    training_loop(make_config("smoke", run_dir=str(tmp_path / "b"), **{**base, "steps": 2}))
    training_loop(make_config("smoke", run_dir=str(tmp_path / "b"), resume="auto", **base))
    for name in ("refiner", "refiner_ema", "discriminator"):
        r1, r2 = Refiner(1, 8, 1, 3, 1), Refiner(1, 8, 1, 3, 1)
        if name == "discriminator":
            r1, r2 = Discriminator(1, (8, 8, 8, 8)), Discriminator(1, (8, 8, 8, 8))
            load_weights(straight, None, r1)
            load_weights(tmp_path / "b", None, r2)
        else:
            load_weights(straight, r1, None, refiner_file=name)
            load_weights(tmp_path / "b", r2, None, refiner_file=name)
        for (k, v1), v2 in zip(r1.state_dict().items(), r2.state_dict().values(), strict=True):
            assert torch.equal(v1, v2), (name, k)


def test_ranks_draw_the_rows_of_the_noise_one_rank_would_draw_for_the_global_batch():
    # Replicated buffer (exact world-size invariance): rank r of W gets rows r*b..(r+1)*b of
    # the one-rank draw for W*b images, call after call; sharded: a stream per rank.
    one = _step(noise_channels=1)
    ranks = [_step(noise_channels=1, rank=r, world_size=2, gather=lambda x: x) for r in (0, 1)]
    for n in (4, 2, 4):  # an R step's batch, a D step's half batch, ...
        whole = one._noise(_images(2 * n))
        parts = [step._noise(_images(n)) for step in ranks]
        assert torch.equal(torch.cat(parts), whole)
    sharded = [_step(noise_channels=1, rank=r, world_size=2, sharded_history=True) for r in (0, 1)]
    a, b = (step._noise(_images(4)) for step in sharded)
    assert not torch.equal(a, b)


def test_drop_outs_stay_out_of_pretraining_and_cost_no_self_regularisation_after_it():
    """--refiner-dropout: R's pretraining to the identity must not see its drop-outs (every
    one costs there, and the rate would be driven to where no gradient brings it back), so its
    drop-out channel gets no gradient then; in the adversarial phase it does, and with the
    free target a drop-out costs no self-regularisation."""
    torch.manual_seed(0)
    refiner = Refiner(1, 8, 1, 3, 1, LocalRangeDropout(slack=0.02))
    discriminator = Discriminator(1, (8, 8, 8, 8))
    opt_r = torch.optim.Adam(refiner.parameters(), 1e-3)
    opt_d = torch.optim.Adam(discriminator.parameters(), 1e-3)
    step = SimGANStep(
        refiner, discriminator, opt_r, opt_d, psi=psi_identity, lambda_reg=0.5,
        noise_channels=1,
    )  # fmt: skip
    x = torch.ones(8, 1, 35, 55)
    x[:, :, 8:28, 10:40] = 0.0  # a surface with edges to drop
    drop_weight = lambda: refiner.head.weight[1].detach().clone()  # noqa: E731
    before = drop_weight()
    for _ in range(3):
        stats = step.refiner_step(x, adversarial=False)
        assert stats[R_STATS.index("r_change")].item() == 0.0  # the identity: no drop-outs
    assert torch.equal(drop_weight(), before)
    stats = step.refiner_step(x, adversarial=True)
    assert stats[R_STATS.index("r_change")].item() > 0.0  # p = 1/4 at the edges
    assert not torch.equal(drop_weight(), before)

    # With free_target (train.py, --refiner-dropout) the drop-outs cost no
    # self-regularisation: a refiner that only drops (its other head channel zero) has none.
    step.free_target = refiner.output.drop_target
    with torch.no_grad():
        refiner.head.weight.zero_()
        refiner.head.bias.copy_(torch.tensor([0.0, 4.0]))  # p = 0.95
    stats = step.refiner_step(x, adversarial=True)
    assert stats[R_STATS.index("r_change")].item() > 0.005
    assert stats[R_STATS.index("r_reg")].item() == 0.0
