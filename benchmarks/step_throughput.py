"""How fast is one SimGAN step? Our step, eager and compiled, against a plain loop.

    python benchmarks/step_throughput.py [--configs eyes,hands] [--batches 32,128,512]
        [--precisions fp32,bf16] [--modes plain,eager,compiled] [--out JSON]

For each model config, batch size and precision, three implementations of the same
adversarial iteration (K_g = 2 refiner steps, then K_d = 1 discriminator step, with a
history buffer) on the same models:

- ``plain``: written the way public SimGAN repositories write it, as the baseline: float32,
  D's ``requires_grad`` toggled around every R step, a full batch refined for each D step of
  which half is used, the history buffer a NumPy array on the host (random slots from NumPy,
  images copied to the host and back), ``.item()`` on every loss, contiguous (NCHW) tensors,
  no fusion. Its bf16 rows autocast the forward passes and nothing else.
- ``eager``: ``distsim.gan.step.SimGANStep`` as the trainer runs it, no compilation.
- ``compiled``: the same with ``compile=True`` (torch.compile of both updates'
  forward-and-loss; ``--compile-mode`` picks the mode, e.g. reduce-overhead for CUDA graphs).

Reports refiner-step images/s (R steps alone) and iteration images/s (one batch of synthetic
images per iteration of 2 R steps + 1 D step), model FLOPs per iteration (counted by
torch's FlopCounterMode) and achieved FLOP/s, and on CUDA the fraction of the GPU's dense
bf16 peak and peak memory. Compilation time is reported separately and never timed.
Every row is measured in the same run as the plain baseline it is compared with.

Configs: ``eyes`` (the paper's eye models, 35x55), ``eyes-cpu`` (the cpu preset's refiner),
``hands`` (the paper's hand models, 224x224: for GPUs). ``--channels-last`` applies to the
eager and compiled rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from distsim.checkpoints.models import build_models
from distsim.config import make_config
from distsim.gan.history import HistoryBuffer
from distsim.gan.losses import PSI
from distsim.gan.step import SimGANStep

CONFIGS = {
    "eyes": ("eyes", (1, 35, 55)),
    "eyes-cpu": ("cpu", (1, 35, 55)),
    "hands": ("hands", (1, 224, 224)),
}
# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, by a substring of the device name.
BF16_PEAK = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12}
K_G, K_D = 2, 1


def refine(refiner: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """R(x), with fresh noise channels when the preset's refiner takes them."""
    k = refiner.noise_channels
    if not k:
        return refiner(x)
    return refiner(x, torch.randn(x.shape[0], k, *x.shape[2:], device=x.device, dtype=x.dtype))


class PlainLoop:
    """The baseline: a SimGAN iteration as public repositories write it."""

    def __init__(self, refiner, discriminator, history_size, lambda_reg, bf16, device) -> None:
        self.refiner, self.discriminator = refiner, discriminator
        self.opt_r = torch.optim.Adam(refiner.parameters(), lr=1e-4)
        self.opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
        self.history: list[np.ndarray] = []
        self.history_size = history_size
        self.lambda_reg = lambda_reg
        self.device = device
        self.bf16 = bf16
        self.losses: list[float] = []

    def _autocast(self) -> Any:
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _ce(self, logits: torch.Tensor, label: int) -> torch.Tensor:
        flat = logits.float().permute(0, 2, 3, 1).reshape(-1, 2)  # one row per patch
        target = torch.full((flat.shape[0],), label, dtype=torch.long, device=flat.device)
        return F.cross_entropy(flat, target)

    def refiner_step(self, syn: torch.Tensor) -> None:
        for p in self.discriminator.parameters():
            p.requires_grad = False
        with self._autocast():
            refined = refine(self.refiner, syn)
            adv = self._ce(self.discriminator(refined), 0)
        reg = self.lambda_reg * (refined.float() - syn).abs().mean()
        loss = adv + reg
        self.opt_r.zero_grad()
        loss.backward()
        self.opt_r.step()
        for p in self.discriminator.parameters():
            p.requires_grad = True
        self.losses.append(loss.item())

    def discriminator_step(self, syn: torch.Tensor, real: torch.Tensor) -> None:
        with torch.no_grad(), self._autocast():
            refined = refine(self.refiner, syn).float()
        half = syn.shape[0] // 2
        current = refined[:half].cpu().numpy()
        if len(self.history) >= half:
            picks = random.sample(range(len(self.history)), half)
            old = torch.from_numpy(np.stack([self.history[i] for i in picks])).to(self.device)
            fake = torch.cat([refined[:half], old])
        else:
            fake = refined
        for image in current:
            if len(self.history) < self.history_size:
                self.history.append(image)
            else:
                self.history[random.randrange(self.history_size)] = image
        with self._autocast():
            loss = self._ce(self.discriminator(fake), 1) + self._ce(self.discriminator(real), 0)
        self.opt_d.zero_grad()
        loss.backward()
        self.opt_d.step()
        self.losses.append(loss.item())


def iteration_flops(preset: str, shape: tuple[int, int, int], batch: int) -> dict[str, float]:
    """Model FLOPs of one R step and one iteration (2 R + 1 D step, D on b/2 fresh + b/2
    buffered + b real), counted on meta tensors."""
    cfg = make_config(preset)
    with torch.device("meta"):
        refiner, disc = build_models(cfg, shape[0])
        x = torch.empty(batch, *shape)
        counter = FlopCounterMode(display=False)
        with counter:
            refined = refine(refiner, x)
            (disc(refined).float().mean() + refined.float().mean()).backward()
        r_step = counter.get_total_flops()
        counter = FlopCounterMode(display=False)
        with counter:
            with torch.no_grad():
                refine(refiner, x[: batch // 2])
            disc(torch.cat([x, x])).float().mean().backward()
        d_step = counter.get_total_flops()
    return {"r_step": float(r_step), "iteration": float(K_G * r_step + K_D * d_step)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device, iters: int, warmup: int) -> tuple:
    started = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    warm = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - started) / iters, warm


def measure(
    config: str, batch: int, precision: str, mode: str, args: argparse.Namespace
) -> dict[str, Any]:
    preset, shape = CONFIGS[config]
    cfg = make_config(preset)
    device = torch.device(args.device)
    torch.manual_seed(0)
    refiner, disc = build_models(cfg, shape[0])
    channels_last = args.channels_last and mode != "plain"
    memory = torch.channels_last if channels_last else torch.contiguous_format
    refiner = refiner.to(device, memory_format=memory)
    disc = disc.to(device, memory_format=memory)
    gen = torch.Generator(device="cpu").manual_seed(1)
    syn = (torch.rand(batch, *shape, generator=gen) * 2 - 1).to(device)
    real = (torch.rand(batch, *shape, generator=gen) * 2 - 1).to(device)
    history = 100 * batch
    if mode == "plain":
        loop = PlainLoop(refiner, disc, history, cfg.optim.lambda_reg, precision == "bf16", device)
        r_step: Callable[[], None] = lambda: loop.refiner_step(syn)  # noqa: E731

        def iteration() -> None:
            for _ in range(K_G):
                loop.refiner_step(syn)
            for _ in range(K_D):
                loop.discriminator_step(syn, real)
    else:
        fused = device.type == "cuda"
        step = SimGANStep(
            refiner, disc,
            torch.optim.Adam(refiner.parameters(), 1e-4, fused=fused),
            torch.optim.Adam(disc.parameters(), 1e-3, fused=fused),
            psi=PSI[cfg.optim.psi], lambda_reg=cfg.optim.lambda_reg,
            history=HistoryBuffer(history, shape, seed=0, device=device,
                                  dtype=torch.bfloat16 if precision == "bf16" else torch.float32),
            precision="bf16" if precision == "bf16" else "no", channels_last=channels_last,
            compile=mode == "compiled", compile_mode=args.compile_mode,
            noise_channels=cfg.refiner.noise, noise_seed=0,
        )  # fmt: skip

        def r_step() -> None:
            step.refiner_step(syn)

        def iteration() -> None:
            for _ in range(K_G):
                step.refiner_step(syn)
            for _ in range(K_D):
                step.discriminator_step(syn, real)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Two warm-up iterations fill the buffer enough to mix (and compile every graph).
    iter_s, warm_iter = timed(iteration, device, args.iters, warmup=args.warmup)
    r_s, _ = timed(r_step, device, args.iters, warmup=1)
    flops = iteration_flops(preset, shape, batch)
    row: dict[str, Any] = {
        "config": config, "batch": batch, "precision": precision, "mode": mode,
        "channels_last": channels_last,
        "r_step_images_per_s": batch / r_s,
        "iteration_images_per_s": batch / iter_s,
        "iteration_ms": 1e3 * iter_s,
        "warmup_s": warm_iter,
        "model_flops_per_iteration": flops["iteration"],
        "achieved_tflops": flops["iteration"] / iter_s / 1e12,
    }  # fmt: skip
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
        if peak is not None:
            row["fraction_of_bf16_peak"] = flops["iteration"] / iter_s / peak
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="eyes")
    parser.add_argument("--batches", default="32,128,512")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--modes", default="plain,eager,compiled")
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument(
        "--compiled-batches", default="", help="batches with compiled rows (default: all)"
    )
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_throughput.json"))
    args = parser.parse_args()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    started = time.time()
    rows = []
    for config in args.configs.split(","):
        for batch in map(int, args.batches.split(",")):
            for precision in args.precisions.split(","):
                base = None
                compiled_batches = {int(b) for b in args.compiled_batches.split(",") if b}
                for mode in args.modes.split(","):
                    if mode == "compiled" and compiled_batches and batch not in compiled_batches:
                        continue
                    row = measure(config, batch, precision, mode, args)
                    if mode == "plain":
                        base = row
                    elif base is not None:
                        row["speedup_vs_plain"] = (
                            row["iteration_images_per_s"] / base["iteration_images_per_s"]
                        )
                    eager = next((r for r in rows if r["mode"] == "eager" and
                                  (r["config"], r["batch"], r["precision"]) ==
                                  (config, batch, precision)), None)  # fmt: skip
                    if mode == "compiled" and eager is not None:
                        row["speedup_vs_eager"] = (
                            row["iteration_images_per_s"] / eager["iteration_images_per_s"]
                        )
                    rows.append(row)
                    print(
                        f"{config:8s} b={batch:4d} {precision:4s} {mode:8s} "
                        f"R step {row['r_step_images_per_s']:9.0f} img/s  iteration "
                        f"{row['iteration_images_per_s']:9.0f} img/s  "
                        f"{row['achieved_tflops']:7.3f} TFLOP/s"
                        + (f"  x{row['speedup_vs_plain']:.2f} plain" if "speedup_vs_plain" in row
                           else "")
                        + (f"  x{row['speedup_vs_eager']:.2f} eager" if "speedup_vs_eager" in row
                           else ""),
                        flush=True,
                    )  # fmt: skip
    device = torch.device(args.device)
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "cpu_count": __import__("os").cpu_count(),
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "settings": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
