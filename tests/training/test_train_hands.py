"""Training on depth hands: uint16 normalisation, invalid pixels, presets, and a smoke run on
the built-in hand simulator (checkpoints, colour grids, resume)."""

import numpy as np
import pytest
import torch
from PIL import Image

from distsim import data
from distsim.checkpoints.models import load_models
from distsim.checkpoints.store import best_checkpoint, list_checkpoints, load_state, read_json
from distsim.config import HAND_REAL_DOMAINS, PRESETS, make_config
from distsim.data.depth import codes_to_unit, fill_invalid, fill_passes, unit_to_codes
from distsim.data.pixels import to_unit_range
from distsim.gan.discriminator import Discriminator
from distsim.training.loop import training_loop
from shards.sim import hands
from tests.helpers import saved_settings


def test_uint16_depth_maps_linearly_onto_unit_range() -> None:
    codes = torch.tensor([1, 32768, 65535], dtype=torch.int32).view(1, 1, 1, 3)
    x = to_unit_range(codes.to(torch.uint16))
    torch.testing.assert_close(x.view(-1), torch.tensor([-1.0, 0.0, 1.0]))
    every = torch.arange(1, 65536, dtype=torch.int32).view(1, 1, 1, -1)
    assert torch.equal(unit_to_codes(codes_to_unit(every)[0]), every)  # exact inverse


def test_holes_take_the_farthest_valid_neighbour_and_wide_ones_the_far_plane() -> None:
    x = torch.full((1, 1, 5, 30), -0.5)
    x[..., 0, :] = 0.4  # a farther surface above the hand
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[..., 1, 3] = False  # a small hole touching both: takes the far side
    valid[..., :, 10:] = False  # wider than 2 * passes: the far plane beyond reach
    out = fill_invalid(x, valid, passes=4)
    assert out[0, 0, 1, 3] == pytest.approx(0.4)
    assert torch.equal(out[valid], x[valid])  # measured pixels untouched
    assert (out[..., :, 20:] == 1.0).all()
    assert out[..., :, 10:14].max() <= 0.4  # grown from the rim, never invented


def test_a_shadow_between_hand_and_background_is_background_not_half_hand() -> None:
    """A projector shadow: hand | 6 invalid px | far background. Each pixel's nearest rim
    would fill its hand-side half with the hand (a fattened silhouette); the hole's farthest
    rim depth fills all of it with the background, as the estimator reads invalid pixels.
    A hole inside the hand takes the hand's own farthest depth, never the background."""
    x = torch.full((1, 1, 12, 24), 1.0)  # the far plane
    x[..., :, :8] = torch.linspace(-0.6, -0.4, 8)  # the hand, farther to the right
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[..., :, 8:14] = False  # the shadow band
    valid[..., 5, 3] = False  # a drop-out inside the hand
    out = fill_invalid(x, valid)
    assert (out[..., :, 8:14] == 1.0).all()
    assert out[0, 0, 5, 3] == pytest.approx(x[0, 0, 5, 4].item())  # its farthest neighbour
    assert torch.equal(out[valid], x[valid])


def test_fill_passes_grow_with_the_crop() -> None:
    assert fill_passes(32) == fill_passes(64) == 8 and fill_passes(224) == 28
    x = torch.full((1, 1, 224, 224), 1.0)
    x[..., :, :100] = -0.5
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[..., :, 100:126] = False  # a 26 px shadow, as at 224 px
    assert (fill_invalid(x, valid)[..., :, 100:126] == 1.0).all()


def test_d_cannot_tell_real_crops_by_invalid_pixels() -> None:
    """After the handling, every pixel of a real crop is a depth in [-1, 1] that its own
    measured pixels contain, so no value marks "no measurement"; and a detector of invalid
    values (the raw code-0 value) that separates raw real from synthetic perfectly finds
    nothing on what D sees."""
    real = torch.from_numpy(hands.generate("real", 12, 0, size=32)["image"].astype(np.int32))
    syn = torch.from_numpy(hands.generate("synthetic", 12, 0, size=32)["image"].astype(np.int32))
    assert (real == 0).any() and not (syn == 0).any()  # the domains differ this way
    raw_invalid_value = -1.0 - 2.0 / 65534  # where code 0 lands without handling
    seen_real, seen_syn = to_unit_range(real), to_unit_range(syn)
    for seen in (seen_real, seen_syn):
        assert seen.min() >= -1.0 and seen.max() <= 1.0
        assert not torch.isclose(seen, torch.tensor(raw_invalid_value), atol=1e-6).any()
    measured = codes_to_unit(real)[0]
    for i in range(len(real)):
        own = set(measured[i][real[i] > 0].tolist())
        assert set(seen_real[i].unique().tolist()) <= own | {1.0}


def test_hand_presets_validate_and_their_discriminator_has_patches() -> None:
    assert HAND_REAL_DOMAINS == hands.REAL_DOMAINS
    for name in ("hands", "hands-cpu"):
        cfg = make_config(name)
        assert cfg.data.builtin_sim == "hands" and cfg.optim.psi == "identity"
        assert cfg.refiner.output == "local_range"
        d = Discriminator(1, cfg.discriminator.widths, cfg.discriminator.arch)
        side = cfg.data.builtin_size
        logits = d(torch.zeros(1, 1, side, side))
        assert logits.shape[2] >= 2 and logits.shape[3] >= 2, (name, logits.shape)
    paper = PRESETS["hands"]
    assert paper["disc_arch"] == "hands" and PRESETS["hands-cpu"]["disc_arch"] == "eyes"
    assert (paper["refiner_kernel"], paper["refiner_blocks"], paper["builtin_size"]) == (7, 10, 224)
    assert (paper["pretrain_r_steps"], paper["pretrain_d_steps"]) == (500, 200)
    with pytest.raises(ValueError, match="builtin-real"):
        make_config("hands-cpu", builtin_real="real-lit")  # an eye domain
    make_config("cpu", builtin_real="real-lit")


def test_builtin_hand_cache_names_version_and_size() -> None:
    name = data.builtin_shards_name("hands", "real", 64, 3, 48)
    assert name == f"sim-hands-v{hands.SIM_VERSION}-real-48px-n64-s3"


def _hand_cfg(tmp_path, **overrides):
    settings = dict(
        builtin_sim="hands", builtin_size=32, builtin_count=48, disc_arch="hands",
        psi="identity", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
        progress=False, history_size=32,
    )  # fmt: skip
    return make_config("smoke", **(settings | overrides))


def test_hand_smoke_run_writes_colour_grids_and_resumes(tmp_path) -> None:
    cfg = _hand_cfg(tmp_path, realism_images=8)
    run_dir = training_loop(cfg)
    total = cfg.schedule.pretrain_r_steps + cfg.schedule.pretrain_d_steps + cfg.schedule.steps
    saved = saved_settings(run_dir / "config.json")
    assert saved["builtin_sim"] == "hands" and saved["builtin_size"] == 32
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        f"sim-hands-v{hands.SIM_VERSION}-{d}-32px-n48-s0" for d in ("real", "synthetic")
    ]
    assert list_checkpoints(run_dir)[-1].name == f"step-{total:08d}"
    # Realism is scored without the eye-only pupil shift, and a best checkpoint is picked.
    best = best_checkpoint(run_dir)
    assert best is not None
    scores = read_json(best / "meta.json")["realism"]
    assert "c2st_refined" in scores and "pupil_shift_px" not in scores

    picture = np.asarray(Image.open(sorted((run_dir / "images").glob("step-*.png"))[-1]))
    assert picture.ndim == 3 and picture.shape[2] == 3  # colour
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert (255, 0, 255) in colours  # the real column's invalid pixels, marked
    assert len(colours) > 50  # a colour map, not grey

    # Resume for two more adversarial steps: it continues from the saved counters.
    more = training_loop(_hand_cfg(tmp_path, steps=cfg.schedule.steps + 2, resume="auto"))
    assert load_state(more)["counters"]["step"] == total + 2


def test_hand_run_with_drop_outs_trains_and_its_checkpoint_refines_with_them(tmp_path) -> None:
    """--refiner-dropout through train.py: the run gets through the adversarial phase, its
    checkpoint rebuilds a refiner with the drop-out channel, and that refiner drops edge
    pixels to exactly the farthest depth around them, the same for the same noise."""
    cfg = _hand_cfg(tmp_path, refiner_output="local_range", refiner_noise=1, refiner_dropout=True)
    run_dir = training_loop(cfg)
    refiner, _, saved = load_models(list_checkpoints(run_dir)[-1])
    assert saved.refiner.dropout and refiner.head.out_channels == 2
    assert type(refiner.output).__name__ == "LocalRangeDropout"
    x = torch.ones(4, 1, 32, 32)
    x[:, :, 8:24, 8:24] = 0.0  # a surface with edges
    noise = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = refiner(x, noise)
        assert torch.equal(refiner(x, noise), y)
    edges = refiner.output.drop_target(x) > x
    dropped = edges & (y == refiner.output.drop_target(x))
    assert dropped.any()  # p started at a quarter and a few steps do not take it to zero
    nothing_near = -refiner.output.drop_target(-x) == 1.0  # window all far plane
    assert (y[nothing_near] == 1.0).all()  # stays exactly there
