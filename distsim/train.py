"""Train a SimGAN refiner: `accelerate launch distsim/train.py [--preset eyes] [flags]`.

Algorithm 1 of Shrivastava et al. 2017, in three phases counted by one global step:
  1. pretrain_r_steps refiner steps on self-regularisation only,
  2. pretrain_d_steps discriminator steps against that refiner,
  3. `steps` iterations of K_g refiner steps then K_d discriminator steps.

This is the only module that talks to Accelerate. Models, losses, the history buffer and the
data pipeline take ranks, devices and seeds as arguments.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list
from torch.optim import Optimizer
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from distsim import data
from distsim.checkpoint import (
    build_models,
    find_resume,
    latest_checkpoint,
    load_state,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from distsim.checkpoint import image_shape as checkpoint_image_shape
from distsim.config import Config, load_config, resolve
from distsim.guards import (
    CommCounter,
    StopRequest,
    check_rank_consistency,
    named_state,
    tensor_checksums,
)
from distsim.history import HistoryBuffer
from distsim.images import grid, save_png
from distsim.losses import (
    PSI,
    global_logits,
    local_adversarial_loss,
    patch_accuracy,
    saturated_fraction,
    self_regularization_loss,
)
from distsim.models import REAL, REFINED, GaussianBlur


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
    skipped: int = 0  # updates skipped for a non-finite loss (--on-nonfinite skip)

    def phase(self, cfg: Config) -> str:
        if self.step < cfg.pretrain_r_steps:
            return "pretrain_r"
        if self.step < cfg.pretrain_r_steps + cfg.pretrain_d_steps:
            return "pretrain_d"
        return "adversarial"


class Preempted(Exception):
    """A stop signal arrived; every rank saved and stopped after the same step."""


@dataclass
class Meter:
    """Sums of detached per-step scalars kept on the device: read only at log intervals.

    It also remembers, per scalar, the first step at which it was not finite, without a host
    sync: `first_nonfinite` reads that at log and checkpoint steps.
    """

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    first_bad: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, step: int, **values: torch.Tensor) -> None:
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1
            prev = self.first_bad.get(k)
            if prev is None:
                prev = torch.full((), -1, dtype=torch.int64, device=v.device)
            self.first_bad[k] = torch.where(~torch.isfinite(v) & (prev < 0), step, prev)

    def first_nonfinite(self, accelerator: Accelerator) -> tuple[list[str], int] | None:
        """(scalars, step) of the earliest step with a non-finite value on any rank, or None.

        The scalars are every one that went bad at that step, in the order they were added.
        """
        if not self.first_bad:
            return None
        keys = list(self.first_bad)  # insertion order: the same on every rank
        never = torch.iinfo(torch.int64).max
        steps = torch.stack([self.first_bad[k] for k in keys])
        steps = torch.where(steps < 0, never, steps)
        earliest = _reduce_min(accelerator, steps).tolist()  # a host sync: interval steps only
        step = min(earliest)
        if step == never:
            return None
        return [k for k, s in zip(keys, earliest, strict=True) if s == step], int(step)

    def pop(self, accelerator: Accelerator) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        local = torch.stack([self.sums[k] / self.counts[k] for k in keys])
        means = accelerator.reduce(local, reduction="mean").tolist()  # the one host sync
        self.sums.clear()
        self.counts.clear()
        return dict(zip(keys, means, strict=True))


def _reduce_min(accelerator: Accelerator, values: torch.Tensor) -> torch.Tensor:
    if accelerator.num_processes == 1:
        return values
    values = values.clone()
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MIN)
    return values


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


def make_accelerator(mixed_precision: str = "", timeout_s: int = 600) -> Accelerator:
    """Accelerator for this launch. Launched as W processes (torchrun, `accelerate launch
    --multi_gpu`) on a machine without CUDA, Accelerate would silently run W independent
    single-process trainings unless told to use the CPU: then it uses gloo.

    `timeout_s` bounds how long a collective waits for a rank that died: the survivors then
    fail instead of hanging (the launcher usually stops them sooner, see README)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = launched > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        mixed_precision=mixed_precision or None,
        cpu=cpu,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))],
    )
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"launched as {launched} processes but Accelerate formed a group of "
            f"{accelerator.num_processes}; check the launcher and backend"
        )
    return accelerator


def make_optimizer(cfg: Config, params: Iterator[torch.nn.Parameter], lr: float) -> Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(cfg.adam_beta1, 0.999))
    return torch.optim.SGD(params, lr=lr)


# (rank, world_size, synthetic start, real start) -> endless image batches per domain, each
# (b, C, H, W). Replaces the shard loaders (tests feed the same global batches at any world
# size); the starts are the batches each rank already consumed (resume).
Streams = Callable[[int, int, int, int], tuple[Iterator[torch.Tensor], Iterator[torch.Tensor]]]

# Exit status of a run stopped by SIGTERM/SIGUSR1 after saving: not 0 (the run is not done),
# and distinct from errors (1, 2), so scripts can tell "resume me" from "broken".
EXIT_PREEMPTED = 3
# Warn when more than this fraction of refined pixels sits at tanh's limits over a log
# interval. Eyes have almost none there (0.02% of real ones); a collapsed refiner has all.
SATURATION_WARNING = 0.5


def history_dtype(accelerator: Accelerator) -> torch.dtype:
    """Store (and exchange) buffered images in the training precision: under bf16 that halves
    the buffer's memory and its all-gather, and bf16's 8-bit mantissa keeps images in [-1, 1]
    to within 2^-8, below the 1/127.5 step of the 8-bit images they were refined from."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        str(accelerator.mixed_precision), torch.float32
    )


def config_changes(saved: Config, now: Config) -> list[str]:
    skip = {"run_dir", "resume", "progress"}
    return [
        f"{f.name} {getattr(saved, f.name)!r} -> {getattr(now, f.name)!r}"
        for f in dataclasses.fields(Config)
        if f.name not in skip and getattr(saved, f.name) != getattr(now, f.name)
    ]


def training_loop(
    cfg: Config, accelerator: Accelerator | None = None, *, streams: Streams | None = None
) -> Path:
    """Run SimGAN training as configured; returns the run directory.

    Raises Preempted after saving a checkpoint if SIGTERM or SIGUSR1 arrived, and
    FloatingPointError naming the step and loss if a loss went non-finite (--on-nonfinite
    stop), leaving the last checkpoint as it was.
    """
    cfg.validate()
    if cfg.resume == "auto" and not cfg.run_dir:
        raise ValueError("--resume auto needs --run-dir: the run directory to resume in")
    if accelerator is None:
        accelerator = make_accelerator(cfg.mixed_precision, cfg.dist_timeout)
    if accelerator.mixed_precision == "fp16" and accelerator.device.type != "cuda":
        raise ValueError(
            "--mixed-precision fp16 needs a CUDA device (Accelerate runs CPU fp16 as float32 "
            "with no loss scaling); use bf16 or no on the CPU"
        )
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    # Control messages (stop requests, consistency checksums) go over gloo on the CPU, so
    # agreeing on them never waits on the GPU's stream.
    control = (
        torch.distributed.new_group(backend="gloo", timeout=timedelta(seconds=cfg.dist_timeout))
        if world > 1
        else None
    )

    # One run directory for all ranks: the main process names it.
    run_dir_box = [cfg.run_dir or default_run_dir(cfg)]
    broadcast_object_list(run_dir_box)
    cfg.run_dir = run_dir_box[0]
    run_dir = Path(cfg.run_dir)
    resume_from = find_resume(cfg.resume, run_dir)

    syn_dir, real_dir, manifest = prepare_data(cfg, accelerator)
    image_shape = tuple(manifest.image_shape)  # (C, H, W)
    channels = image_shape[0]
    if cfg.psi == "channel_mean" and channels == 1:
        raise ValueError("--psi channel_mean needs colour images; these shards have 1 channel")

    # Identical initial weights on every rank without relying on DDP's broadcast.
    torch.manual_seed(cfg.seed)
    refiner, discriminator = build_models(cfg, channels)
    state: dict[str, Any] | None = None
    notes: list[str] = []
    if resume_from is not None:
        if checkpoint_image_shape(resume_from) != image_shape:
            raise ValueError(
                f"{resume_from}: trained on images {checkpoint_image_shape(resume_from)}, "
                f"these shards hold {image_shape}"
            )
        load_weights(resume_from, refiner, discriminator)
        state = load_state(resume_from)
        notes = config_changes(load_config(resume_from / "config.json"), cfg)
        if state["world_size"] != world:
            notes.append(
                f"world size {state['world_size']} -> {world}: global batch "
                f"{state['world_size'] * cfg.batch_size} -> {world * cfg.batch_size}, each "
                "rank's data stream and RNG start afresh (the buffer and weights carry over)"
            )
    opt_r = make_optimizer(cfg, refiner.parameters(), cfg.lr_r)
    opt_d = make_optimizer(cfg, discriminator.parameters(), cfg.lr_d)
    refiner, discriminator, opt_r, opt_d = accelerator.prepare(refiner, discriminator, opt_r, opt_d)
    # Forward passes that must not involve DDP (no-grad refinement, R's loss through D) use the
    # raw modules: D's gradients are never computed, all-reduced or stepped in an R step.
    r_raw = accelerator.unwrap_model(refiner)
    d_raw = accelerator.unwrap_model(discriminator)
    comm = CommCounter()
    if world > 1:
        refiner.register_comm_hook(None, comm.ddp_hook("r_grads"))
        discriminator.register_comm_hook(None, comm.ddp_hook("d_grads"))
    psi = PSI[cfg.psi]
    # What D looks at: the images, blurred alike for real and refined with --disc-blur.
    d_view = GaussianBlur(cfg.disc_blur, channels).to(device)
    # D's verdicts: per patch (paper) or pooled to one per image (the global-loss ablation).
    verdicts = global_logits if cfg.adversarial == "global" else (lambda logits: logits)

    history = (
        HistoryBuffer(
            cfg.history_size,
            image_shape,
            seed=cfg.seed,
            device=device,
            dtype=history_dtype(accelerator),
        )  # fmt: skip
        if cfg.history
        else None
    )
    counters = Counters()
    if state is not None:
        opt_r.load_state_dict(state["opt_r"])
        opt_d.load_state_dict(state["opt_d"])
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
        counters = Counters(**state["counters"])
        if history is not None and state["history"] is not None:
            history.load_state_dict(state["history"])
        elif history is not None:
            notes.append("the checkpoint has no history buffer: it starts empty")
        if state["world_size"] == world:
            set_rng_state(state["rng"][rank])

    # Separate streams per domain, images only: SimGAN never reads a label. The loaders never
    # go through accelerator.prepare (it would re-shard or broadcast them). Each restarts where
    # this rank left off: R and D steps each take one synthetic batch, D steps one real batch.
    syn_start, real_start = counters.r_steps + counters.d_steps, counters.d_steps
    skipped = {domain: {"blocks": 0, "images": 0} for domain in ("synthetic", "real")}
    loaders = {}
    if streams is None:
        starts = {"synthetic": syn_start, "real": real_start}
        for i, (domain, directory) in enumerate((("synthetic", syn_dir), ("real", real_dir))):
            loaders[domain] = data.make_loader(
                directory, cfg.batch_size, rank, world, cfg.seed * 2 + i, cfg.num_workers,
                labels=(), on_error=cfg.on_bad_shard, start=starts[domain],
            )  # fmt: skip
            skipped[domain]["shards"] = len(loaders[domain].dataset.skipped_shards)
        syn_batches = batches(loaders["synthetic"], device, skipped["synthetic"])
        real_batches = batches(loaders["real"], device, skipped["real"])
    else:
        syn_it, real_it = streams(rank, world, syn_start, real_start)
        syn_batches = (to_unit_range(x.to(device)) for x in syn_it)
        real_batches = (to_unit_range(x.to(device)) for x in real_it)

    writer: SummaryWriter | None = None
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(cfg.to_json())
        writer = SummaryWriter(str(run_dir / "tensorboard"))
        if resume_from is not None:
            print(f"resuming from {resume_from} at step {counters.step}", flush=True)
            for note in notes:
                print(f"  changed: {note}", flush=True)
    # The same eyes in every grid, and whatever the resume point: the first of each set.
    grid_syn, grid_real = (
        to_unit_range(data.first_images(d, cfg.grid_rows, on_error=cfg.on_bad_shard)).to(device)
        for d in (syn_dir, real_dir)
    )

    def finite_everywhere(loss: torch.Tensor) -> bool:
        # --on-nonfinite skip only: a host sync, and every rank takes the same decision.
        ok = torch.isfinite(loss.detach()).all().float()
        return bool(accelerator.reduce(ok, reduction="sum").item() == world)

    def d_checksum() -> torch.Tensor:
        return tensor_checksums(named_state("discriminator", d_raw))

    def refiner_step(adversarial: bool, check: bool) -> None:
        syn = next(syn_batches)
        d_before = d_checksum() if check and adversarial else None
        with accelerator.autocast():
            refined = refiner(syn)
            reg = self_regularization_loss(refined, syn, psi).mean()
            if adversarial:
                d_raw.requires_grad_(False)
                adv = local_adversarial_loss(verdicts(d_raw(d_view(refined))), REAL).mean()
                loss = adv + cfg.lambda_reg * reg
            else:
                loss = reg
        counters.r_steps += 1
        if cfg.on_nonfinite == "skip" and not finite_everywhere(loss):
            d_raw.requires_grad_(True)
            counters.skipped += 1
            return
        opt_r.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt_r.step()
        d_raw.requires_grad_(True)
        if d_before is not None and not torch.equal(d_before, d_checksum()):
            raise RuntimeError(f"rank {rank}: a refiner step changed D at step {counters.step}")
        extra = {"r_adv": adv} if adversarial else {}
        meter.add(
            counters.step + 1, r_reg=reg, r_loss=loss, r_saturated=saturated_fraction(refined),
            **extra,
        )  # fmt: skip

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
            # Exchanged in the buffer's dtype: what is stored is all that needs to travel.
            gathered = accelerator.gather(current.to(history.images.dtype).contiguous())
            comm.add("d_history", (gathered.numel() - current.numel()) * gathered.element_size())
            n_global = gathered.shape[0]  # W * b/2
            if len(history) >= n_global:
                idx = history.sample_indices(n_global)
                n_local = current.shape[0]
                mine = idx[rank * n_local : (rank + 1) * n_local].to(device, non_blocking=True)
                fake = torch.cat([current, history.images[mine].float()])
            history.push(gathered)
        with accelerator.autocast():
            logits = verdicts(discriminator(d_view(torch.cat([fake, real]))))  # (2b, 2, h, w)
            logits_fake, logits_real = logits[: fake.shape[0]], logits[fake.shape[0] :]
            loss_fake = local_adversarial_loss(logits_fake, REFINED).mean()
            loss_real = local_adversarial_loss(logits_real, REAL).mean()
            loss = loss_fake + loss_real
        counters.d_steps += 1
        if cfg.on_nonfinite == "skip" and not finite_everywhere(loss):
            counters.skipped += 1
            return
        opt_d.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt_d.step()
        meter.add(
            counters.step + 1,  # the step being taken, as checkpoints and logs number it
            d_loss=loss,
            d_acc_refined=patch_accuracy(logits_fake.detach(), REFINED).mean(),
            d_acc_real=patch_accuracy(logits_real.detach(), REAL).mean(),
        )

    def save_grid(step: int) -> None:
        with torch.no_grad(), accelerator.autocast():
            refined = r_raw(grid_syn).float()
        picture = grid([grid_syn, refined, grid_real])
        save_png(picture, run_dir / "images" / f"step-{step:08d}.png")
        assert writer is not None
        writer.add_image("synthetic|refined|real", picture, step, dataformats="HWC")

    def check_finite(step: int) -> None:
        bad = meter.first_nonfinite(accelerator)
        if bad is not None:
            names, at = bad
            raise FloatingPointError(
                f"non-finite {', '.join(names)} at step {at} (checked at step {step}); the last "
                f"checkpoint in {run_dir / 'checkpoints'} is untouched (or pass "
                "--on-nonfinite skip)"
            )

    def check_consistency(step: int) -> None:
        tensors = named_state("refiner", r_raw) | named_state("discriminator", d_raw)
        try:
            check_rank_consistency(tensors, world, control)
        except RuntimeError as err:
            raise RuntimeError(f"step {step}: {err}") from None

    def checkpoint(step: int) -> Path | None:
        check_finite(step)
        check_consistency(step)
        rngs = [None] * world
        if world > 1:
            torch.distributed.all_gather_object(rngs, rng_state(), group=control)
        else:
            rngs = [rng_state()]
        path = None
        if accelerator.is_main_process:
            state = {
                "opt_r": opt_r.state_dict(),
                "opt_d": opt_d.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None,
                "history": history.state_dict() if history is not None else None,
                "counters": dataclasses.asdict(counters),
                "rng": rngs,
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

    warned_saturation = [False]

    def warn_if_saturated(step: int, stats: dict[str, float]) -> None:
        fraction = stats.get("r_saturated", 0.0)
        if fraction <= SATURATION_WARNING or warned_saturation[0]:
            return
        warned_saturation[0] = True  # once: a collapsed run stays collapsed
        if accelerator.is_main_process:
            print(
                f"distsim.train: warning: step {step}: {100 * fraction:.0f}% of refined pixels "
                "are at -1 or 1, so the refiner's tanh has saturated and its gradients vanish; "
                f"it seldom recovers (see {run_dir / 'images'}). A lower --lr-d or --lr-r may "
                "help.",
                file=sys.stderr, flush=True,
            )  # fmt: skip

    def log_scalars(step: int, phase: str, stats: dict[str, float], since: Counters) -> None:
        if cfg.on_bad_shard == "skip":
            counts = [skipped[d][k] for d in sorted(skipped) for k in sorted(skipped[d])]
            total_skipped = accelerator.reduce(
                torch.tensor(counts, device=device, dtype=torch.float64), reduction="sum"
            ).tolist()
            names = [f"data/skipped_{k}_{d}" for d in sorted(skipped) for k in sorted(skipped[d])]
            stats = stats | dict(zip(names, total_skipped, strict=True))
        sent = comm.pop()
        if writer is None:
            return
        for k, v in stats.items():
            tag = k if phase == "adversarial" or k.startswith("data/") else f"{phase}/{k}"
            writer.add_scalar(tag, v, step)
        seconds = time.perf_counter() - log_clock[0]
        log_clock[0] = time.perf_counter()
        steps_r, steps_d = counters.r_steps - since.r_steps, counters.d_steps - since.d_steps
        # Synthetic images through R per second, all ranks: the refiner's throughput.
        writer.add_scalar(
            "images_per_second", (steps_r + steps_d) * cfg.batch_size * world / seconds, step
        )
        # Bytes this (main) rank handed to collectives, per R or D step.
        for label, nbytes in sent.items():
            per = steps_r if label.startswith("r_") else steps_d
            if per:
                writer.add_scalar(f"comm/{label}_bytes_per_step", nbytes / per, step)
        writer.add_scalar("nonfinite_skipped", counters.skipped, step)
        if history is not None:
            writer.add_scalar("history_filled", len(history), step)

    log_clock = [time.perf_counter()]
    meter = Meter()
    stop = StopRequest(control).install()
    total = cfg.pretrain_r_steps + cfg.pretrain_d_steps + cfg.steps
    bar = tqdm(
        total=total,
        initial=counters.step,
        disable=not (cfg.progress and accelerator.is_main_process),
        desc="train",
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    first_step = counters.step
    last_log = dataclasses.replace(counters)
    try:
        while counters.step < total:
            phase = counters.phase(cfg)
            check = cfg.check_every > 0 and (counters.step + 1) % cfg.check_every == 0
            if phase == "pretrain_r":
                refiner_step(adversarial=False, check=check)
            elif phase == "pretrain_d":
                discriminator_step()
            else:
                for _ in range(cfg.k_g):
                    refiner_step(adversarial=True, check=check)
                for _ in range(cfg.k_d):
                    discriminator_step()
            counters.step += 1
            step = counters.step
            bar.update(1)

            if step % cfg.log_every == 0 or step == total:
                check_finite(step)
                stats = meter.pop(accelerator)
                log_scalars(step, phase, stats, last_log)
                warn_if_saturated(step, stats)
                last_log = dataclasses.replace(counters)
                bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()}, refresh=False)
                bar.set_description(phase)
            if check:
                check_consistency(step)
            if accelerator.is_main_process and (step % cfg.image_every == 0 or step == total):
                save_grid(step)
            signum = stop.poll()
            if step % cfg.ckpt_every == 0 or step == total or signum:
                path = checkpoint(step)
            if signum:
                name = signal.Signals(signum).name
                raise Preempted(
                    f"stopped by {name} after step {step}; checkpoint "
                    f"{path or latest_checkpoint(run_dir)}; continue with --resume auto "
                    f"--run-dir {run_dir}"
                )
    finally:
        stop.uninstall()
        bar.close()
        for loader in loaders.values():
            loader.close()
        if writer is not None:
            writer.close()
    accelerator.wait_for_everyone()
    elapsed = time.perf_counter() - started
    if accelerator.is_main_process:
        print(
            f"done: steps {first_step}-{total} in {elapsed:.1f}s; run directory {run_dir}",
            flush=True,
        )
    return run_dir


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = resolve(argv)
        training_loop(cfg)
    except Preempted as stopped:
        print(f"distsim.train: {stopped}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"distsim.train: error: {err}", file=sys.stderr)
        return 2
    finally:
        # Left to interpreter shutdown, gloo's threads can abort the process at exit
        # ("terminate called without an active exception").
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
