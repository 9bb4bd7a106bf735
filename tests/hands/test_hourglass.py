"""The stacked hourglass, its heatmap coding, and the depth augmentation's consistency."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distsim.data.depth import depth_to_unit
from distsim.hands.augment import invert, random_affine, resize_affine, transform_points, warp
from distsim.hands.hourglass import (
    Hourglass,
    StackedHourglass,
    decode_heatmaps,
    heatmap_loss,
    render_heatmaps,
)


@pytest.mark.parametrize(("size", "stride"), [(64, 4), (64, 2), (32, 1), (56, 4)])
def test_output_shapes_per_stack(size: int, stride: int) -> None:
    torch.manual_seed(0)
    model = StackedHourglass(joints=14, stacks=2, width=16, depth=2, stem_stride=stride)
    out = model(torch.rand(3, 1, size, size) * 2 - 1)
    assert out.shape == (3, 2, 14, size // stride, size // stride)


def test_paper_configuration_gives_64x64_heatmaps() -> None:
    with torch.device("meta"):  # the paper's widths, built without memory or arithmetic
        paper = StackedHourglass()  # 2 stacks, width 256, depth 4, stride 4, 14 joints
    assert len(paper.hourglasses) == 2 and paper.heads[0].out_channels == 14
    assert paper.heads[0].in_channels == 256 and paper.stem[0][0].out_channels == 64
    hourglass, depth = paper.hourglasses[0], 0
    while isinstance(hourglass, Hourglass):
        hourglass, depth = hourglass.inner, depth + 1
    assert depth == 4  # 64 -> 4
    # The same shapes at a tiny width: 256 input (224 crops warped) -> 64 x 64 heatmaps.
    with torch.no_grad():
        out = StackedHourglass(width=8).eval()(torch.zeros(1, 1, 256, 256))
    assert out.shape == (1, 2, 14, 64, 64)


def test_intermediate_supervision_reaches_both_stacks() -> None:
    torch.manual_seed(0)
    model = StackedHourglass(joints=3, stacks=2, width=8, depth=1, stem_stride=4)
    out = model(torch.rand(2, 1, 16, 16))  # (2, 2, 3, 4, 4)
    target = torch.rand(2, 3, 4, 4)
    loss = heatmap_loss(out, target)
    assert loss.shape == (2,)
    per_stack = (out - target[:, None]).square().mean(dim=(2, 3, 4))  # (2, stacks)
    torch.testing.assert_close(loss, per_stack.sum(dim=1))
    # The first stack's head gets a gradient from its own loss term, not only through stack 2.
    (g,) = torch.autograd.grad(per_stack[:, 0].sum(), model.heads[0].weight, retain_graph=True)
    assert g.abs().sum() > 0
    (g2,) = torch.autograd.grad(per_stack[:, 0].sum(), model.heads[1].weight, allow_unused=True)
    # The last head only learns from the last stack's term.
    assert g2 is None or not bool(g2.any())


@pytest.mark.parametrize("stride", [1, 2, 4])
@pytest.mark.parametrize("mode", ["quarter", "parabola"])
def test_heatmap_round_trip(stride: int, mode: str) -> None:
    g = torch.Generator().manual_seed(1)
    size = 16
    # Joints at sub-pixel positions, a heatmap cell or more from the border (at the border a
    # neighbour is missing and the refinement steps at most towards the inside).
    points = stride + torch.rand(8, 14, 2, generator=g) * (size - 3) * stride  # (8, 14, 2)
    heat = render_heatmaps(points, size, stride, sigma=1.0)  # (8, 14, 16, 16)
    assert heat.shape == (8, 14, size, size) and float(heat.max()) <= 1.0
    pred = decode_heatmaps(heat, stride, mode)
    err = (pred - points).abs().max()  # input pixels
    if mode == "quarter":
        assert float(err) <= 0.25 * stride + 1e-5  # Newell's quarter step: a quarter cell
    else:
        assert float(err) < 1e-3 * stride  # exact for a Gaussian (log is a parabola)


def test_heatmap_peak_at_integer_point() -> None:
    # A point on a heatmap cell's centre: u = s * i + (s - 1) / 2 in input pixels.
    points = torch.tensor([[[4 * 3 + 1.5, 4 * 5 + 1.5]]])
    heat = render_heatmaps(points, 8, 4)
    assert heat[0, 0, 5, 3] == 1.0 and int(heat[0, 0].argmax()) == 5 * 8 + 3
    torch.testing.assert_close(decode_heatmaps(heat, 4), points)


def test_depth_to_unit() -> None:
    codes = torch.tensor([0, 1, 32768, 65535], dtype=torch.int32)
    torch.testing.assert_close(
        depth_to_unit(codes, "far"), torch.tensor([1.0, -1.0, 0.0, 1.0])
    )  # invalid reads as the far plane, +1


def _marker_images(size: int, points: np.ndarray) -> torch.Tensor:
    """(B, 1, S, S) far-plane crops with a 3x3 near block centred on each point (integers)."""
    img = np.ones((len(points), 1, size, size), np.float32)
    for b, (u, v) in enumerate(points):
        img[b, 0, v - 1 : v + 2, u - 1 : u + 2] = -1.0
    return torch.from_numpy(img)


@pytest.mark.parametrize(("size", "out_size"), [(48, 48), (48, 64)])
def test_augmented_joints_land_on_the_augmented_marker(size: int, out_size: int) -> None:
    rng = np.random.default_rng(0)
    n = 64
    points = rng.integers(12, size - 12, size=(n, 2))  # (n, 2) (u, v), inside after any turn
    images = _marker_images(size, points)
    gen = torch.Generator().manual_seed(0)
    matrix = random_affine(
        n, size, out_size, gen, max_degrees=20, max_shift=4, scale_jitter=0.1
    )  # (n, 2, 3)
    angles = torch.rad2deg(torch.atan2(matrix[:, 0, 1], matrix[:, 0, 0]))
    assert float(angles.abs().max()) <= 20 and float(angles.abs().max()) > 15
    out = warp(images, matrix, out_size)  # (n, 1, N, N)
    assert out.shape == (n, 1, out_size, out_size)
    assert set(out.unique().tolist()) <= {-1.0, 1.0}  # nearest: never a blend
    moved = transform_points(matrix, torch.from_numpy(points).float()[:, None])[:, 0]  # (n, 2)
    for b in range(n):
        vs, us = torch.nonzero(out[b, 0] < 0, as_tuple=True)
        assert len(us) > 0
        centroid = torch.stack([us.float().mean(), vs.float().mean()])
        assert float((centroid - moved[b]).norm()) < 1.0, (b, centroid, moved[b])


def test_rotation_direction_and_identity() -> None:
    # A marker right of centre, turned by +90 degrees: counter-clockwise on screen goes up.
    size = 31
    images = _marker_images(size, np.array([[25, 15]]))
    quarter = torch.tensor([[[0.0, 1.0, 0.0], [-1.0, 0.0, 30.0]]])  # angle pi/2 about 15, 15
    from distsim.hands.augment import _similarity

    built = _similarity(torch.tensor([math.pi / 2]), torch.ones(1), torch.zeros(1, 2), size, size)
    torch.testing.assert_close(built, quarter, atol=1e-5, rtol=0)
    out = warp(images, built, size)
    vs, us = torch.nonzero(out[0, 0] < 0, as_tuple=True)
    assert (float(us.float().mean()), float(vs.float().mean())) == (15.0, 5.0)
    ident = resize_affine(1, size, size)
    torch.testing.assert_close(warp(images, ident, size), images)
    torch.testing.assert_close(invert(invert(built)), built)


def test_outside_reads_far_plane() -> None:
    images = -torch.ones(1, 1, 8, 8)
    shift = torch.tensor([[[1.0, 0.0, 4.0], [0.0, 1.0, 0.0]]])  # 4 px right
    out = warp(images, shift, 8)
    assert bool((out[0, 0, :, :4] == 1).all()) and bool((out[0, 0, :, 4:] == -1).all())
