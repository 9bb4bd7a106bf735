"""The paper's gaze estimator (Shrivastava et al. 2017, section 4.1 and appendix).

Architecture only: no ranks, devices or optimisers here. Input: (B, 1, 35, 55) eyes in [-1, 1].

    conv3x3 32, conv3x3 32, conv3x3 64, maxpool3x3 s2, conv3x3 80, conv3x3 192, maxpool2x2 s2,
    FC9600, FC1000, FC3, Euclidean (L2) loss on the gaze vector

Choices the paper leaves open, and ours:
- Padding: none ("valid") for every convolution and pool, and floor-mode pooling. This is what
  makes the paper's "FC9600" come out: 35x55 -> 33x53 -> 31x51 -> 29x49 -> pool 14x24 ->
  12x22 -> 10x20 -> pool 5x10, and 192 x 5 x 10 = 9600. With "same" convolutions the map
  would be 8x13 (19,968 features). (A "same" pad on exactly one of the first three convs also
  lands on 5x10; all-valid is the one uniform rule that does.)
- So "FC9600" is read as the 9600-feature flattened input of the fully connected part, not
  a 9600-unit hidden layer: the FC part is Linear(9600, 1000) -> ReLU -> Linear(1000, 3). A
  9600-unit layer would add a 9600 x 9600 matrix (92M weights, 10x the rest of the net) and
  the paper lists no such cost; its layer list names each FC block by its input size.
- ReLU after every convolution and hidden FC layer; the last layer is linear. The output is
  the raw 3-vector trained towards the unit gaze vector (``gaze_loss``), normalised only when
  an angle is measured (``distsim.metrics``).
- ``width_mult`` scales every hidden width (conv channels and FC1000), so tests can train a
  tiny estimator in seconds; 1.0 is the paper's.
"""

from __future__ import annotations

import torch
from torch import nn

# (C, H, W) of an eye: the image size the paper's layer sizes assume.
EYE_SHAPE = (1, 35, 55)
# The paper's widths: five convolutions, then the hidden FC layer.
_CONV_WIDTHS = (32, 32, 64, 80, 192)
_FC_WIDTH = 1000


def _scaled(width: int, width_mult: float) -> int:
    return max(1, round(width * width_mult))


class GazeEstimator(nn.Module):
    """The paper's eye-gaze CNN: (B, 1, 35, 55) in [-1, 1] -> (B, 3) gaze (not normalised)."""

    def __init__(self, width_mult: float = 1.0, in_channels: int = 1) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        c1, c2, c3, c4, c5 = (_scaled(w, width_mult) for w in _CONV_WIDTHS)
        fc = _scaled(_FC_WIDTH, width_mult)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3),  # (B, c1, 33, 53)
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3),  # (B, c2, 31, 51)
            nn.ReLU(),
            nn.Conv2d(c2, c3, 3),  # (B, c3, 29, 49)
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2),  # (B, c3, 14, 24)
            nn.Conv2d(c3, c4, 3),  # (B, c4, 12, 22)
            nn.ReLU(),
            nn.Conv2d(c4, c5, 3),  # (B, c5, 10, 20)
            nn.ReLU(),
            nn.MaxPool2d(2, stride=2),  # (B, c5, 5, 10)
        )
        self.flat_features = c5 * 5 * 10  # the paper's "FC9600" at width_mult 1
        self.head = nn.Sequential(
            nn.Flatten(),  # (B, flat_features)
            nn.Linear(self.flat_features, fc),  # (B, 1000)
            nn.ReLU(),
            nn.Linear(fc, 3),  # (B, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, c5, 5, 10) for 35x55 eyes
        return self.head(h)  # (B, 3)


def gaze_loss(pred: torch.Tensor, gaze: torch.Tensor) -> torch.Tensor:
    """Per-sample squared L2 distance between (B, 3) predictions and unit gaze -> (B,).

    Per-element values, reduced by the caller (as the SimGAN losses are).
    """
    return (pred.float() - gaze.float()).square().sum(dim=1)
