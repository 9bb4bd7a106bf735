import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distsim.gan.discriminator import REAL, REFINED, Discriminator
from distsim.gan.losses import (
    local_adversarial_loss,
    patch_accuracy,
    psi_channel_mean,
    psi_identity,
    self_regularization_loss,
)
from distsim.gan.refiner import (
    DROP_LOGIT_START,
    LocalRange,
    LocalRangeDropout,
    Refiner,
    make_output,
    window_max,
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
    from distsim.gan.losses import global_logits

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


def test_standardized_psi_prices_shape_not_tone():
    from distsim.gan.losses import psi_standardized

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


@pytest.mark.parametrize("slack", [0.05, 0.02])
def test_local_range_refiner_keeps_each_pixel_within_the_depths_around_it(slack: float):
    """A sensor's artifacts only mix the surfaces it sees: no refined pixel may be nearer than
    the nearest input depth in its window or farther than the farthest (plus the slack)."""
    torch.manual_seed(0)
    r = Refiner(1, 8, 2, 5, noise_channels=1, output=LocalRange(window=3, slack=slack))
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
        LocalRange(window=4)
    with pytest.raises(ValueError, match="slack must be in"):
        LocalRange(slack=-0.1)


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
    r = Refiner(1, 8, 1, 3, noise_channels=1, output=LocalRangeDropout(slack=0.02))
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
    with pytest.raises(ValueError, match="dropout needs noise_channels"):
        Refiner(1, 8, 1, 3, output=LocalRangeDropout())
    assert torch.equal(r.output.drop_target(x), farthest)


def test_a_drop_out_to_the_farthest_depth_costs_no_self_regularisation():
    """`free`: a refined pixel exactly at the farthest depth around it costs nothing, any
    other change (also one that only comes near it) costs its L1 as before, and without
    `free` a drop-out costs its whole depth step."""
    x = torch.ones(1, 1, 8, 8)
    x[:, :, 2:6, 2:6] = 0.0  # a surface on the far plane
    far = window_max(x, 3)
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


def test_output_heads_are_chosen_by_name():
    assert type(make_output("tanh")).__name__ == "Tanh"
    local = make_output("local_range", window=5, slack=0.02)
    assert type(local) is LocalRange and (local.window, local.slack) == (5, 0.02)
    assert type(make_output("local_range", dropout=True)) is LocalRangeDropout
    # Only a drop-out head has a second channel, and only heads made as input + correction
    # start as the exact identity.
    assert Refiner(1, 8, 1, 3, 1, make_output("local_range", dropout=True)).head.out_channels == 2
    assert Refiner(1, 8, 1, 3).head.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="output must be one of"):
        make_output("residual")
    with pytest.raises(ValueError, match="dropout needs output 'local_range'"):
        make_output("tanh", dropout=True)
