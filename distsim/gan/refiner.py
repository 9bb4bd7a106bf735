"""SimGAN's refiner R (Shrivastava et al. 2017, section 3 and appendix) and its output heads.

Architecture only: no ranks, devices or optimisers here. Images are in [-1, 1], (B, C, H, W).

Choices the paper leaves open, and ours:
- Padding: "same" for every convolution (k // 2), so the refiner keeps the image size. It pads
  by reflection: zero padding made it paint a dark frame round every image, an artefact D
  learns to look for.
- The output head keeps refined pixels in the image range: tanh (the paper's) or, for depth,
  the local range of the input around each pixel (``LocalRange``). Out of range, the
  discriminator would learn to spot refined images trivially. Heads are chosen by name
  (``make_output``).
- ResNet blocks are [conv, ReLU, conv] + identity, then ReLU (He et al. 2016, as the paper cites).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ResnetBlock(nn.Module):
    def __init__(self, width: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, kernel, padding=kernel // 2, padding_mode="reflect")
        self.conv2 = nn.Conv2d(width, width, kernel, padding=kernel // 2, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


# A zero-initialised drop-out head's logit: p = sigmoid(-1.1) = 0.25, the low end of what a
# depth sensor drops along an edge (25-55 %), so D lowers it where real crops keep their
# pixels instead of R having to raise it from nothing. On a surface a drop-out moves a pixel
# by the surface's slope across one pixel, within the window.
DROP_LOGIT_START = -1.1


class Tanh(nn.Module):
    """The paper's output: tanh of the head's map, so refined pixels stay in [-1, 1]."""

    extra_channels = 0  # head channels beyond the image's
    starts_as_identity = False
    needs_noise = False

    def forward(
        self, image: torch.Tensor, out: torch.Tensor, noise: torch.Tensor | None, drop: bool
    ) -> torch.Tensor:
        return torch.tanh(out)  # (B, C, H, W)


class LocalRange(nn.Module):
    """The input plus a correction (the head's map squashed to (-2, 2) by a tanh), each pixel
    then clamped, gradient passed straight through, to the range of the input values in the
    ``window`` x ``window`` pixels around it, give or take ``slack``; no slack where that
    window is all +1 (for depth, the far plane: nothing measured there).

    Made for depth: a sensor's artifacts only mix the surfaces it sees (noise, flying pixels
    between a surface and the one behind it, drop-outs that show what lies behind), and none
    draws a surface nearer than every one around it or removes a hand's interior. A refiner
    free to do either was rewarded for it by D (a rim of nearer depth round the silhouette,
    hands erased to the far plane) and wrecked the labels; within the window it can still
    make every artifact above, at the window's scale. The head starts at zero, so R starts as
    the exact identity and a value at a limit (the far plane, +1) stays exactly there, which
    tanh never reaches.
    """

    extra_channels = 0
    starts_as_identity = True
    needs_noise = False

    def __init__(self, window: int = 3, slack: float = 0.02) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be odd and positive, got {window}")
        if not 0.0 <= slack < 2.0:
            raise ValueError(f"slack must be in [0, 2), got {slack}")
        self.window, self.slack = window, slack

    def lower(self, image: torch.Tensor) -> torch.Tensor:
        """The nearest each refined pixel may be, slack included: (B, C, H, W)."""
        lo = -window_max(-image, self.window)
        # Noise belongs to measured surfaces: where the window holds nothing but the far
        # plane, the refined pixel stays exactly there, as a real crop's does.
        return torch.where(lo >= 1.0, lo, (lo - self.slack).clamp(min=-1.0))

    def upper(self, farthest: torch.Tensor) -> torch.Tensor:
        """The farthest a refined pixel may be, given the farthest value it may reach."""
        return (farthest + self.slack).clamp(max=1.0)

    def forward(
        self, image: torch.Tensor, out: torch.Tensor, noise: torch.Tensor | None, drop: bool
    ) -> torch.Tensor:
        lo, hi = self.lower(image), self.upper(window_max(image, self.window))
        return _clamp_straight_through(image + 2.0 * torch.tanh(out), lo, hi)


class LocalRangeDropout(LocalRange):
    """``LocalRange`` plus random drop-outs: a second head channel gives a per-pixel rate p,
    and each pixel, at random with probability p, shows the farthest value in its window
    instead (``drop_target``), as a real crop's holes are filled (the far plane at a
    silhouette, the surface behind at an inner edge). The draw is the first noise channel's
    through the normal CDF, so refining stays deterministic, and p's gradient passes straight
    through the 0/1 draw. The rest of the change may take a pixel no farther than its own
    value plus the slack: a sensor shows a surface farther than it is only by missing it,
    and given a deterministic way to do the same, R eroded whole silhouettes with it instead
    of dropping a random part of each edge.

    p starts at a quarter (``DROP_LOGIT_START``), is left out when ``drop`` is False
    (pretraining to the identity, which would drive it to zero, where the sigmoid's slope is
    nil) and a drop-out costs no self-regularisation (``losses.self_regularization_loss``'s
    `free`): it changes no label.
    """

    extra_channels = 1  # the drop-out logit
    needs_noise = True

    def drop_target(self, x: torch.Tensor) -> torch.Tensor:
        """What each pixel of `x` (B, C, H, W) shows when dropped: the farthest value in its
        window. (B, C, H, W)."""
        return window_max(x, self.window)

    def forward(
        self, image: torch.Tensor, out: torch.Tensor, noise: torch.Tensor | None, drop: bool
    ) -> torch.Tensor:
        out, drop_logit = out[:, :-1], out[:, -1:]  # (B, C, H, W), (B, 1, H, W)
        farthest = window_max(image, self.window)  # (B, C, H, W)
        lo, hi = self.lower(image), self.upper(image)  # farther only by a drop-out
        out = _clamp_straight_through(image + 2.0 * torch.tanh(out), lo, hi)
        if not drop:
            return out
        assert noise is not None  # the refiner checks it takes noise
        p = torch.sigmoid(drop_logit + DROP_LOGIT_START)  # (B, 1, H, W)
        u = 0.5 * torch.erfc(-noise[:, :1].to(p.dtype) / math.sqrt(2.0))  # uniform (0, 1)
        # Exactly the farthest value where drawn (the 0 added is exact), p's gradient passed
        # straight through the draw.
        return torch.where(u < p, farthest, out) + (p - p.detach()) * (farthest - out)


RefinerOutput = Tanh | LocalRange
# The output heads by the name configs use (a drop-out head is ``local_range`` with dropout).
OUTPUTS: dict[str, type[Tanh] | type[LocalRange]] = {"tanh": Tanh, "local_range": LocalRange}


def make_output(name: str, *, window: int = 3, slack: float = 0.02, dropout: bool = False
                ) -> RefinerOutput:  # fmt: skip
    """The output head called `name`, with drop-outs when `dropout` (local_range only)."""
    if name not in OUTPUTS:
        raise ValueError(f"output must be one of {tuple(OUTPUTS)}, got {name!r}")
    if name == "tanh":
        if dropout:
            raise ValueError("dropout needs output 'local_range'")
        return Tanh()
    return (LocalRangeDropout if dropout else LocalRange)(window, slack)


class Refiner(nn.Module):
    """conv k (width) -> `blocks` ResNet blocks -> conv 1x1 -> `output` (``Tanh``, the
    paper's, by default).

    Eyes: kernel 3, 4 blocks, width 64. Hands: kernel 7, 10 blocks.

    `noise_channels` > 0 (not in the paper) feeds that many channels of per-pixel noise beside
    the image: a refiner is otherwise a deterministic function of its input and cannot make
    the per-image random sensor noise of real images, only texture that imitates it.
    """

    def __init__(
        self,
        channels: int = 1,
        width: int = 64,
        blocks: int = 4,
        kernel: int = 3,
        noise_channels: int = 0,
        output: RefinerOutput | None = None,
    ) -> None:
        super().__init__()
        output = output if output is not None else Tanh()
        if output.needs_noise and not noise_channels:
            raise ValueError("dropout needs noise_channels >= 1 (its draws come from the noise)")
        self.noise_channels = noise_channels
        self.stem = nn.Conv2d(
            channels + noise_channels, width, kernel, padding=kernel // 2, padding_mode="reflect"
        )
        if noise_channels:
            # R starts out ignoring its noise, so pretraining to the identity does not first
            # have to unlearn random weights on it; the adversarial phase grows them.
            with torch.no_grad():
                self.stem.weight[:, channels:].zero_()
        self.blocks = nn.Sequential(*(ResnetBlock(width, kernel) for _ in range(blocks)))
        self.head = nn.Conv2d(width, channels + output.extra_channels, 1)
        if output.starts_as_identity:
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.bias.zero_()
        self.output = output

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None = None, drop: bool = True
    ) -> torch.Tensor:
        """R(x). ``drop=False`` leaves out a drop-out head's drop-outs (pretraining)."""
        image = x  # (B, C, H, W)
        if self.noise_channels:
            if noise is None:
                raise ValueError(f"this refiner takes {self.noise_channels} noise channels")
            x = torch.cat([x, noise.to(x.dtype)], dim=1)  # (B, C + noise, H, W)
        h = torch.relu(self.stem(x))  # (B, width, H, W)
        out = self.head(self.blocks(h))  # (B, C [+ extra], H, W)
        return self.output(image, out, noise, drop)


def window_max(x: torch.Tensor, window: int) -> torch.Tensor:
    """The largest value in each pixel's `window` x `window` neighbourhood: (B, C, H, W) ->
    (B, C, H, W); for depth, the farthest."""
    return F.max_pool2d(x, window, stride=1, padding=window // 2)


def _clamp_straight_through(
    x: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float
) -> torch.Tensor:
    """x clamped to [lo, hi] (numbers, or tensors elementwise), the gradient passed straight
    through."""
    return x + (x.clamp(lo, hi) - x).detach()
