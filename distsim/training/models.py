"""The run's models: R and D (bare, and DDP-wrapped for their updates), R's weight average,
both optimisers, the history buffer, and the step that updates them (``distsim.gan.step``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator

import torch
from torch.optim import Optimizer

from distsim.checkpoints.models import build_models
from distsim.config import Config
from distsim.data.pixels import CODE_LEVELS
from distsim.distributed.guards import CommCounter
from distsim.distributed.launch import wrap_ddp
from distsim.gan.ema import EMA
from distsim.gan.history import HistoryBuffer, codes_fit
from distsim.gan.losses import PSI
from distsim.gan.step import SimGANStep
from distsim.training.resume import ResumePoint
from distsim.training.runtime import Runtime


def make_optimizer(
    cfg: Config, params: Iterator[torch.nn.Parameter], lr: float, device: torch.device
) -> Optimizer:
    if cfg.optim.optimizer == "adam":
        # One fused kernel for all parameters on CUDA; foreach (a few batched ops) elsewhere.
        fused = device.type == "cuda"
        return torch.optim.Adam(params, lr=lr, betas=(cfg.optim.adam_beta1, 0.999), fused=fused)
    return torch.optim.SGD(params, lr=lr)


def history_layout(mode: str, world: int) -> str:
    """replicated or sharded for --history-mode `mode` on `world` ranks. auto: replicated up
    to 8 ranks (one node: the all-gather rides NVLink and costs a few percent, and runs stay
    exactly world-size invariant), sharded above (its traffic would grow with W over the
    network)."""
    if mode == "auto":
        return "replicated" if world <= 8 else "sharded"
    return "sharded" if world > 1 and mode == "sharded" else "replicated"


def history_dtype(precision: str) -> torch.dtype:
    """Store (and exchange) buffered images in the training precision: under bf16 that halves
    the buffer's memory and its all-gather, and bf16's 8-bit mantissa keeps images in [-1, 1]
    to within 2^-8, below the 1/127.5 step of the 8-bit images they were refined from."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def device_memory(device: torch.device) -> int:
    """Bytes of memory `device` has in all (a GPU's, or the host's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class RunModels:
    """Built on every rank with identical initial weights (the seed, not DDP's broadcast),
    then, when resuming, loaded from the checkpoint part by part."""

    def __init__(
        self,
        cfg: Config,
        runtime: Runtime,
        image_shape: tuple[int, int, int],
        image_dtype: str,
        resume: ResumePoint | None,
        update_if: Callable[[torch.Tensor], bool] | None,
    ) -> None:
        rt, device = runtime, runtime.device
        torch.manual_seed(cfg.schedule.seed)
        refiner, discriminator = build_models(cfg, image_shape[0])
        if resume is not None:
            resume.load_weights(refiner, discriminator, image_shape)
            resume.note_changes(cfg.replace(mixed_precision=rt.precision))
        memory = torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format
        self.refiner = refiner.to(device, memory_format=memory)
        self.discriminator = discriminator.to(device, memory_format=memory)
        ema = EMA(self.refiner, cfg.optim.ema_halflife) if cfg.optim.ema_halflife > 0 else None
        if ema is not None and resume is not None:
            resume.load_ema(ema)
        opt_r = make_optimizer(cfg, self.refiner.parameters(), cfg.optim.lr_r, device)
        opt_d = make_optimizer(cfg, self.discriminator.parameters(), cfg.optim.lr_d, device)
        refiner_ddp = wrap_ddp(self.refiner, device, rt.world)
        discriminator_ddp = wrap_ddp(self.discriminator, device, rt.world)
        # Bytes handed to collectives, measured rather than assumed.
        self.comm = CommCounter()
        if rt.world > 1:
            refiner_ddp.register_comm_hook(None, self.comm.ddp_hook("r_grads"))
            discriminator_ddp.register_comm_hook(None, self.comm.ddp_hook("d_grads"))
        self.sharded = (
            cfg.history.enabled and history_layout(cfg.history.mode, rt.world) == "sharded"
        )
        self.history = (
            self._history(cfg, rt, image_shape, image_dtype) if cfg.history.enabled else None
        )
        if resume is not None:
            resume.load_optimizers(opt_r, opt_d)
            if self.history is not None:
                resume.load_history(self.history, sharded=self.sharded, rank=rt.rank)
            resume.load_rng(rt.rank)
        r_steps = resume.counters["r_steps"] if resume is not None else 0
        self.step = SimGANStep(
            refiner_ddp, discriminator_ddp, opt_r, opt_d,
            raw_refiner=self.refiner, raw_discriminator=self.discriminator,
            psi=PSI[cfg.optim.psi], lambda_reg=cfg.optim.lambda_reg,
            adversarial=cfg.discriminator.adversarial,
            history=self.history, sharded_history=self.sharded,
            gather=self.comm.counted("d_history", rt.accelerator.gather),
            rank=rt.rank, world_size=rt.world, precision=rt.precision,
            scaler=torch.amp.GradScaler(device.type, enabled=rt.precision == "fp16"),
            noise_channels=cfg.refiner.noise, noise_seed=cfg.schedule.seed, ema=ema,
            r_steps=r_steps, channels_last=cfg.runtime.channels_last,
            compile=cfg.runtime.compile, compile_mode=cfg.runtime.compile_mode, update_if=update_if,
            # A drop-out to the farthest depth around costs no self-regularisation.
            free_target=self.refiner.output.drop_target if cfg.refiner.dropout else None,
        )  # fmt: skip
        if resume is not None:
            self.step.load_state_dict(resume.step_state)

    @staticmethod
    def _history(
        cfg: Config, rt: Runtime, image_shape: tuple[int, ...], image_dtype: str
    ) -> HistoryBuffer:
        capacity, seed = cfg.history.size, cfg.schedule.seed
        if cfg.history.enabled and history_layout(cfg.history.mode, rt.world) == "sharded":
            capacity = cfg.history.size // rt.world
            seed = cfg.schedule.seed * 1_000_003 + rt.rank  # each rank draws its own slots
            if capacity < cfg.schedule.batch_size:
                raise ValueError(
                    f"--history-size {cfg.history.size} sharded over {rt.world} ranks leaves "
                    f"{capacity} slots per rank, fewer than --batch-size "
                    f"{cfg.schedule.batch_size}; make it larger or use --history-mode replicated"
                )
        dtype = history_dtype(rt.precision)
        need = capacity * math.prod(image_shape) * dtype.itemsize
        have = device_memory(rt.device)
        if need > have:
            raise ValueError(
                f"--history-size {cfg.history.size} needs {need / 2**30:,.1f} GiB for its "
                f"images on {rt.device.type}, more than its {have / 2**30:,.1f} GiB; make it "
                "smaller"
            )
        # Rounded to the data's own codes, so checkpoints store them (distsim.gan.history).
        levels = CODE_LEVELS.get(image_dtype)
        levels = levels if levels is not None and codes_fit(levels, dtype) else None
        return HistoryBuffer(
            capacity, image_shape, seed=seed, device=rt.device, dtype=dtype, levels=levels
        )
