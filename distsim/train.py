"""Train a SimGAN refiner: `accelerate launch distsim/train.py [--preset eyes] [flags]`.

Algorithm 1 of Shrivastava et al. 2017, in three phases counted by one global step:
  1. pretrain_r_steps refiner steps on self-regularisation only,
  2. pretrain_d_steps discriminator steps against that refiner,
  3. `steps` iterations of K_g refiner steps then K_d discriminator steps.

This is the only module that talks to Accelerate. Models, losses, the history buffer and the
data pipeline take ranks, devices and seeds as arguments.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from distsim import data
from distsim.checkpoint import build_models, save_checkpoint
from distsim.config import Config, resolve
from distsim.history import HistoryBuffer
from distsim.images import grid, save_png
from distsim.losses import (
    PSI,
    global_logits,
    local_adversarial_loss,
    patch_accuracy,
    self_regularization_loss,
)
from distsim.models import REAL, REFINED


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Integer images from the loader -> float in [-1, 1], on whatever device they are."""
    if images.dtype == torch.uint8:
        return images.float().div_(127.5).sub_(1.0)
    if images.dtype == torch.uint16 or images.dtype == torch.int32:
        return images.float().div_(32767.5).sub_(1.0)
    return images.float()


@dataclass
class Counters:
    step: int = 0  # global step over all phases
    r_steps: int = 0
    d_steps: int = 0

    def phase(self, cfg: Config) -> str:
        if self.step < cfg.pretrain_r_steps:
            return "pretrain_r"
        if self.step < cfg.pretrain_r_steps + cfg.pretrain_d_steps:
            return "pretrain_d"
        return "adversarial"


@dataclass
class Meter:
    """Sums of detached per-step scalars kept on the device: read only at log intervals."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, **values: torch.Tensor) -> None:
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1

    def pop(self, accelerator: Accelerator) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        local = torch.stack([self.sums[k] / self.counts[k] for k in keys])
        means = accelerator.reduce(local, reduction="mean").tolist()  # the one host sync
        self.sums.clear()
        self.counts.clear()
        return dict(zip(keys, means, strict=True))


def default_run_dir(cfg: Config) -> str:
    return str(Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")


def prepare_data(cfg: Config, accelerator: Accelerator) -> tuple[Path, Path, data.Manifest]:
    """Resolve the shard directories (creating the built-in ones once) and check they pair up."""
    if cfg.synthetic:
        syn_dir, real_dir = Path(cfg.synthetic), Path(cfg.real)
    else:
        cache = Path(cfg.cache_dir) if cfg.cache_dir else None
        # Main process creates the built-in shards; the others then find them complete.
        paths: list[Path] = []
        with accelerator.main_process_first():
            for domain in ("synthetic", "real"):
                paths.append(
                    data.ensure_builtin_shards(domain, cfg.builtin_count, cfg.builtin_seed, cache)
                )
        syn_dir, real_dir = paths
    syn = data.open_shards(syn_dir, on_error=cfg.on_bad_shard)
    real = data.open_shards(real_dir, on_error=cfg.on_bad_shard)
    data.check_pair(syn, syn_dir, real, real_dir)
    return syn_dir, real_dir, syn


def batches(
    loader: torch.utils.data.DataLoader, device: torch.device, skipped: dict[str, int]
) -> Iterator[torch.Tensor]:
    """Float images on the device; adds what the loader skipped (skip mode) to `skipped`."""
    for batch in loader:
        skipped["blocks"] += batch.get("skipped_blocks", 0)
        skipped["images"] += batch.get("skipped_images", 0)
        yield to_unit_range(batch["image"].to(device, non_blocking=True))  # (B, C, H, W)


def make_accelerator(mixed_precision: str = "") -> Accelerator:
    """Accelerator for this launch. Launched as W processes (torchrun, `accelerate launch
    --multi_gpu`) on a machine without CUDA, Accelerate would silently run W independent
    single-process trainings unless told to use the CPU: then it uses gloo."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = launched > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=mixed_precision or None, cpu=cpu)
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"launched as {launched} processes but Accelerate formed a group of "
            f"{accelerator.num_processes}; check the launcher and backend"
        )
    return accelerator


def training_loop(cfg: Config, accelerator: Accelerator | None = None) -> Path:
    """Run SimGAN training as configured; returns the run directory."""
    cfg.validate()
    if accelerator is None:
        accelerator = make_accelerator(cfg.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device

    # One run directory for all ranks: the main process names it.
    run_dir_box = [cfg.run_dir or default_run_dir(cfg)]
    broadcast_object_list(run_dir_box)
    cfg.run_dir = run_dir_box[0]
    run_dir = Path(cfg.run_dir)

    syn_dir, real_dir, manifest = prepare_data(cfg, accelerator)
    image_shape = tuple(manifest.image_shape)  # (C, H, W)
    channels = image_shape[0]
    if cfg.psi == "channel_mean" and channels == 1:
        raise ValueError("--psi channel_mean needs colour images; these shards have 1 channel")

    # Identical initial weights on every rank without relying on DDP's broadcast.
    torch.manual_seed(cfg.seed)
    refiner, discriminator = build_models(cfg, channels)
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD
    opt_r = opt_cls(refiner.parameters(), lr=cfg.lr_r)
    opt_d = opt_cls(discriminator.parameters(), lr=cfg.lr_d)
    refiner, discriminator, opt_r, opt_d = accelerator.prepare(refiner, discriminator, opt_r, opt_d)
    # Forward passes that must not involve DDP (no-grad refinement, R's loss through D) use the
    # raw modules: D's gradients are never computed, all-reduced or stepped in an R step.
    r_raw = accelerator.unwrap_model(refiner)
    d_raw = accelerator.unwrap_model(discriminator)
    psi = PSI[cfg.psi]
    # D's verdicts: per patch (paper) or pooled to one per image (the global-loss ablation).
    verdicts = global_logits if cfg.adversarial == "global" else (lambda logits: logits)

    # Separate streams per domain, images only: SimGAN never reads a label. The loaders never
    # go through accelerator.prepare (it would re-shard or broadcast them).
    skipped = {domain: {"blocks": 0, "images": 0} for domain in ("synthetic", "real")}
    loaders = {}
    for i, (domain, directory) in enumerate((("synthetic", syn_dir), ("real", real_dir))):
        loaders[domain] = data.make_loader(
            directory, cfg.batch_size, rank, world, cfg.seed * 2 + i, cfg.num_workers,
            labels=(), on_error=cfg.on_bad_shard,
        )  # fmt: skip
        skipped[domain]["shards"] = len(loaders[domain].dataset.skipped_shards)
    syn_batches = batches(loaders["synthetic"], device, skipped["synthetic"])
    real_batches = batches(loaders["real"], device, skipped["real"])

    history = (
        HistoryBuffer(cfg.history_size, image_shape, seed=cfg.seed, device=device)
        if cfg.history
        else None
    )

    writer: SummaryWriter | None = None
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(cfg.to_json())
        writer = SummaryWriter(str(run_dir / "tensorboard"))
    # Fixed images for the grids, so that successive grids show the same eyes.
    grid_syn = next(syn_batches)[: cfg.grid_rows]
    grid_real = next(real_batches)[: cfg.grid_rows]

    def refiner_step(adversarial: bool) -> None:
        syn = next(syn_batches)
        with accelerator.autocast():
            refined = refiner(syn)
            reg = self_regularization_loss(refined, syn, psi).mean()
            if adversarial:
                d_raw.requires_grad_(False)
                adv = local_adversarial_loss(verdicts(d_raw(refined)), REAL).mean()
                loss = adv + cfg.lambda_reg * reg
            else:
                loss = reg
        opt_r.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt_r.step()
        d_raw.requires_grad_(True)
        meter.add(r_reg=reg, r_loss=loss, **({"r_adv": adv} if adversarial else {}))
        counters.r_steps += 1

    def discriminator_step() -> None:
        syn = next(syn_batches)
        real = next(real_batches)
        with torch.no_grad(), accelerator.autocast():
            refined = r_raw(syn).float()  # (b, C, H, W)
        fake = refined
        if history is not None:
            # Half current (even positions: the same images whether the global batch is split
            # over ranks or not), half from the buffer once it holds enough.
            current = refined[0::2]  # (b/2, C, H, W)
            gathered = accelerator.gather(current.contiguous())  # (W * b/2, C, H, W)
            n_global = gathered.shape[0]
            if len(history) >= n_global:
                idx = history.sample_indices(n_global)
                n_local = current.shape[0]
                mine = idx[rank * n_local : (rank + 1) * n_local].to(device, non_blocking=True)
                fake = torch.cat([current, history.images[mine].float()])
            history.push(gathered)
        with accelerator.autocast():
            logits = verdicts(discriminator(torch.cat([fake, real])))  # (2b, 2, h, w)
            logits_fake, logits_real = logits[: fake.shape[0]], logits[fake.shape[0] :]
            loss_fake = local_adversarial_loss(logits_fake, REFINED).mean()
            loss_real = local_adversarial_loss(logits_real, REAL).mean()
            loss = loss_fake + loss_real
        opt_d.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt_d.step()
        meter.add(
            d_loss=loss,
            d_acc_refined=patch_accuracy(logits_fake.detach(), REFINED).mean(),
            d_acc_real=patch_accuracy(logits_real.detach(), REAL).mean(),
        )
        counters.d_steps += 1

    def save_grid(step: int) -> None:
        with torch.no_grad(), accelerator.autocast():
            refined = r_raw(grid_syn).float()
        picture = grid([grid_syn, refined, grid_real])
        save_png(picture, run_dir / "images" / f"step-{step:08d}.png")
        assert writer is not None
        writer.add_image("synthetic|refined|real", picture, step, dataformats="HWC")

    def checkpoint(step: int) -> Path | None:
        path = None
        if accelerator.is_main_process:
            state = {
                "opt_r": opt_r.state_dict(),
                "opt_d": opt_d.state_dict(),
                "history": history.state_dict() if history is not None else None,
                "counters": {
                    "step": counters.step,
                    "r_steps": counters.r_steps,
                    "d_steps": counters.d_steps,
                },
                "world_size": world,
            }
            path = save_checkpoint(
                run_dir,
                step,
                refiner=r_raw,
                discriminator=d_raw,
                state=state,
                config=cfg,
                image_shape=image_shape,
                keep=cfg.keep_checkpoints,
            )
        accelerator.wait_for_everyone()
        return path

    counters = Counters()
    meter = Meter()
    total = cfg.pretrain_r_steps + cfg.pretrain_d_steps + cfg.steps
    bar = tqdm(
        total=total,
        disable=not (cfg.progress and accelerator.is_main_process),
        desc="train",
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    while counters.step < total:
        phase = counters.phase(cfg)
        if phase == "pretrain_r":
            refiner_step(adversarial=False)
        elif phase == "pretrain_d":
            discriminator_step()
        else:
            for _ in range(cfg.k_g):
                refiner_step(adversarial=True)
            for _ in range(cfg.k_d):
                discriminator_step()
        counters.step += 1
        step = counters.step
        bar.update(1)

        if step % cfg.log_every == 0 or step == total:
            stats = meter.pop(accelerator)
            bad = {k: v for k, v in stats.items() if not math.isfinite(v)}
            if bad:
                raise FloatingPointError(
                    f"non-finite loss at step {step} ({phase}): {bad}; last checkpoint in "
                    f"{run_dir / 'checkpoints'} is untouched"
                )
            if cfg.on_bad_shard == "skip":
                counts = [skipped[d][k] for d in sorted(skipped) for k in sorted(skipped[d])]
                total_skipped = accelerator.reduce(
                    torch.tensor(counts, device=device, dtype=torch.float64), reduction="sum"
                ).tolist()
                names = [
                    f"data/skipped_{k}_{d}" for d in sorted(skipped) for k in sorted(skipped[d])
                ]
                stats_skipped = dict(zip(names, total_skipped, strict=True))
            else:
                stats_skipped = {}
            if writer is not None:
                for k, v in stats_skipped.items():
                    writer.add_scalar(k, v, step)
                for k, v in stats.items():
                    writer.add_scalar(f"{phase}/{k}" if phase != "adversarial" else k, v, step)
                writer.add_scalar(
                    # Synthetic images through R per second, all ranks: the refiner's throughput.
                    "images_per_second",
                    (counters.r_steps + counters.d_steps)
                    * cfg.batch_size
                    * world
                    / (time.perf_counter() - started),
                    step,
                )
                if history is not None:
                    writer.add_scalar("history_filled", len(history), step)
            bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()}, refresh=False)
            bar.set_description(phase)
        if accelerator.is_main_process and (step % cfg.image_every == 0 or step == total):
            save_grid(step)
        if step % cfg.ckpt_every == 0 or step == total:
            checkpoint(step)
    bar.close()
    for loader in loaders.values():
        loader.close()
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    elapsed = time.perf_counter() - started
    if accelerator.is_main_process:
        print(f"done: {total} steps in {elapsed:.1f}s; run directory {run_dir}", flush=True)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = resolve(argv)
        training_loop(cfg)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"distsim.train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
