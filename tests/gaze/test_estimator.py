"""The paper's gaze estimator: layer sizes, FC9600, output shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distsim.gaze.estimator import EYE_SHAPE, GazeEstimator, gaze_loss


def test_paper_width_flattens_to_9600() -> None:
    model = GazeEstimator()
    x = torch.zeros(2, *EYE_SHAPE)  # (B, 1, 35, 55)
    features = model.features(x)
    assert features.shape == (2, 192, 5, 10)
    assert model.flat_features == 9600
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(9600, 1000), (1000, 3)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [32, 32, 64, 80, 192]
    assert all(m.kernel_size == (3, 3) and m.padding == (0, 0) for m in convs)
    assert model(x).shape == (2, 3)


def test_relu_after_every_layer_but_the_last() -> None:
    layers = [*GazeEstimator(0.1).features, *GazeEstimator(0.1).head]
    weighted = [i for i, m in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear))]
    for i in weighted[:-1]:
        assert isinstance(layers[i + 1], nn.ReLU)
    assert weighted[-1] == len(layers) - 1  # linear output


@pytest.mark.parametrize("width_mult", [0.05, 0.25, 2.0])
def test_width_mult_scales_and_keeps_shapes(width_mult: float) -> None:
    model = GazeEstimator(width_mult)
    assert model.flat_features == max(1, round(192 * width_mult)) * 50
    out = model(torch.rand(4, *EYE_SHAPE) * 2 - 1)
    assert out.shape == (4, 3) and out.dtype == torch.float32


def test_bad_width_mult() -> None:
    with pytest.raises(ValueError, match="width_mult"):
        GazeEstimator(0.0)


def test_gaze_loss_is_per_sample_squared_l2() -> None:
    pred = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    gaze = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    torch.testing.assert_close(gaze_loss(pred, gaze), torch.tensor([0.0, 2.0]))
