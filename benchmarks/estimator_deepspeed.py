"""The gaze estimator's training with and without DeepSpeed: time per step, peak memory, loss.

    python benchmarks/estimator_deepspeed.py --mode plain --out OUT/plain.json
    python benchmarks/estimator_deepspeed.py --mode deepspeed --out OUT/deepspeed.json \
        [--config launch/deepspeed_zero2.json]

One process per mode (Accelerate keeps one global state per process). Both train the paper's
estimator through ``distsim.estimation.fit.fit`` from the same seed on the same random eyes
(resident on the device, so the loader is not measured), plain in float32 as ``evaluate``
does, DeepSpeed with the shipped config (ZeRO-2, bf16 where the GPU has it).
benchmarks/gpu_check.sh runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distsim.estimation.fit import Plain, Prepare, fit  # noqa: E402
from distsim.gaze.estimator import EYE_SHAPE, GazeEstimator, gaze_loss  # noqa: E402


def batches(
    count: int, batch: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(count, batch, *EYE_SHAPE, generator=gen) * 2 - 1).to(device)
    y = torch.nn.functional.normalize(torch.randn(count, batch, 3, generator=gen), dim=-1)
    y = y.to(device)
    i = 0
    while True:
        yield x[i % count], y[i % count]  # (B, 1, 35, 55), (B, 3)
        i += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("plain", "deepspeed"), required=True)
    parser.add_argument("--config", default="launch/deepspeed_zero2.json")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20, help="steps before the clock starts")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    prepare: Prepare = Plain()
    info = None
    if args.mode == "deepspeed":
        from distsim.estimation import deepspeed as zero

        config, info = zero.load_config(args.config, args.batch_size)
        accelerator = zero.make_accelerator(config, info)
        device = accelerator.device
        prepare = zero.DeepSpeed(accelerator, info)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = GazeEstimator(args.width_mult).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = batches(16, args.batch_size, device)

    # fit() prepares once, so the warm-up and the timed steps are one call, timed by a hook
    # on the optimizer's step (which runs after every backward).
    stamps: list[float] = []

    def stamp(*_: object) -> None:
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    opt.register_step_post_hook(stamp)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses = fit(model, opt, data, gaze_loss, args.warmup + args.steps, prepare=prepare,
                 log_every=args.warmup + args.steps)  # fmt: skip
    timed = stamps[args.warmup - 1 :] if len(stamps) > args.warmup else stamps
    per_step = (timed[-1] - timed[0]) / max(1, len(timed) - 1)
    result = {
        "mode": args.mode,
        "deepspeed": info,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "batch_size": args.batch_size,
        "width_mult": args.width_mult,
        "steps_timed": len(timed) - 1,
        "seconds_per_step": per_step,
        "images_per_second": args.batch_size / per_step if per_step > 0 else None,
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "final_loss": losses[-1]["loss"],
        "weights_dtype": str(next(model.parameters()).dtype),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
