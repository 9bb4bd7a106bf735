"""SimGAN's losses as plain functions that return one value per image; the loop reduces them.

The paper sums over patches and pixels; we average, so that lambda means the same thing at any
image size: L_R = mean_patches CE(D(R(x)), real) + lambda * mean_pixels |psi(R(x)) - psi(x)|.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from distsim.gan.blur import gaussian_blur
from distsim.gan.discriminator import REAL, REFINED

Psi = Callable[[torch.Tensor], torch.Tensor]


def psi_identity(x: torch.Tensor) -> torch.Tensor:
    return x


def psi_channel_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of the colour channels: the paper's psi for RGB, which lets the refiner change colour
    but not luminance structure."""
    return x.mean(dim=1, keepdim=True)  # (B, 1, H, W)


def psi_standardized(x: torch.Tensor) -> torch.Tensor:
    """Each image minus its mean, over its standard deviation: (B, C, H, W) -> (B, C, H, W).

    Pixel L1 prices a global tone change (every pixel moves a little) far above moving an
    edge (a few pixels move a lot), so under identity psi a refiner matches a darker, flatter
    real domain by shifting pupils and lids, which breaks the labels, rather than by changing
    tone. Standardising first makes brightness and contrast free and leaves shape priced.
    """
    flat = x.flatten(1)  # (B, C*H*W)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1).view(-1, 1, 1, 1)
    return (x - mean) / (std + 1e-3)


_SMOOTH_SIGMA = 1.0  # px


def psi_smooth(x: torch.Tensor) -> torch.Tensor:
    """``psi_standardized`` of the image blurred by a 1 px Gaussian: (B, C, H, W) -> same.

    Besides tone, this makes pixel-level noise and fine texture free (a 1 px blur takes 3.5x
    off white noise), which a refiner with noise inputs needs to match a noisy real domain,
    while shapes a pixel or more across, such as a pupil's position, stay priced.
    """
    return psi_standardized(gaussian_blur(x.float(), _SMOOTH_SIGMA))


PSI: dict[str, Psi] = {
    "identity": psi_identity,
    "channel_mean": psi_channel_mean,
    "standardized": psi_standardized,
    "smooth": psi_smooth,
}


def local_adversarial_loss(logits: torch.Tensor, target: int) -> torch.Tensor:
    """Cross-entropy of every patch's 2-way softmax against `target` (REAL or REFINED),
    averaged over patches: (B, 2, h, w) -> (B,).

    D's loss is this with target REFINED on refined images and REAL on real ones, i.e.
    -log D(refined) - log(1 - D(real)) with D = P(refined). R's adversarial loss is this with
    target REAL on refined images: -log(1 - D(R(x))).
    """
    if target not in (REAL, REFINED):
        raise ValueError(f"target must be REAL ({REAL}) or REFINED ({REFINED}), got {target}")
    # Loss in float32 even under autocast: log-softmax of bf16 logits loses the small gaps.
    logp = F.log_softmax(logits.float(), dim=1)  # (B, 2, h, w)
    return -logp[:, target].flatten(1).mean(dim=1)  # (B,)


def global_logits(logits: torch.Tensor) -> torch.Tensor:
    """One decision per image from the patch map: (B, 2, h, w) -> (B, 2, 1, 1).

    The paper's ablation replaces the local adversarial loss by a global one. Averaging the
    patch logits (global average pooling) gives a global discriminator with the very same
    layers, so the ablation changes the loss and nothing else.
    """
    return logits.mean(dim=(2, 3), keepdim=True)


def self_regularization_loss(
    refined: torch.Tensor,
    synthetic: torch.Tensor,
    psi: Psi = psi_identity,
    free: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean |psi(R(x)) - psi(x)| per image: (B, C, H, W) x2 -> (B,).

    `free` (B, C, H, W), with the identity psi only: a refined pixel exactly equal to it costs
    nothing (a depth refiner's drop-out to the farthest depth around, ``refiner.Refiner``)."""
    diff = (psi(refined).float() - psi(synthetic).float()).abs()
    if free is not None:
        diff = torch.where(refined == free, 0.0, diff)
    return diff.flatten(1).mean(dim=1)  # (B,)


def patch_accuracy(logits: torch.Tensor, target: int) -> torch.Tensor:
    """Fraction of patches D classifies as `target`: (B, 2, h, w) -> (B,)."""
    return (logits.argmax(dim=1) == target).float().flatten(1).mean(dim=1)  # (B,)


def saturated_fraction(
    images: torch.Tensor, margin: float = 0.01, reference: torch.Tensor | None = None
) -> torch.Tensor:
    """Fraction of pixels within `margin` of -1 or 1, tanh's limits: (B, C, H, W) -> ().

    A refiner whose output sits there has a vanishing tanh gradient and seldom recovers, so a
    high value is a collapsed run, not a converging one. With `reference` (R's input), only
    pixels whose input is not itself at a limit count: a depth crop's background is the far
    plane (+1) in the input, and R reproducing it is not a collapse.
    """
    at_limit = images.detach().abs() > 1 - margin
    if reference is None:
        return at_limit.float().mean()
    free = reference.detach().abs() <= 1 - margin
    return (at_limit & free).float().sum() / free.float().sum().clamp(min=1.0)
