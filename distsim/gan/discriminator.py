"""SimGAN's local adversarial discriminator D (Shrivastava et al. 2017, section 2.2 and
appendix).

Architecture only: no ranks, devices or optimisers here. Images are in [-1, 1], (B, C, H, W).
Padding is "same" for every convolution (k // 2) and none for max-pooling, so the patch map is
7x12 for 35x55 eyes and 7x7 for 224x224 hands.
"""

from __future__ import annotations

import torch
from torch import nn

# Class indices of the discriminator's 2-way softmax per patch.
REAL, REFINED = 0, 1


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
