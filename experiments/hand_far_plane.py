"""What a hand refiner does to the far plane and to the hand.

    nice -n 10 env OMP_NUM_THREADS=1 python experiments/hand_far_plane.py \
        --synthetic ~/.cache/distsim/sim-hands-v1-synthetic-64px-n4096-s0 \
        --real ~/.cache/distsim/sim-hands-v1-real-64px-n4096-s0 RUN/checkpoints/step-00000250 ...

For the first 64 synthetic crops (depth in [-1, 1], background = the far plane, +1) and each
checkpoint's raw and averaged refiner: the refined background's mean and the fraction of it
that is exactly +1 (as 78 % of every real crop's pixels are, once holes are filled), the mean
|change| on hand pixels, the fraction of hand pixels sent to the far plane (> 0.9: fingers
erased) and of background pixels made hand (< 0.9), and the fraction of pixels outside the
range of the input depths in the 3x3 window around them, +-0.05 (``--refiner-output
local_range``'s bound at window 3 and the default ``--refiner-slack``; the hand presets' 0.02
is tighter, so their refiners always score 0 here; and the refiner allows no slack where the
window is all far plane, while here a value within 0.05 of it counts as inside there too).
``--perfect-seed S`` adds the same numbers for a perfect refiner: the same hands rendered
in the real look (``shards.sim.hands.render(..., look="real")``), when the synthetic shards
are the simulator's stream with seed S (checked). For a refiner with a noise input, also how
much two noise draws change its refined hand pixels. ``--picture OUT.png`` (with
``--perfect-seed``) draws the first crops, one row each: synthetic | each checkpoint's
weight-averaged refinement | the perfect one, then each change from synthetic in red (nearer)
and blue (farther), saturating at +-0.05 (7.5 mm). Every row ends with the realism score
training logs (``distsim.checkpoints.realism``: a fresh classifier's held-out
accuracy at telling these crops from the real ones; 0.5 = indistinguishable).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package from a checkout

from distsim.checkpoints.realism import two_sample_test  # noqa: E402
from distsim.checkpoints.refine import load_refiner  # noqa: E402
from distsim.data import first_images  # noqa: E402
from distsim.data.depth import depth_to_unit  # noqa: E402
from distsim.gan.noise import indexed_noise  # noqa: E402
from shards.sim.hands import render  # noqa: E402

# The local-range refiner's default slack; its "outside the range" column uses it.
RANGE_SLACK = 0.05


def changes(x: torch.Tensor, y: torch.Tensor) -> str:
    """What refining `x` into `y` did, both (n, 1, S, S) depth in [-1, 1]."""
    bg, hand = x == 1.0, x < 1.0
    lo = -F.max_pool2d(-x, 3, stride=1, padding=1) - RANGE_SLACK
    hi = F.max_pool2d(x, 3, stride=1, padding=1) + RANGE_SLACK
    exact, erased = (y[bg] == 1.0).float().mean(), (y[hand] > 0.9).float().mean()
    outside = ((y < lo - 1e-5) | (y > hi + 1e-5)).float().mean()  # 1e-5: float rounding
    return (
        f"background mean {y[bg].mean():.5f}, exactly +1 {exact:.3f}; hand |change| "
        f"{(y - x)[hand].abs().mean():.3f}, hand -> far {erased:.3f}, background -> hand "
        f"{(y[bg] < 0.9).float().mean():.4f}; outside the 3x3 range {outside:.4f}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synthetic", type=Path, required=True)
    p.add_argument("--real", type=Path, required=True)
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--perfect-seed", type=int, default=None)
    p.add_argument("--picture", type=Path, default=None)
    p.add_argument("--picture-rows", type=int, default=6)
    p.add_argument("checkpoints", nargs="*", type=Path)
    args = p.parse_args()
    if args.picture is not None and args.perfect_seed is None:
        p.error("--picture needs --perfect-seed")
    averaged: list[torch.Tensor] = []  # each checkpoint's weight-averaged refinement
    codes = first_images(args.synthetic, args.count)  # (n, 1, S, S)
    x = depth_to_unit(codes)
    real = depth_to_unit(first_images(args.real, args.count))
    print(f"real crops: {(real == 1.0).float().mean():.3f} of pixels exactly +1")

    def realism(images: torch.Tensor) -> str:
        return f"; told from real {two_sample_test(real, images)['accuracy']:.1%}"

    print(f"synthetic crops{realism(x)}")
    if args.perfect_seed is not None:
        n, size = len(x), x.shape[-1]
        rendered = render("synthetic", range(n), args.perfect_seed, size)["image"]
        if not np.array_equal(rendered.astype(np.int64), codes.numpy().astype(np.int64)):
            print(f"{args.synthetic} is not the simulator's synthetic stream {args.perfect_seed}")
            return 2
        looks = render("synthetic", range(n), args.perfect_seed, size, look="real")["image"]
        perfect = depth_to_unit(torch.from_numpy(looks.astype(np.int32)))
        print(f"perfect refiner (the real look): {changes(x, perfect)}{realism(perfect)}")
    for ckpt in args.checkpoints:
        for weights in ("raw", "ema"):
            try:
                refiner, _, _ = load_refiner(ckpt, weights)
            except Exception as err:  # no average in this checkpoint
                print(f"{ckpt.name} {weights}: {err}")
                continue
            channels = int(getattr(refiner, "noise_channels", 0))
            used = ""
            with torch.no_grad():
                if channels:
                    noise = indexed_noise(range(len(x)), (channels, *x.shape[2:]), 0)
                    y = refiner(x, noise)
                    # How much R makes of its noise: the same crops under another draw.
                    other = refiner(x, indexed_noise(range(len(x)), noise.shape[1:], 1))
                    moved = (y - other)[x < 1].abs().mean()
                    used = f"; noise: hand |change| between two draws {moved:.4f}"
                else:
                    y = refiner(x)
            print(f"{ckpt.name} {weights}: {changes(x, y)}{used}{realism(y)}")
            if weights == "ema":
                averaged.append(y)
    if args.picture is not None:
        n = args.picture_rows
        picture(args.picture, x[:n], [t[:n] for t in (*averaged, perfect)])
        print(f"picture -> {args.picture}")
    return 0


def picture(path: Path, x: torch.Tensor, refined: list[torch.Tensor]) -> None:
    """Rows of crops: x | each of `refined` (``distsim.training.pictures.depth_grid``: one
    colour scale per row, over x's hand) | each one's change from x (red nearer, blue farther,
    +-0.05)."""
    from matplotlib import colormaps

    from distsim.training.pictures import depth_grid, depth_scale, grid, save_png

    depths = depth_grid([x, *refined], [None] * (1 + len(refined)))
    changes = []
    for y in refined:
        shade = ((y - x)[:, 0].numpy() + 0.05) / 0.1  # (N, H, W); 0.5 = unchanged
        rgb = colormaps["RdBu"](np.clip(shade, 0.0, 1.0), bytes=True)[..., :3]  # (N, H, W, 3)
        # Back to [-1, 1] floats (N, 3, H, W), as depth_grid does, so `grid` lays them out.
        changes.append(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 127.5 - 1)
    scale = depth_scale(*x.shape[-2:])
    save_png(np.concatenate([depths, grid(changes, scale=scale)], axis=1), path)


if __name__ == "__main__":
    sys.exit(main())
