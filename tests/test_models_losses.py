import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distsim.losses import (
    local_adversarial_loss,
    patch_accuracy,
    psi_channel_mean,
    psi_identity,
    self_regularization_loss,
)
from distsim.models import (
    DROP_LOGIT_START,
    RANGE_SLACK,
    REAL,
    REFINED,
    Discriminator,
    HighPass,
    Refiner,
    farthest_depth,
)


@pytest.mark.parametrize(
    ("arch", "shape", "patches"),
    [("eyes", (35, 55), (7, 12)), ("hands", (224, 224), (7, 7))],
)
def test_discriminator_patch_map(arch, shape, patches):
    d = Discriminator(1, (96, 64, 32, 32), arch)
    out = d(torch.randn(3, 1, *shape))
    assert out.shape == (3, 2, *patches)


def test_discriminator_layers_follow_paper():
    convs = [
        m
        for m in Discriminator(1, (96, 64, 32, 32), "eyes").modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    assert [(c.kernel_size[0], c.stride[0], c.out_channels) for c in convs] == [
        (3, 2, 96),
        (3, 2, 64),
        (3, 1, 32),
        (1, 1, 32),
        (1, 1, 2),
    ]
    hand = [
        m
        for m in Discriminator(1, (96, 64, 32, 32), "hands").modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    assert [(c.kernel_size[0], c.stride[0]) for c in hand] == [
        (7, 4),
        (5, 2),
        (3, 2),
        (1, 1),
        (1, 1),
    ]


def test_bad_discriminator_args():
    with pytest.raises(ValueError, match="arch"):
        Discriminator(1, (1, 1, 1, 1), "cars")
    with pytest.raises(ValueError, match="4 widths"):
        Discriminator(1, (1, 1, 1), "eyes")


@pytest.mark.parametrize(
    ("channels", "kernel", "blocks", "shape"),
    [(1, 3, 4, (35, 55)), (1, 7, 10, (64, 64)), (3, 3, 2, (35, 55))],
)
def test_refiner_keeps_shape_and_range(channels, kernel, blocks, shape):
    r = Refiner(channels, 16, blocks, kernel)
    x = torch.randn(2, channels, *shape) * 5
    y = r(x)
    assert y.shape == x.shape
    assert y.abs().max() < 1.0
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in r.modules())
    assert n_convs == 2 + 2 * blocks


def test_residual_refiner_starts_as_the_exact_identity_and_keeps_the_far_plane():
    torch.manual_seed(0)
    r = Refiner(1, 8, 2, 5, noise_channels=1, output="residual")
    # A depth crop: far-plane background (+1), a hand in between, a near pixel at -1.
    x = torch.ones(2, 1, 16, 16)
    x[:, :, 4:12, 6:10] = torch.linspace(-0.9, 0.3, 8).view(8, 1)
    x[:, :, 5, 7] = -1.0
    noise = torch.randn(2, 1, 16, 16)
    assert torch.equal(r(x, noise), x)  # exact, limits included: nothing to pretrain away
    with torch.no_grad():
        r.head.bias.fill_(0.5)  # a correction that pushes everything past the far plane
    y = r(x, noise)
    assert y.max() == 1.0 and y.min() >= -1.0 and (y[x == 1.0] == 1.0).all()
    # The clamp passes the gradient straight through, so a pixel pushed past a limit can
    # still be pulled back (a plain clamp would leave it stuck there).
    y.sum().backward()
    assert r.head.bias.grad.item() == x.numel()
    with pytest.raises(ValueError, match="output must be one of"):
        Refiner(1, 8, 1, 3, output="sigmoid")


def test_bounded_refiner_is_the_identity_at_first_and_its_correction_stays_within_two():
    torch.manual_seed(0)
    r = Refiner(1, 8, 2, 5, noise_channels=1, output="bounded")
    x = torch.ones(2, 1, 16, 16)
    x[:, :, 4:12, 6:10] = torch.linspace(-0.9, 0.3, 8).view(8, 1)
    noise = torch.randn(2, 1, 16, 16)
    assert torch.equal(r(x, noise), x)
    with torch.no_grad():
        r.head.bias.fill_(1e6)  # what ran away under "residual": now a correction of 2 at most
    y = r(x, noise)
    assert torch.equal(y, torch.ones_like(x))  # clamped: every pixel at the far plane
    h = torch.relu(r.stem(torch.cat([x, noise], 1)))
    raw = x + 2.0 * torch.tanh(r.head(r.blocks(h)))
    assert raw.max() <= 3.0  # the value under the clamp is bounded
    with torch.no_grad():
        r.head.bias.fill_(0.25)
    y = r(x, noise)
    torch.testing.assert_close(y, (x + 2 * np.tanh(0.25)).clamp(-1, 1))


def _reference_adv(logits: np.ndarray, target: int) -> np.ndarray:
    """Per-image mean over patches of -log softmax, written out by hand."""
    b, _, h, w = logits.shape
    out = np.zeros(b)
    for i in range(b):
        total = 0.0
        for y in range(h):
            for x in range(w):
                z0, z1 = logits[i, 0, y, x], logits[i, 1, y, x]
                p = math.exp([z0, z1][target]) / (math.exp(z0) + math.exp(z1))
                total += -math.log(p)
        out[i] = total / (h * w)
    return out


@pytest.mark.parametrize("target", [REAL, REFINED])
def test_local_adversarial_loss_matches_reference(target):
    torch.manual_seed(0)
    logits = torch.randn(4, 2, 7, 12) * 3
    got = local_adversarial_loss(logits, target)
    want = torch.from_numpy(_reference_adv(logits.double().numpy(), target)).float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_adversarial_loss_semantics():
    # D sure a patch is refined: R's loss (target REAL) is large, D's loss on it is small.
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, REFINED] = 10.0
    assert local_adversarial_loss(logits, REAL).item() > 9.0
    assert local_adversarial_loss(logits, REFINED).item() < 1e-3
    assert patch_accuracy(logits, REFINED).item() == 1.0
    assert patch_accuracy(logits, REAL).item() == 0.0
    # At D's indifference the loss is log 2 either way.
    half = torch.zeros(2, 2, 3, 3)
    torch.testing.assert_close(local_adversarial_loss(half, REAL), torch.full((2,), math.log(2)))
    with pytest.raises(ValueError):
        local_adversarial_loss(half, 2)


def test_self_regularization():
    x = torch.zeros(2, 1, 4, 5)
    y = x.clone()
    y[0, 0, 0, 0] = 2.0
    torch.testing.assert_close(
        self_regularization_loss(y, x, psi_identity), torch.tensor([2.0 / 20, 0.0])
    )


def test_psi_channel_mean_ignores_colour_shifts_that_keep_the_mean():
    x = torch.rand(2, 3, 8, 8)
    shifted = x + torch.tensor([0.3, -0.3, 0.0]).view(1, 3, 1, 1)
    assert psi_channel_mean(x).shape == (2, 1, 8, 8)
    torch.testing.assert_close(
        self_regularization_loss(shifted, x, psi_channel_mean), torch.zeros(2), atol=1e-6, rtol=0
    )
    assert (self_regularization_loss(shifted, x, psi_identity) > 0.19).all()


def test_global_logits_pool_the_patch_map_into_one_decision():
    from distsim.losses import global_logits

    logits = torch.zeros(2, 2, 3, 4)
    logits[0, REFINED, 0, 0] = 12.0  # one confident patch among 12 indifferent ones
    pooled = global_logits(logits)
    assert pooled.shape == (2, 2, 1, 1)
    torch.testing.assert_close(pooled[0, REFINED, 0, 0], torch.tensor(1.0))
    local = local_adversarial_loss(logits, REAL)
    glob = local_adversarial_loss(pooled, REAL)
    # Global: CE of the mean logits, log(1 + e^1); local: mean of 11 x log 2 and log(1 + e^12).
    torch.testing.assert_close(glob[0], torch.tensor(math.log(1 + math.e)))
    want_local = (11 * math.log(2) + math.log(1 + math.exp(12))) / 12
    torch.testing.assert_close(local[0], torch.tensor(want_local))


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_discriminator_blur_matches_scipy_and_keeps_flat_images(sigma):
    from scipy.ndimage import gaussian_filter

    from distsim.models import GaussianBlur

    x = torch.randn(3, 2, 35, 55, generator=torch.Generator().manual_seed(0))
    got = GaussianBlur(sigma, channels=2)(x)
    # torch's "reflect" padding is scipy's "mirror"; no blur across images or channels.
    want = gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0)
    torch.testing.assert_close(got, torch.from_numpy(want), rtol=1e-5, atol=1e-5)
    flat = torch.full((1, 1, 35, 55), 0.3)
    torch.testing.assert_close(GaussianBlur(sigma)(flat), flat)
    assert torch.equal(GaussianBlur(0.0)(x), x)


def test_standardized_psi_prices_shape_not_tone():
    from distsim.losses import psi_standardized

    x = torch.rand(4, 1, 35, 55, generator=torch.Generator().manual_seed(1)) * 2 - 1
    # A darker, flatter copy (any positive affine tone change) costs nothing...
    toned = 0.6 * x - 0.3
    assert self_regularization_loss(toned, x, psi_standardized).max() < 1e-2
    assert self_regularization_loss(toned, x).min() > 0.3  # ...unlike pixel L1
    # ...while moving content still does.
    shifted = torch.roll(x, 2, dims=3)
    assert self_regularization_loss(shifted, x, psi_standardized).min() > 0.5
    standardized = psi_standardized(x).flatten(1)
    torch.testing.assert_close(standardized.mean(1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardized.std(1), torch.ones(4), atol=2e-3, rtol=0)


@pytest.mark.parametrize("slack", [RANGE_SLACK, 0.02])
def test_local_range_refiner_keeps_each_pixel_within_the_depths_around_it(slack: float):
    """A sensor's artifacts only mix the surfaces it sees: no refined pixel may be nearer than
    the nearest input depth in its window or farther than the farthest (plus the slack)."""
    torch.manual_seed(0)
    r = Refiner(1, 8, 2, 5, noise_channels=1, output="local_range", window=3, slack=slack)
    x = torch.ones(2, 1, 16, 16)  # far plane
    x[:, :, 4:12, 6:10] = torch.linspace(-0.9, 0.3, 8).view(8, 1)  # a "finger"
    noise = torch.randn(2, 1, 16, 16)
    assert torch.equal(r(x, noise), x)  # the identity at first
    with torch.no_grad():
        torch.nn.init.normal_(r.head.weight, std=5.0)
        r.head.bias.fill_(-1.0)  # pull everything near
    y = r(x, noise)
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    windows = torch.stack([xp[..., i : i + 16, j : j + 16] for i in range(3) for j in range(3)])
    lo, hi = windows.min(0).values - slack, windows.max(0).values + slack
    assert (y >= lo - 1e-6).all() and (y <= hi + 1e-6).all()
    # Background two pixels from the finger stays exactly the far plane: no rim, no haze.
    assert (y[:, :, :, :5] == 1.0).all() and (y[:, :, :, 11:] == 1.0).all()
    # Inside the finger, far from its edge, it cannot be erased to the far plane.
    assert (y[:, :, 6:10, 7:9] <= x[:, :, 6:10, 7:9] + 0.2 + slack).all()
    # The edge may move anywhere between the finger and the far plane (flying pixels).
    assert (y[:, :, 4:12, 5] < 1.0 - slack).any()
    y.sum().backward()  # the clamp passes the gradient straight through
    assert r.head.bias.grad.abs().item() > 0
    with pytest.raises(ValueError, match="window must be odd"):
        Refiner(1, 8, 1, 3, output="local_range", window=4)
    with pytest.raises(ValueError, match="slack must be in"):
        Refiner(1, 8, 1, 3, output="local_range", slack=-0.1)


class _FixedHead(torch.nn.Module):
    """A refiner head that asks for the correction `change` whatever it is shown."""

    def __init__(self, change: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.atanh(change / 2.0)  # local_range squashes by 2 tanh

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_highpass_refiner_cannot_move_a_region_but_can_drop_a_pixel():
    """--refiner-highpass: a correction as wide as a forearm (R asking for all of it 0.5
    farther) cancels inside it, one the clamp hides under the far plane does not spill onto
    the hand, and a one-pixel drop-out keeps nearly all of itself; the same refiner without
    it (sigma 0, the default) moves the forearm."""
    x = torch.full((1, 1, 24, 24), 1.0)  # far plane
    x[:, :, 4:20, 6:18] = torch.linspace(-0.5, 0.2, 16).view(16, 1)  # a forearm
    forearm = torch.zeros_like(x, dtype=torch.bool)
    forearm[:, :, 4:20, 6:18] = True
    r = Refiner(1, 8, 1, 3, output="local_range", slack=0.5, highpass=2.0)
    plain = Refiner(1, 8, 1, 3, output="local_range", slack=0.5)
    plain.load_state_dict(r.state_dict())  # the blur kernel is not a weight

    r.head = plain.head = _FixedHead(torch.full_like(x, 0.5))
    assert (plain(x) - x)[:, :, 8:16, 10:14].min() > 0.4  # without it the forearm moves...
    assert (r(x) - x)[:, :, 8:16, 10:14].abs().max() < 0.02  # ...with it, its middle does not

    # A large correction over the background only: clamped away there, and not blurred onto
    # the forearm (taking the blur off the raw correction would move its rim 0.5 nearer).
    r.head = _FixedHead(torch.where(forearm, 0.0, 1.9))
    torch.testing.assert_close(r(x), x)

    # A drop-out asked at one pixel of the forearm's edge still happens, nearly whole; what
    # the blur takes off it pulls the pixels around it nearer, no further than the local range
    # lets them (a row's step of the forearm's slope plus the slack).
    drop = torch.zeros_like(x)
    drop[..., 12, 6] = 1.9
    r = Refiner(1, 8, 1, 3, output="local_range", slack=0.02, highpass=2.0)
    r.head = _FixedHead(drop)
    moved = r(x) - x
    assert moved[..., 12, 6].item() > 0.9 * (1.0 - x[..., 12, 6].item())
    moved[..., 12, 6] = 0.0
    assert moved.min() >= -(0.7 / 15 + 0.02) - 1e-6 and moved.max() <= 0.0

    one = torch.zeros(1, 1, 24, 24)
    one[..., 12, 12] = 1.0
    assert 0.95 < r.highpass(one)[..., 12, 12].item() < 0.97  # 96 % of a pixel kept at sigma 2
    with pytest.raises(ValueError, match="highpass must be >= 0"):
        Refiner(1, 8, 1, 3, output="local_range", highpass=-1.0)
    with pytest.raises(ValueError, match="not tanh"):
        Refiner(1, 8, 1, 3, output="tanh", highpass=2.0)


def test_dropout_refiner_drops_at_its_rate_to_the_farthest_depth_around():
    """--refiner-dropout: each pixel shows the farthest depth in its window exactly where its
    draw (the first noise channel through the normal CDF) falls under the head's rate p, so
    a silhouette loses a random part of its edge to the far plane and an inner edge takes
    the surface behind; flat surfaces are unchanged; the same noise gives the same crop; the
    rest of the change cannot take a pixel farther than itself plus the slack; and p's
    gradient is what moving the pixel to the farthest depth is worth, times p (1 - p)."""
    x = torch.ones(64, 1, 16, 16)  # far plane
    x[:, :, 3:13, 3:13] = 0.0  # a palm
    x[:, :, 6:10, 5:9] = -0.5  # a finger in front of it
    farthest = F.max_pool2d(x, 3, stride=1, padding=1)
    torch.manual_seed(0)
    noise = torch.randn(64, 1, 16, 16)
    r = Refiner(1, 8, 1, 3, noise_channels=1, output="local_range", slack=0.02, dropout=True)
    edges = farthest > x
    start = (r(x, noise) != x).float()[edges].mean().item()
    assert abs(start - 0.25) < 0.03  # a quarter of each edge at first (p = sigmoid(-1.1))
    assert torch.equal(r(x, noise, drop=False), x)  # and the identity without drop-outs

    rate = 0.3
    with torch.no_grad():
        r.head.bias[1] = math.log(rate / (1 - rate)) - DROP_LOGIT_START
    y = r(x, noise)
    drawn = torch.special.ndtr(noise) < rate
    torch.testing.assert_close(y, torch.where(drawn, farthest, x), rtol=0, atol=0)
    assert abs((y != x).float()[edges].mean().item() - rate) < 0.02
    assert ((y == 1.0) & (x < 1.0) & (farthest == 1.0)).any()  # silhouette -> far plane
    inner = edges & (x == -0.5) & (farthest == 0.0)
    assert (y[inner] == 0.0).any() and (y[inner] == -0.5).any()  # finger edge -> palm behind
    assert torch.equal(r(x, noise), y)
    with torch.no_grad():
        r.head.bias[1] = 3.0 - DROP_LOGIT_START  # p = 0.95: still exactly the farthest depth
    high = torch.special.ndtr(noise) < torch.sigmoid(torch.tensor(3.0))
    assert torch.equal(r(x, noise), torch.where(high, farthest, x))
    with torch.no_grad():
        r.head.bias[1] = math.log(rate / (1 - rate)) - DROP_LOGIT_START

    y.mean().backward()
    expected = (rate * (1 - rate) * (farthest - x)).sum() / x.numel()
    torch.testing.assert_close(r.head.bias.grad[1], expected, rtol=1e-4, atol=1e-7)

    with torch.no_grad():
        r.head.bias[0] = 1.0  # the rest of the change: everything 2 tanh(1) = 1.5 farther
    y = r(x, noise)
    kept = ~drawn & (x < 1.0)
    torch.testing.assert_close(y[kept], (x + 0.02)[kept])
    with pytest.raises(ValueError, match="dropout needs"):
        Refiner(1, 8, 1, 3, output="local_range", dropout=True)
    with pytest.raises(ValueError, match="dropout needs"):
        Refiner(1, 8, 1, 3, noise_channels=1, output="bounded", dropout=True)


def test_edge_refiner_reaches_the_window_only_across_a_depth_edge():
    """--refiner-edge: on a sloping surface (a forearm, 0.03 a pixel) a pixel keeps to its own
    depth +- the slack, neither pulled to its window's nearest depth (bands of nearer depth)
    nor dropped to its farthest; across a step larger than `edge` (the silhouette, a finger
    over the palm) flying pixels and drop-outs reach the window as without it; and
    ``drop_target`` is what a drop-out shows, so a drop-only refiner costs no
    self-regularisation."""
    x = torch.ones(64, 1, 16, 16)  # far plane
    x[:, :, 2:14, 2:14] = torch.linspace(-0.3, 0.03, 12).view(12, 1)  # a sloping palm
    x[:, :, 6:10, 5:9] = -0.6  # a finger in front of it
    nearest = -F.max_pool2d(-x, 3, stride=1, padding=1)
    farthest = F.max_pool2d(x, 3, stride=1, padding=1)
    torch.manual_seed(0)
    noise = torch.randn(64, 1, 16, 16)
    r = Refiner(1, 8, 1, 3, noise_channels=1, output="local_range", slack=0.02, edge=0.05)
    plain = Refiner(1, 8, 1, 3, noise_channels=1, output="local_range", slack=0.02)
    plain.load_state_dict(r.state_dict())
    assert torch.equal(r(x, noise), x)  # still the identity at first
    for bias, bound, without in ((-1.0, nearest - 0.02, plain), (1.0, farthest + 0.02, plain)):
        with torch.no_grad():
            r.head.bias.fill_(bias)  # everything 2 tanh(1) = 1.5 nearer, then farther
            without.head.bias.fill_(bias)
        y, y_plain = r(x, noise), without(x, noise)
        step = (bound - x).abs() > 0.05 + 0.02  # the window holds a depth edge this way
        surface = (x < 1.0) & ~step
        torch.testing.assert_close(y[surface], (x + math.copysign(0.02, bias))[surface])
        torch.testing.assert_close(y[step], bound.clamp(-1, 1)[step])
        torch.testing.assert_close(y_plain, bound.clamp(-1, 1).where(x < 1.0, y_plain))
        assert surface.sum() > 1000 and (step & (x < 1.0)).sum() > 100
        # Without it the slope's step and the slack (0.05) on every surface pixel whose window
        # runs on down (up) the slope: bands.
        assert ((y_plain - x).abs() > 0.045)[surface].float().mean() > 0.75

    d = Refiner(1, 8, 1, 3, 1, "local_range", slack=0.02, dropout=True, edge=0.05)
    with torch.no_grad():
        d.head.bias[1] = 20.0  # drop every pixel
    target = torch.where(farthest - x > 0.05, farthest, x)
    torch.testing.assert_close(d(x, noise), target, rtol=0, atol=0)
    torch.testing.assert_close(d.drop_target(x), target, rtol=0, atol=0)
    assert (target != x).sum() > 100 and (target == x)[(x < 1.0) & (farthest - x < 0.05)].all()
    free = self_regularization_loss(d(x, noise), x, free=d.drop_target(x))
    assert torch.equal(free, torch.zeros_like(free))
    with pytest.raises(ValueError, match="edge must be >= 0"):
        Refiner(1, 8, 1, 3, output="bounded", edge=0.05)
    with pytest.raises(ValueError, match="edge must be >= 0"):
        Refiner(1, 8, 1, 3, output="local_range", edge=-0.1)


def test_a_drop_out_to_the_farthest_depth_costs_no_self_regularisation():
    """`free`: a refined pixel exactly at the farthest depth around it costs nothing, any
    other change (also one that only comes near it) costs its L1 as before, and without
    `free` a drop-out costs its whole depth step."""
    x = torch.ones(1, 1, 8, 8)
    x[:, :, 2:6, 2:6] = 0.0  # a surface on the far plane
    far = farthest_depth(x, 3)
    dropped = x.clone()
    dropped[0, 0, 2, 3] = 1.0  # an edge pixel shows the far plane
    nearly = x.clone()
    nearly[0, 0, 2, 3] = 0.9
    assert self_regularization_loss(dropped, x, free=far).item() == 0.0
    torch.testing.assert_close(self_regularization_loss(dropped, x), torch.tensor([1.0 / 64]))
    torch.testing.assert_close(
        self_regularization_loss(nearly, x, free=far), torch.tensor([0.9 / 64])
    )
    moved = x + 0.01 * (x < 1.0)  # the surface 0.01 farther: not a drop-out, charged
    torch.testing.assert_close(
        self_regularization_loss(moved, x, free=far), torch.tensor([16 * 0.01 / 64])
    )


def test_highpass_hides_a_depth_offset_and_keeps_detail():
    """What D sees through --disc-highpass: shifting a whole crop in depth changes nothing,
    a one-pixel drop-out still shows; sigma 0 is the identity."""
    torch.manual_seed(0)
    x = torch.rand(2, 1, 24, 24) * 0.1 - 0.3
    view = HighPass(2.0)
    torch.testing.assert_close(view(x + 0.2), view(x), atol=1e-5, rtol=0)
    dropped = x.clone()
    dropped[:, :, 12, 12] = 1.0
    assert (view(dropped) - view(x))[:, :, 12, 12].min() > 0.8
    assert torch.equal(HighPass(0.0)(x), x)
