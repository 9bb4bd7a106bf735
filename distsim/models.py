"""SimGAN's refiner and discriminator (Shrivastava et al. 2017, section 3 and appendix).

Architecture only: no ranks, devices or optimisers here. Images are in [-1, 1], (B, C, H, W).

Choices the paper leaves open, and ours:
- Padding: "same" for every convolution (k // 2), none for max-pooling, so the refiner keeps the
  image size and the discriminator's patch map is 7x12 for 35x55 eyes and 7x7 for 224x224 hands.
  The refiner pads by reflection: zero padding made it paint a dark frame round every image
  (seen in our first CPU runs), an artefact D learns to look for.
- The refiner ends in tanh, so refined pixels stay in the image range. Without it the refiner
  can leave the range, which the discriminator then learns to spot trivially.
- ResNet blocks are [conv, ReLU, conv] + identity, then ReLU (He et al. 2016, as the paper cites).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Class indices of the discriminator's 2-way softmax per patch.
REAL, REFINED = 0, 1


class ResnetBlock(nn.Module):
    def __init__(self, width: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, kernel, padding=kernel // 2, padding_mode="reflect")
        self.conv2 = nn.Conv2d(width, width, kernel, padding=kernel // 2, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


OUTPUTS = ("tanh", "residual", "bounded", "local_range")
# How far beyond the range of the depths around it a "local_range" refiner may move a pixel,
# by default: 0.05 of the [-1, 1] range is 7.5 mm of a 300 mm cube, several times a Kinect's
# noise at arm's length (about 1.5 mm at 700 mm), so R can add sensor noise on a flat surface.
RANGE_SLACK = 0.05
# A zero-initialised drop-out head's logit: p = sigmoid(-1.1) = 0.25, the low end of what the
# sensor drops along an edge (25-55 %, shards.sim.hands), so D lowers it where real crops keep
# their pixels instead of R having to raise it from nothing. On a surface a drop-out moves a
# pixel by the surface's slope across one pixel, within the window.
DROP_LOGIT_START = -1.1


class Refiner(nn.Module):
    """conv k (width) -> `blocks` ResNet blocks -> conv 1x1 (channels) -> tanh.

    Eyes: kernel 3, 4 blocks, width 64. Hands: kernel 7, 10 blocks.

    `noise_channels` > 0 (not in the paper) feeds that many channels of per-pixel noise beside
    the image: a refiner is otherwise a deterministic function of its input and cannot make
    the per-image random sensor noise of real images, only texture that imitates it.

    `output` "residual" (not in the paper; the hand presets) makes the image as input + the
    head's correction, clamped to [-1, 1] with the gradient passed straight through, the
    head starting at zero: R is then the exact identity before any training, and a value at
    a limit (a depth crop's far plane, +1) stays exactly there, which tanh never reaches.
    `output` "bounded" is "residual" with the correction squashed to (-2, 2) by a tanh before
    the clamp. With "residual" nothing bounds the value under the clamp: the losses see only
    the clamped image, so nothing pulls a pixel back once it is beyond a limit, while the
    straight-through gradient can push it further; on depth at lambda 8 those values ran
    away to 1e19 within 250 steps and every refined crop became one flat plane
    (BENCHMARKS.md, "Depth hands"). Bounded, they stay within 2 of the input.

    `output` "local_range" (ours, for depth) is "bounded" with each refined pixel also kept
    within the range of the input depths in the `window` x `window` pixels around it, give or
    take `slack` (default ``RANGE_SLACK``) for noise. A depth sensor's artifacts only mix the
    surfaces it sees: noise, flying pixels between a surface and the one behind it, drop-outs
    that show what lies behind. None draws a surface nearer than every one around it, or removes
    a hand's interior. A refiner free to do either was rewarded for it by D (a rim of nearer
    depth round the silhouette, hands erased to the far plane) and wrecked the labels; within
    the window it can still make every artifact above, at the window's scale. Where the window
    is all far plane there is no slack: a haze over the background, which no real crop has after
    hole filling, cost the estimator another 4 px (BENCHMARKS.md, "Depth hands").

    `highpass` > 0 (ours, for depth) takes a Gaussian blur of that sigma (px) off the refined
    change (what is left of the correction after the clamp), then clamps again: a change as
    wide as a finger or a forearm, such as moving it in depth, cancels, while a pixel's noise,
    drop-out or flying value keeps nearly all of itself (96 % at sigma 2). Depth relative to
    the palm carries the pose distribution, which D sees and a refiner must not copy; within
    the slack R still moved whole forearms and fingers. It did not help the estimator
    (BENCHMARKS.md, "Depth hands"), so it is off in every preset.

    `dropout` (ours, for depth; needs "local_range" and a noise input) adds a second head
    channel: a per-pixel drop-out rate p, and each pixel, at random with probability p, shows
    the farthest depth in its window instead, as ``depth.fill_invalid`` fills a real crop's
    holes (the far plane at a silhouette, the surface behind at an inner edge). The draw is
    the first noise channel's through the normal CDF, so ``refine`` stays deterministic, and
    p's gradient passes straight through the 0/1 draw. The rest of the change may then take
    a pixel no farther than its own depth plus the slack: a sensor shows a surface farther
    than it is only by missing it, and given a deterministic way to do the same, R erodes
    whole silhouettes with it instead of dropping a random part of each edge. p starts at a
    quarter (``DROP_LOGIT_START``), is left out of pretraining (``forward(drop=False)``) and
    costs no self-regularisation in training (``losses.self_regularization_loss``'s `free`):
    a drop-out changes no label, and a rate pushed towards zero before D has learnt what real
    edges lose stays there, where the sigmoid's slope is nil (BENCHMARKS.md, "Depth hands").

    `edge` > 0 (ours, for depth; needs "local_range") lets a pixel reach its window's nearest
    depth (a flying pixel) or farthest (a drop-out) only where that lies more than `edge`
    from it, across a depth edge; elsewhere, on a surface, it keeps to its own depth give or
    take the slack. A sensor's artifacts other than its noise sit on depth edges, while the
    window on a sloping surface holds depths a slope's step nearer and farther: without the
    gate R drew bands of nearer depth along forearms and dropped pixels of flat surfaces by
    their slope. With it those went, but the estimator gained no more (BENCHMARKS.md, "Depth
    hands"), so it is off in every preset.
    """

    def __init__(
        self,
        channels: int = 1,
        width: int = 64,
        blocks: int = 4,
        kernel: int = 3,
        noise_channels: int = 0,
        output: str = "tanh",
        window: int = 3,
        slack: float = RANGE_SLACK,
        highpass: float = 0.0,
        dropout: bool = False,
        edge: float = 0.0,
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be odd and positive, got {window}")
        if not 0.0 <= slack < 2.0:
            raise ValueError(f"slack must be in [0, 2), got {slack}")
        self.noise_channels, self.output, self.window = noise_channels, output, window
        if highpass < 0:
            raise ValueError(f"highpass must be >= 0, got {highpass}")
        if highpass > 0 and output == "tanh":
            raise ValueError("highpass needs an output made as input + correction, not tanh")
        if dropout and (output != "local_range" or not noise_channels):
            raise ValueError("dropout needs output 'local_range' and noise_channels >= 1")
        if edge < 0 or (edge > 0 and output != "local_range"):
            raise ValueError(f"edge must be >= 0 and needs output 'local_range', got {edge}")
        self.slack, self.dropout, self.edge = slack, dropout, edge
        self.highpass = HighPass(highpass, channels)
        self.stem = nn.Conv2d(
            channels + noise_channels, width, kernel, padding=kernel // 2, padding_mode="reflect"
        )
        if noise_channels:
            # R starts out ignoring its noise, so pretraining to the identity does not first
            # have to unlearn random weights on it (0.033 from the identity after 200 steps
            # with them, as without noise with them zero); the adversarial phase grows them.
            with torch.no_grad():
                self.stem.weight[:, channels:].zero_()
        self.blocks = nn.Sequential(*(ResnetBlock(width, kernel) for _ in range(blocks)))
        self.head = nn.Conv2d(width, channels + int(dropout), 1)
        if output != "tanh":  # starts as the identity
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.bias.zero_()

    def drop_target(self, x: torch.Tensor) -> torch.Tensor:
        """What each pixel of `x` (B, C, H, W) shows when a `dropout` refiner drops it: the
        farthest depth in its window (with `edge`, only across a depth edge; elsewhere the
        pixel itself). (B, C, H, W)."""
        return self._across_edge(x, farthest_depth(x, self.window))

    def _across_edge(self, image: torch.Tensor, extreme: torch.Tensor) -> torch.Tensor:
        """`extreme` (a window's farthest or nearest depth) where it lies more than `edge`
        from `image`, else `image` itself; everywhere when `edge` is 0."""
        if self.edge <= 0:
            return extreme
        return torch.where((extreme - image).abs() > self.edge, extreme, image)

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None = None, drop: bool = True
    ) -> torch.Tensor:
        """R(x). ``drop=False`` leaves out a `dropout` refiner's drop-outs (pretraining to
        the identity, which would drive their rate to zero)."""
        image = x  # (B, C, H, W)
        if self.noise_channels:
            if noise is None:
                raise ValueError(f"this refiner takes {self.noise_channels} noise channels")
            x = torch.cat([x, noise.to(x.dtype)], dim=1)  # (B, C + noise, H, W)
        h = torch.relu(self.stem(x))  # (B, width, H, W)
        out = self.head(self.blocks(h))  # (B, C [+ 1 drop-out logit], H, W)
        if self.dropout:
            out, drop_logit = out[:, :-1], out[:, -1:]  # (B, C, H, W), (B, 1, H, W)
        if self.output == "tanh":
            return torch.tanh(out)
        if self.output != "residual":
            out = 2.0 * torch.tanh(out)
        out = image + out
        if self.output == "local_range":
            hi = self._across_edge(image, farthest_depth(image, self.window))  # (B, C, H, W)
            lo = self._across_edge(image, -farthest_depth(-image, self.window))
            # Noise belongs to measured surfaces: where the window holds nothing but the far
            # plane (nothing in the cube), the refined pixel stays exactly there, as a real
            # crop's does.
            lo = torch.where(lo >= 1.0, lo, (lo - self.slack).clamp(min=-1.0))
            if self.dropout:
                farthest, hi = hi, image  # farther only by a drop-out
            hi = (hi + self.slack).clamp(max=1.0)
        else:
            lo, hi = -1.0, 1.0
        out = _clamp_straight_through(out, lo, hi)
        if self.highpass.blur.sigma > 0:
            # On the change that survived the clamp: taken off the head's raw correction, a
            # large one the clamp hides (under the far plane) would spill its blur onto the
            # hand and move it as a whole after all.
            out = _clamp_straight_through(image + self.highpass(out - image), lo, hi)
        if self.dropout and drop:
            assert noise is not None  # checked above
            p = torch.sigmoid(drop_logit + DROP_LOGIT_START)  # (B, 1, H, W)
            u = 0.5 * torch.erfc(-noise[:, :1].to(p.dtype) / math.sqrt(2.0))  # uniform (0, 1)
            # Exactly the farthest depth where drawn (the 0 added is exact), p's gradient
            # passed straight through the draw.
            out = torch.where(u < p, farthest, out) + (p - p.detach()) * (farthest - out)
        return out


def farthest_depth(x: torch.Tensor, window: int) -> torch.Tensor:
    """The farthest (largest) value in each pixel's `window` x `window` neighbourhood:
    (B, C, H, W) -> (B, C, H, W); what a `dropout` refiner's drop-out shows."""
    return F.max_pool2d(x, window, stride=1, padding=window // 2)


def _clamp_straight_through(
    x: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float
) -> torch.Tensor:
    """x clamped to [lo, hi] (numbers, or tensors elementwise), the gradient passed straight
    through."""
    return x + (x.clamp(lo, hi) - x).detach()


# Per-architecture layer geometry (kernel, stride) for the four convolutions and the pool,
# from the paper's appendix; widths are configurable.
_DISC_GEOMETRY = {
    # conv3x3 s2, conv3x3 s2, maxpool3x3 s1, conv3x3 s1, conv1x1, conv1x1 (2)
    "eyes": {"convs": ((3, 2), (3, 2)), "pool": (3, 1), "tail": (3, 1)},
    # conv7x7 s4, conv5x5 s2, maxpool3x3 s2, conv3x3 s2, conv1x1, conv1x1 (2)
    "hands": {"convs": ((7, 4), (5, 2)), "pool": (3, 2), "tail": (3, 2)},
}


class Discriminator(nn.Module):
    """Local adversarial discriminator: 2-class logits (real, refined) for every patch.

    widths = (w1, w2, w3, w4): the paper's eye D is (96, 64, 32, 32).
    Output: (B, 2, h, w) logits; softmax over dim 1 gives P(real), P(refined) per patch.
    """

    def __init__(
        self,
        channels: int = 1,
        widths: tuple[int, ...] = (96, 64, 32, 32),
        arch: str = "eyes",
    ) -> None:
        super().__init__()
        if arch not in _DISC_GEOMETRY:
            raise ValueError(
                f"unknown discriminator arch {arch!r}; choose from {sorted(_DISC_GEOMETRY)}"
            )
        if len(widths) != 4:
            raise ValueError(f"the discriminator needs 4 widths, got {widths}")
        geo = _DISC_GEOMETRY[arch]
        w1, w2, w3, w4 = widths
        (k1, s1), (k2, s2) = geo["convs"]
        pk, ps = geo["pool"]
        k3, s3 = geo["tail"]
        self.net = nn.Sequential(
            nn.Conv2d(channels, w1, k1, stride=s1, padding=k1 // 2),
            nn.ReLU(),
            nn.Conv2d(w1, w2, k2, stride=s2, padding=k2 // 2),
            nn.ReLU(),
            nn.MaxPool2d(pk, stride=ps),
            nn.Conv2d(w2, w3, k3, stride=s3, padding=k3 // 2),
            nn.ReLU(),
            nn.Conv2d(w3, w4, 1),
            nn.ReLU(),
            nn.Conv2d(w4, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 2, h, w)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class GaussianBlur(nn.Module):
    """A fixed depthwise Gaussian blur ("same" size, reflect padding); identity at sigma 0.

    Used on the discriminator's inputs (``--disc-blur``): sensor noise is random per image, so
    a refiner, a deterministic function of its input, cannot reproduce it; a D that sees full
    resolution then rewards whatever high-frequency texture imitates noise statistics (our
    refiners painted ringing edges) instead of the tones and shapes a refiner can match.
    Blurring real and refined images alike takes the noise out of D's view.
    """

    def __init__(self, sigma: float, channels: int = 1) -> None:
        super().__init__()
        if sigma < 0:
            raise ValueError(f"blur sigma must be >= 0, got {sigma}")
        self.sigma, self.channels = sigma, channels
        radius = max(1, math.ceil(3 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k1 = torch.exp(-(x**2) / (2 * sigma**2)) if sigma > 0 else (x == 0).float()
        k1 = k1 / k1.sum()
        kernel = torch.outer(k1, k1).expand(channels, 1, -1, -1).contiguous()  # (C, 1, k, k)
        self.register_buffer("kernel", kernel, persistent=False)
        self.radius = radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sigma == 0:
            return x
        padded = F.pad(x, (self.radius,) * 4, mode="reflect")  # (B, C, H + 2r, W + 2r)
        return F.conv2d(padded, self.kernel.to(x.dtype), groups=self.channels)  # (B, C, H, W)


class HighPass(nn.Module):
    """The image minus its Gaussian blur (sigma px); identity at sigma 0.

    Used on the discriminator's inputs (``--disc-highpass``, ours, for depth): a depth crop's
    values are millimetres relative to the palm, so their distribution carries the pose
    distribution (how far the fingers and the forearm lie from the palm), which differs
    between simulator and sensor and which a refiner must not copy. A D that sees absolute
    depth rewarded R for moving whole fingers and forearms by the slack it has (BENCHMARKS.md,
    "Depth hands"); what is left after the blur is subtracted is what a sensor adds: noise,
    drop-outs, flying pixels and ragged edges.
    """

    def __init__(self, sigma: float, channels: int = 1) -> None:
        super().__init__()
        self.blur = GaussianBlur(sigma, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blur.sigma == 0:
            return x
        return x - self.blur(x)  # (B, C, H, W)
