"""Train a SimGAN refiner: `accelerate launch distsim/train.py [--preset eyes] [flags]`.

Algorithm 1 of Shrivastava et al. 2017, in three phases counted by one global step:
  1. pretrain_r_steps refiner steps on self-regularisation only,
  2. pretrain_d_steps discriminator steps against that refiner,
  3. `steps` iterations of K_g refiner steps then K_d discriminator steps.

The updates themselves are in step.py; this module is the loop around them (phases, logging,
image grids, checkpoints, stop signals and the guards that keep a multi-rank run honest), and
the only module that talks to Accelerate. Models, losses, the history buffer and the data
pipeline take ranks, devices and seeds as arguments.
"""

from __future__ import annotations

import dataclasses
import inspect
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
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.utils.tensorboard import SummaryWriter

from distsim import data
from distsim.checkpoint import (
    best_checkpoint,
    build_models,
    find_resume,
    latest_checkpoint,
    load_state,
    load_weights,
    read_json,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from distsim.checkpoint import image_shape as checkpoint_image_shape
from distsim.config import Config, load_config, resolve_given
from distsim.data.pixels import CODE_LEVELS, to_unit_range
from distsim.gan.ema import EMA
from distsim.gan.history import HistoryBuffer, codes_fit, deal, merged_images
from distsim.gan.losses import PSI
from distsim.gan.step import D_STATS, D_STATS_HISTORY, R_STATS, SimGANStep
from distsim.guards import (
    CommCounter,
    StopRequest,
    check_rank_consistency,
    named_state,
    tensor_checksums,
)
from distsim.images import depth_grid, grid, plot_curves, save_png, titled
from distsim.realism import RealismProbe
from shards.cliutil import one_line
from shards.progress import Progress


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


class CheckpointError(OSError):
    """A checkpoint could not be written (a full disk, a read-only directory); the message is
    one line and says what was kept."""


# Config fields that decide the models' shapes: a resume cannot change them.
ARCHITECTURE = ("refiner_width", "refiner_blocks", "refiner_kernel", "refiner_noise",
                "refiner_output", "refiner_window", "disc_arch", "disc_widths")  # fmt: skip


@dataclass
class _Sums:
    total: torch.Tensor  # (k,) sums of the stacked statistics
    count: int
    first_bad: torch.Tensor  # (k,) int64: first step each was non-finite, -1 if never


@dataclass
class Meter:
    """Sums of the steps' stacked statistics, kept on the device and read only at log
    intervals: one add per step, one collective per log.

    It also remembers, per statistic, the first step at which it was not finite, without a
    host sync: ``first_nonfinite`` reads that at log and checkpoint steps.
    """

    groups: dict[tuple[str, ...], _Sums] = field(default_factory=dict)

    def add(self, step: int, names: tuple[str, ...], values: torch.Tensor) -> None:
        sums = self.groups.get(names)
        if sums is None:
            never = torch.full(values.shape, -1, dtype=torch.int64, device=values.device)
            sums = self.groups[names] = _Sums(torch.zeros_like(values), 0, never)
        sums.total += values
        sums.count += 1
        sums.first_bad = torch.where(~torch.isfinite(values) & (sums.first_bad < 0),
                                     step, sums.first_bad)  # fmt: skip

    def first_nonfinite(self, accelerator: Accelerator) -> tuple[list[str], int] | None:
        """(statistics, step) of the earliest step with a non-finite value on any rank."""
        if not self.groups:
            return None
        names = [n for group in self.groups for n in group]  # the same order on every rank
        never = torch.iinfo(torch.int64).max
        steps = torch.cat([s.first_bad for s in self.groups.values()])
        steps = torch.where(steps < 0, never, steps)
        earliest = _reduce_min(accelerator, steps).tolist()  # a host sync: interval steps only
        step = min(earliest)
        if step == never:
            return None
        bad = [n for n, s in zip(names, earliest, strict=True) if s == step]
        return list(dict.fromkeys(bad)), int(step)

    def pop(self, accelerator: Accelerator) -> dict[str, float]:
        """Mean of each statistic since the last pop, over steps and ranks."""
        if not self.groups:
            return {}
        groups = list(self.groups.items())
        local = torch.cat([s.total / s.count for _, s in groups])
        means = accelerator.reduce(local, reduction="mean").tolist()  # the one host sync
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        i = 0
        for names, s in groups:
            for name in names:
                sums[name] = sums.get(name, 0.0) + means[i] * s.count
                counts[name] = counts.get(name, 0) + s.count
                i += 1
        self.groups.clear()
        return {name: sums[name] / counts[name] for name in sorted(sums)}


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
            for domain in ("synthetic", cfg.builtin_real):
                paths.append(
                    data.ensure_builtin_shards(
                        domain,
                        cfg.builtin_count,
                        cfg.builtin_seed,
                        cache,
                        progress=cfg.progress,
                        sim=cfg.builtin_sim,
                        size=cfg.builtin_size,
                    )  # fmt: skip
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


def make_optimizer(
    cfg: Config, params: Iterator[torch.nn.Parameter], lr: float, device: torch.device
) -> Optimizer:
    if cfg.optimizer == "adam":
        # One fused kernel for all parameters on CUDA; foreach (a few batched ops) elsewhere.
        fused = device.type == "cuda"
        return torch.optim.Adam(params, lr=lr, betas=(cfg.adam_beta1, 0.999), fused=fused)
    return torch.optim.SGD(params, lr=lr)


def wrap_ddp(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """DDP over `world` ranks (the bare model for one). Built here rather than by Accelerate's
    prepare, which would also wrap forward in autocast and cast every output back to float32:
    the step does its own autocast and needs neither."""
    if world == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, **_NO_BUFFER_SYNC)


# No buffer broadcast in forward (R and D hold no buffers; the rank check compares weights).
# torch 2.13 renamed the flag, and its old name prints a FutureWarning on every rank.
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


# (rank, world_size, synthetic start, real start) -> endless image batches per domain, each
# (b, C, H, W). Replaces the shard loaders (tests feed the same global batches at any world
# size); the starts are the batches each rank already consumed (resume).
Streams = Callable[[int, int, int, int], tuple[Iterator[torch.Tensor], Iterator[torch.Tensor]]]
# What checkpoint.find_resume returns: the checkpoint to resume (None: fresh) and what it skipped.
Resume = tuple[Path | None, list[str]]

# Exit status of a run stopped by SIGTERM/SIGUSR1 after saving: not 0 (the run is not done),
# and distinct from errors (1, 2), so scripts can tell "resume me" from "broken".
EXIT_PREEMPTED = 3
# Warn when more than this fraction of refined pixels sits at tanh's limits over a log
# interval. Eyes have almost none there (0.02% of real ones); a collapsed refiner has all.
SATURATION_WARNING = 0.5


def set_gpu_kernels(*, deterministic: bool) -> None:
    """The fastest kernels (cuDNN autotuning, TF32 matrix units) by default; with
    `deterministic`, kernels that give the same bits on every run (cuBLAS needs its workspace
    fixed before its first call)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)


def history_layout(mode: str, world: int) -> str:
    """replicated or sharded for --history-mode `mode` on `world` ranks. auto: replicated up
    to 8 ranks (one node: the all-gather rides NVLink and costs a few percent, and runs stay
    exactly world-size invariant), sharded above (its traffic would grow with W over the
    network: BENCHMARKS.md, "Distributed scaling")."""
    if mode == "auto":
        return "replicated" if world <= 8 else "sharded"
    return "sharded" if world > 1 and mode == "sharded" else "replicated"


def precision_of(cfg: Config, accelerator: Accelerator) -> str:
    """The precision actually used: the flag, else what `accelerate launch` said."""
    return cfg.mixed_precision or str(accelerator.mixed_precision or "no")


def history_dtype(precision: str) -> torch.dtype:
    """Store (and exchange) buffered images in the training precision: under bf16 that halves
    the buffer's memory and its all-gather, and bf16's 8-bit mantissa keeps images in [-1, 1]
    to within 2^-8, below the 1/127.5 step of the 8-bit images they were refined from."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def config_changes(saved: Config, now: Config) -> list[str]:
    skip = {"run_dir", "resume", "progress"}
    # Configs before the precision used was recorded say "" for full precision.
    same = {("", "no"), ("no", "")}
    return [
        f"{f.name} {getattr(saved, f.name)!r} -> {getattr(now, f.name)!r}"
        for f in dataclasses.fields(Config)
        if f.name not in skip
        and getattr(saved, f.name) != getattr(now, f.name)
        and (getattr(saved, f.name), getattr(now, f.name)) not in same
    ]


class Run:
    """One training run, set up: the step, the data streams, the outputs and the guards.

    ``training_loop`` drives it; its methods are what happens between updates (logging,
    grids, checks, checkpoints).
    """

    def __init__(
        self,
        cfg: Config,
        accelerator: Accelerator | None,
        streams: Streams | None,
        resume: Resume | None = None,
    ) -> None:
        cfg.validate()
        if cfg.resume == "auto" and not cfg.run_dir:
            raise ValueError("--resume auto needs --run-dir: the run directory to resume in")
        if accelerator is None:
            accelerator = make_accelerator(cfg.mixed_precision, cfg.dist_timeout)
        self.cfg, self.accelerator = cfg, accelerator
        self.precision = precision_of(cfg, accelerator)
        if self.precision == "fp16" and accelerator.device.type != "cuda":
            raise ValueError(
                "--mixed-precision fp16 needs a CUDA device (Accelerate runs CPU fp16 as "
                "float32 with no loss scaling); use bf16 or no on the CPU"
            )
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.device = device = accelerator.device
        if device.type == "cuda":
            set_gpu_kernels(deterministic=cfg.deterministic)
        # Control messages (stop requests, consistency checksums) go over gloo on the CPU, so
        # agreeing on them never waits on the GPU's stream.
        self.control = (
            torch.distributed.new_group(backend="gloo", timeout=timedelta(seconds=cfg.dist_timeout))
            if self.world > 1
            else None
        )

        # One run directory for all ranks: the main process names it.
        names = [cfg.run_dir or default_run_dir(cfg)]
        broadcast_object_list(names)
        cfg.run_dir = names[0]
        self.run_dir = Path(cfg.run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"{self.run_dir}: --run-dir exists and is not a directory")
        # Found already when the command line's settings were resolved: verifying every
        # checkpoint's checksums again would read them all a second time.
        resume_from, skipped = (
            resume if resume is not None else find_resume(cfg.resume, self.run_dir)
        )
        # Kept by retention until this run has saved a checkpoint of its own.
        self.resumed_from = resume_from

        self.syn_dir, self.real_dir, manifest = prepare_data(cfg, accelerator)
        self.image_shape = tuple(manifest.image_shape)  # (C, H, W)
        self.image_dtype = manifest.image_dtype
        # uint16 shards are depth crops (shards.depth): colour grids, invalid pixels filled.
        self.depth = manifest.image_dtype == "uint16"
        channels = self.image_shape[0]
        if cfg.psi == "channel_mean" and channels == 1:
            raise ValueError("--psi channel_mean needs colour images; these shards have 1 channel")

        # Identical initial weights on every rank without relying on DDP's broadcast.
        torch.manual_seed(cfg.seed)
        refiner, discriminator = build_models(cfg, channels)
        state: dict[str, Any] | None = None
        self.notes: list[str] = [f"skipped {why}" for why in skipped]
        if resume_from is not None:
            saved = load_config(resume_from / "config.json")
            changed = [k for k in ARCHITECTURE if getattr(saved, k) != getattr(cfg, k)]
            if changed:
                k = changed[0]
                raise ValueError(
                    f"{resume_from}: trained with --{k.replace('_', '-')} {getattr(saved, k)}, "
                    f"this run asks for {getattr(cfg, k)}; the architecture cannot change on "
                    "resume (start a new --run-dir)"
                )
            if checkpoint_image_shape(resume_from) != self.image_shape:
                raise ValueError(
                    f"{resume_from}: trained on images {checkpoint_image_shape(resume_from)}, "
                    f"these shards hold {self.image_shape}"
                )
            load_weights(resume_from, refiner, discriminator)
            state = load_state(resume_from)
            resolved = dataclasses.replace(cfg, mixed_precision=self.precision)
            self.notes += config_changes(saved, resolved)
            if state["world_size"] != self.world:
                self.notes.append(
                    f"world size {state['world_size']} -> {self.world}: global batch "
                    f"{state['world_size'] * cfg.batch_size} -> {self.world * cfg.batch_size}, "
                    "each rank's data stream and RNG start afresh (the buffer and weights carry "
                    "over)"
                )
        memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.r_raw = refiner.to(device, memory_format=memory)
        self.d_raw = discriminator.to(device, memory_format=memory)
        ema = EMA(self.r_raw, cfg.ema_halflife) if cfg.ema_halflife > 0 else None
        if ema is not None and resume_from is not None:
            if (resume_from / "refiner_ema.safetensors").is_file():
                load_weights(resume_from, ema.model, None, refiner_file="refiner_ema")
            else:
                self.notes.append("the checkpoint has no refiner average: it starts from R")
        opt_r = make_optimizer(cfg, self.r_raw.parameters(), cfg.lr_r, device)
        opt_d = make_optimizer(cfg, self.d_raw.parameters(), cfg.lr_d, device)
        refiner_ddp = wrap_ddp(self.r_raw, device, self.world)
        discriminator_ddp = wrap_ddp(self.d_raw, device, self.world)
        self.comm = CommCounter()
        if self.world > 1:
            refiner_ddp.register_comm_hook(None, self.comm.ddp_hook("r_grads"))
            discriminator_ddp.register_comm_hook(None, self.comm.ddp_hook("d_grads"))
        self.sharded = cfg.history and history_layout(cfg.history_mode, self.world) == "sharded"
        self.history = self._make_history() if cfg.history else None
        self.counters = Counters()
        if state is not None:
            opt_r.load_state_dict(state["opt_r"])
            opt_d.load_state_dict(state["opt_d"])
            self.counters = Counters(**state["counters"])
            if self.history is not None:
                self._resume_history(state)
            if state["world_size"] == self.world:
                set_rng_state(state["rng"][self.rank])
        self.step = SimGANStep(
            refiner_ddp, discriminator_ddp, opt_r, opt_d,
            raw_refiner=self.r_raw, raw_discriminator=self.d_raw,
            psi=PSI[cfg.psi], lambda_reg=cfg.lambda_reg, adversarial=cfg.adversarial,
            history=self.history, sharded_history=self.sharded,
            gather=self.comm.counted("d_history", accelerator.gather),
            rank=self.rank, world_size=self.world, precision=self.precision,
            scaler=torch.amp.GradScaler(device.type, enabled=self.precision == "fp16"),
            noise_channels=cfg.refiner_noise, noise_seed=cfg.seed, ema=ema,
            r_steps=self.counters.r_steps, channels_last=cfg.channels_last,
            compile=cfg.compile, compile_mode=cfg.compile_mode,
            update_if=self._finite_everywhere if cfg.on_nonfinite == "skip" else None,
            # A drop-out to the farthest depth around costs no self-regularisation.
            free_target=self.r_raw.output.drop_target if cfg.refiner_dropout else None,
        )  # fmt: skip
        if state is not None:
            self.step.load_state_dict(state.get("step", {}) | {"scaler": state.get("scaler")})

        # Separate streams per domain, images only: SimGAN never reads a label. The loaders
        # never go through accelerator.prepare (it would re-shard or broadcast them). Each
        # restarts where this rank left off: R and D steps each take one synthetic batch, D
        # steps one real batch.
        c = self.counters
        syn_start, real_start = c.r_steps + c.d_steps, c.d_steps
        self.skipped = {domain: {"blocks": 0, "images": 0} for domain in ("synthetic", "real")}
        self.loaders: dict[str, data.ShardLoader] = {}
        if streams is None:
            starts = {"synthetic": syn_start, "real": real_start}
            dirs = {"synthetic": self.syn_dir, "real": self.real_dir}
            for i, domain in enumerate(("synthetic", "real")):
                self.loaders[domain] = data.make_loader(
                    dirs[domain], cfg.batch_size, self.rank, self.world, cfg.seed * 2 + i,
                    cfg.num_workers, labels=(), on_error=cfg.on_bad_shard, start=starts[domain],
                    pin_memory=device.type == "cuda",
                )  # fmt: skip
                self.skipped[domain]["shards"] = len(self.loaders[domain].dataset.skipped_shards)
            self.syn = batches(self.loaders["synthetic"], device, self.skipped["synthetic"])
            self.real = batches(self.loaders["real"], device, self.skipped["real"])
        else:
            syn_it, real_it = streams(self.rank, self.world, syn_start, real_start)
            self.syn = (to_unit_range(x.to(device)) for x in syn_it)
            self.real = (to_unit_range(x.to(device)) for x in real_it)

        self.writer: SummaryWriter | None = None
        if accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            resolved = dataclasses.replace(cfg, mixed_precision=self.precision)
            (self.run_dir / "config.json").write_text(resolved.to_json())
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
            if resume_from is not None:
                print(f"resuming from {resume_from} at step {c.step}", flush=True)
                for note in self.notes:
                    print(f"  changed: {note}", flush=True)
        # The same images in every grid, and whatever the resume point: the first of each set.
        # Depth grids show the real crops as measured, invalid pixels marked (D sees them
        # filled, see distsim.data.depth).
        firsts = [data.first_images(d, cfg.grid_rows, on_error=cfg.on_bad_shard)
                  for d in (self.syn_dir, self.real_dir)]  # fmt: skip
        self.grid_syn, self.grid_real = (to_unit_range(x).to(device) for x in firsts)
        self.grid_real_valid = firsts[1] != 0 if self.depth else None
        # The label-free realism score at each checkpoint: fixed images, scored on rank 0.
        self.probe: RealismProbe | None = None
        if cfg.realism_images > 0 and accelerator.is_main_process:
            syn, real = (
                to_unit_range(data.first_images(d, cfg.realism_images, on_error=cfg.on_bad_shard))
                for d in (self.syn_dir, self.real_dir)
            )
            self.probe = RealismProbe(syn.to(device), real.to(device), seed=cfg.seed)
        self.realism_seconds = 0.0
        self.meter = Meter()
        self.stop = StopRequest(self.control).install()
        self.log_clock = time.perf_counter()
        self.last_log = dataclasses.replace(self.counters)
        self.warned_saturation = False

    def _make_history(self) -> HistoryBuffer:
        cfg = self.cfg
        capacity, seed = cfg.history_size, cfg.seed
        if self.sharded:
            capacity = cfg.history_size // self.world
            seed = cfg.seed * 1_000_003 + self.rank  # each rank draws its own slots
            if capacity < cfg.batch_size:
                raise ValueError(
                    f"--history-size {cfg.history_size} sharded over {self.world} ranks leaves "
                    f"{capacity} slots per rank, fewer than --batch-size {cfg.batch_size}; make "
                    "it larger or use --history-mode replicated"
                )
        dtype = history_dtype(self.precision)
        # Rounded to the data's own codes, so checkpoints store them (distsim/history.py).
        levels = CODE_LEVELS.get(self.image_dtype)
        levels = levels if levels is not None and codes_fit(levels, dtype) else None
        return HistoryBuffer(
            capacity, self.image_shape, seed=seed, device=self.device, dtype=dtype, levels=levels
        )

    def _resume_history(self, state: dict[str, Any]) -> None:
        """The checkpoint's buffer, exactly when its layout is this run's; re-dealt otherwise."""
        assert self.history is not None
        shards = state.get("history_shards")
        if shards is None and state["history"] is None:
            self.notes.append("the checkpoint has no history buffer: it starts empty")
            return
        saved = shards if shards is not None else [state["history"]]
        if shards is None and not self.sharded:
            self.history.load_state_dict(state["history"])  # a global buffer: any world size
        elif shards is not None and self.sharded and len(shards) == self.world:
            self.history.load_state_dict(shards[self.rank])
        else:
            rank, world = (self.rank, self.world) if self.sharded else (0, 1)
            deal(merged_images(saved), self.history, rank, world)
            before = f"sharded over {len(shards)} ranks" if shards is not None else "replicated"
            now = f"sharded over {self.world} ranks" if self.sharded else "replicated"
            self.notes.append(f"history buffer {before} -> {now}: its images were re-dealt")
        if self.history.levels is not None and any("codes" not in s for s in saved):
            self.notes.append(
                "history buffer saved at full precision (before buffers held the data's "
                f"{self.history.levels + 1} codes): its images were rounded to them"
            )

    # --- the updates, with their guards ------------------------------------------------------

    def refiner_steps(self, n: int, *, adversarial: bool, check: bool) -> None:
        d_before = self._d_checksum() if check and adversarial else None
        lr = self.cfg.lr_r if adversarial else self.cfg.lr_r_pretrain
        for group in self.step.opt_r.param_groups:
            group["lr"] = lr
        for _ in range(n):
            skipped = self.counters.skipped
            stats = self.step.refiner_step(next(self.syn), adversarial)
            self.counters.r_steps += 1
            if self.counters.skipped == skipped:  # a skipped update (non-finite) is not logged
                self.meter.add(self.counters.step + 1, R_STATS, stats)
        if d_before is not None and not torch.equal(d_before, self._d_checksum()):
            raise RuntimeError(
                f"rank {self.rank}: a refiner step changed D at step {self.counters.step + 1}"
            )

    def discriminator_steps(self, n: int) -> None:
        for _ in range(n):
            skipped = self.counters.skipped
            stats = self.step.discriminator_step(next(self.syn), next(self.real))
            self.counters.d_steps += 1
            names = D_STATS_HISTORY if stats.shape[0] == len(D_STATS_HISTORY) else D_STATS
            if self.counters.skipped == skipped:
                # Numbered as checkpoints and logs number it: the step being taken.
                self.meter.add(self.counters.step + 1, names, stats)

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        # --on-nonfinite skip only: a host sync, and every rank takes the same decision.
        ok = torch.isfinite(loss.detach()).all().float()
        finite = bool(self.accelerator.reduce(ok, reduction="sum").item() == self.world)
        if not finite:
            self.counters.skipped += 1
        return finite

    def _d_checksum(self) -> torch.Tensor:
        return tensor_checksums(named_state("discriminator", self.d_raw))

    # --- between updates ---------------------------------------------------------------------

    def log(self, step: int, phase: str) -> dict[str, float]:
        self.check_finite(step)
        stats = self.meter.pop(self.accelerator)
        c, since = self.counters, self.last_log
        if self.cfg.on_bad_shard == "skip":
            keys = [(d, k) for d in sorted(self.skipped) for k in sorted(self.skipped[d])]
            total = self.accelerator.reduce(
                torch.tensor([self.skipped[d][k] for d, k in keys], device=self.device,
                             dtype=torch.float64), reduction="sum",
            ).tolist()  # fmt: skip
            stats |= {f"data/skipped_{k}_{d}": v for (d, k), v in zip(keys, total, strict=True)}
        sent = self.comm.pop()
        self.last_log = dataclasses.replace(c)
        self._warn_if_saturated(step, stats)
        if self.writer is None:
            return stats
        for k, v in stats.items():
            tag = k if phase == "adversarial" or k.startswith("data/") else f"{phase}/{k}"
            self.writer.add_scalar(tag, v, step)
        seconds = time.perf_counter() - self.log_clock
        self.log_clock = time.perf_counter()
        steps_r, steps_d = c.r_steps - since.r_steps, c.d_steps - since.d_steps
        # Synthetic images through R per second, all ranks: the refiner's throughput.
        images = (steps_r + steps_d) * self.cfg.batch_size * self.world
        self.writer.add_scalar("images_per_second", images / seconds, step)
        # Bytes this (main) rank handed to collectives, per R or D step (one process: none).
        for label, nbytes in sent.items() if self.world > 1 else ():
            per = steps_r if label.startswith("r_") else steps_d
            if per:
                self.writer.add_scalar(f"comm/{label}_bytes_per_step", nbytes / per, step)
        self.writer.add_scalar("nonfinite_skipped", c.skipped, step)
        if self.history is not None:
            self.writer.add_scalar("history_filled", len(self.history), step)
        return stats

    def _warn_if_saturated(self, step: int, stats: dict[str, float]) -> None:
        fraction = stats.get("r_saturated", 0.0)
        if fraction <= SATURATION_WARNING or self.warned_saturation:
            return
        self.warned_saturation = True  # once: a collapsed run stays collapsed
        if self.accelerator.is_main_process:
            # A local-range refiner's clamp passes gradients through, so what is wrong there is
            # the picture (pixels pushed to a plane: a depth hand erased), not the gradients.
            if self.cfg.refiner_output == "tanh":
                why = "so the refiner's tanh has saturated and its gradients vanish; it seldom"
                why += " recovers"
            else:
                why = "pushed to the output's limits (with depth: hands erased to the far plane)"
            print(
                f"distsim.train: warning: step {step}: {100 * fraction:.0f}% of refined pixels "
                f"are at -1 or 1, {why} (see {self.run_dir / 'images'}). A lower --lr-d or "
                "--lr-r, or a larger --lambda-reg, may help.",
                file=sys.stderr, flush=True,
            )  # fmt: skip

    def save_grid(self, step: int) -> None:
        refined = self.step.refine(self.grid_syn)
        which = "refined (weight average)" if self.step.ema is not None else "refined"
        if self.depth:
            columns = [self.grid_syn, refined, self.grid_real]
            picture = depth_grid(columns, [None, None, self.grid_real_valid])
            caption = f"step {step}  depth: near dark, far yellow; magenta: no measurement"
        else:
            picture = grid([self.grid_syn, refined, self.grid_real])
            caption = f"step {step}"
        picture = titled(picture, ["synthetic", which, "real"], caption)
        save_png(picture, self.run_dir / "images" / f"step-{step:08d}.png")
        assert self.writer is not None
        self.writer.add_image("synthetic|refined|real", picture, step, dataformats="HWC")

    def save_curves(self) -> Path | None:
        """images/losses.png from everything this run directory's TensorBoard logs hold
        (resumed runs included)."""
        assert self.writer is not None
        self.writer.flush()
        events = EventAccumulator(str(self.run_dir / "tensorboard"), size_guidance={"scalars": 0})
        events.Reload()
        wanted = (*R_STATS, *D_STATS_HISTORY)
        series: dict[str, dict[int, float]] = {}
        for tag in events.Tags()["scalars"]:
            name = tag.split("/")[-1]
            if name in wanted:
                for e in events.Scalars(tag):
                    series.setdefault(name, {})[e.step] = e.value
        if not series:
            return None
        cfg = self.cfg
        boundaries = [cfg.pretrain_r_steps, cfg.pretrain_r_steps + cfg.pretrain_d_steps]
        return plot_curves({k: sorted(v.items()) for k, v in series.items()},
                           self.run_dir / "images" / "losses.png", phases=boundaries)  # fmt: skip

    def summarise(self, stats: dict[str, float], first_step: int, seconds: float) -> None:
        """What a person wants to know when the run ends, in a few lines."""
        total = self.cfg.pretrain_r_steps + self.cfg.pretrain_d_steps + self.cfg.steps
        lines = [f"done: steps {first_step}-{total} in {seconds:.1f}s; run directory "
                 f"{self.run_dir}"]  # fmt: skip
        shown = ("r_adv", "r_reg", "d_loss")
        if any(k in stats for k in shown):
            lines.append("  last losses: " + ", ".join(
                f"{k} {stats[k]:.3f}" for k in shown if k in stats))  # fmt: skip
        if "d_acc" in stats:
            lines.append(
                f"  D tells current refined images from real ones {100 * stats['d_acc']:.0f}% of "
                f"the time (50%: chance; real {100 * stats['d_acc_real']:.0f}%, refined "
                f"{100 * stats['d_acc_refined']:.0f}%)"
            )
        best = best_checkpoint(self.run_dir)
        if best is not None:
            score = read_json(best / "meta.json")["realism"]
            lines.append(
                f"  realism: a fresh classifier tells refined from real "
                f"{100 * score['c2st_refined']:.0f}% of the time at {best.name}, the best "
                f"checkpoint (unrefined synthetic: {100 * score['c2st_synthetic']:.0f}%; 50%: "
                f"indistinguishable); scoring took {self.realism_seconds:.0f}s"
            )
        grids = sorted((self.run_dir / "images").glob("step-*.png"))
        if grids:
            lines.append(f"  newest grid: {grids[-1]}")
        curves = self.save_curves()
        if curves is not None:
            lines.append(f"  curves: {curves}")
        newest = latest_checkpoint(self.run_dir)
        if newest is not None:
            lines.append(f"  newest checkpoint: {newest}")
        lines.append(f"  TensorBoard: tensorboard --logdir {self.run_dir / 'tensorboard'}")
        print("\n".join(lines), flush=True)

    def score_realism(self, step: int) -> dict[str, float] | None:
        """The realism scores of the refiner now (rank 0; None elsewhere, when off, and
        before adversarial training, when R is still the identity: its score would be the
        synthetic reference)."""
        if self.probe is None or step <= self.cfg.pretrain_r_steps + self.cfg.pretrain_d_steps:
            return None
        started = time.perf_counter()
        refined = torch.cat([self.step.refine(x) for x in self.probe.synthetic.split(256)])
        scores = self.probe.score(refined)
        self.realism_seconds += time.perf_counter() - started
        if self.writer is not None:
            for k, v in scores.items():
                self.writer.add_scalar(f"realism/{k}", v, step)
            self.writer.add_scalar("realism/seconds_total", self.realism_seconds, step)
        return scores

    def check_finite(self, step: int) -> None:
        bad = self.meter.first_nonfinite(self.accelerator)
        if bad is not None:
            names, at = bad
            raise FloatingPointError(
                f"non-finite {', '.join(names)} at step {at} (checked at step {step}); the last "
                f"checkpoint in {self.run_dir / 'checkpoints'} is untouched (or pass "
                "--on-nonfinite skip)"
            )

    def check_consistency(self, step: int) -> None:
        tensors = named_state("refiner", self.r_raw) | named_state("discriminator", self.d_raw)
        try:
            check_rank_consistency(tensors, self.world, self.control)
        except RuntimeError as err:
            raise RuntimeError(f"step {step}: {err}") from None

    def checkpoint(self, step: int) -> Path | None:
        self.check_finite(step)
        self.check_consistency(step)
        rngs: list[Any] = [None] * self.world
        if self.world > 1:
            torch.distributed.all_gather_object(rngs, rng_state(), group=self.control)
        else:
            rngs = [rng_state()]
        history: Any = self.history.state_dict() if self.history is not None else None
        if self.sharded:  # every rank's own slots, saved together by rank 0
            shards: list[Any] = [None] * self.world
            torch.distributed.all_gather_object(shards, history, group=self.control)
            history = shards
        path, error = None, None
        realism = self.score_realism(step)
        if self.accelerator.is_main_process:
            step_state = self.step.state_dict()
            state = {
                "opt_r": self.step.opt_r.state_dict(),
                "opt_d": self.step.opt_d.state_dict(),
                "scaler": step_state.pop("scaler"),
                "step": step_state,
                "history": history if not self.sharded else None,
                "history_shards": history if self.sharded else None,
                "counters": dataclasses.asdict(self.counters),
                "rng": rngs,
                "world_size": self.world,
            }
            try:
                path = save_checkpoint(
                    self.run_dir, step, refiner=self.r_raw, discriminator=self.d_raw,
                    refiner_ema=self.step.ema.model if self.step.ema is not None else None,
                    state=state,
                    config=dataclasses.replace(self.cfg, mixed_precision=self.precision),
                    image_shape=self.image_shape, keep=self.cfg.keep_checkpoints,
                    realism=realism, protect=self.resumed_from,
                )  # fmt: skip
            except OSError as err:
                previous = latest_checkpoint(self.run_dir)
                kept = (f"the previous checkpoint {previous} is intact (--resume auto goes on "
                        "from it)" if previous else "no earlier checkpoint exists")  # fmt: skip
                error = (f"could not write checkpoint step {step} in "
                         f"{self.run_dir / 'checkpoints'} ({one_line(err)}); {kept}")  # fmt: skip
        if self.world > 1:  # every rank learns whether rank 0 could save, and stops if not
            box = [error]
            broadcast_object_list(box)
            error = box[0]
        if error is not None:
            raise CheckpointError(error)
        self.resumed_from = None  # a newer checkpoint exists now
        self.accelerator.wait_for_everyone()
        return path

    def close(self) -> None:
        self.stop.uninstall()
        for loader in self.loaders.values():
            loader.close()
        if self.writer is not None:
            self.writer.close()


def work_units(cfg: Config, step: int) -> int:
    """Updates (R or D steps) in the first `step` steps: what the progress bar counts, since
    an adversarial step (K_g + K_d updates) is several times the work of a pretraining one."""
    pre = cfg.pretrain_r_steps + cfg.pretrain_d_steps
    return min(step, pre) + max(0, step - pre) * (cfg.k_g + cfg.k_d)


def training_loop(
    cfg: Config,
    accelerator: Accelerator | None = None,
    *,
    streams: Streams | None = None,
    resume: Resume | None = None,
) -> Path:
    """Run SimGAN training as configured; returns the run directory.

    Raises Preempted after saving a checkpoint if SIGTERM or SIGUSR1 arrived, and
    FloatingPointError naming the step and loss if a loss went non-finite (--on-nonfinite
    stop), leaving the last checkpoint as it was. `resume`: what ``find_resume`` returned for
    `cfg`, when the caller has it.
    """
    run = Run(cfg, accelerator, streams, resume)
    counters, main_process = run.counters, run.accelerator.is_main_process
    total = cfg.pretrain_r_steps + cfg.pretrain_d_steps + cfg.steps
    bar = Progress(work_units(cfg, total), "train", unit="updates",
                   initial=work_units(cfg, counters.step),
                   enabled=cfg.progress and main_process)  # fmt: skip
    started, first_step = time.perf_counter(), counters.step
    stats: dict[str, float] = {}
    try:
        while counters.step < total:
            phase = counters.phase(cfg)
            check = cfg.check_every > 0 and (counters.step + 1) % cfg.check_every == 0
            if phase == "pretrain_r":
                run.refiner_steps(1, adversarial=False, check=check)
            elif phase == "pretrain_d":
                run.discriminator_steps(1)
            else:
                run.refiner_steps(cfg.k_g, adversarial=True, check=check)
                run.discriminator_steps(cfg.k_d)
            counters.step += 1
            step = counters.step
            bar.update(work_units(cfg, step) - work_units(cfg, step - 1))

            if step % cfg.log_every == 0 or step == total:
                stats = run.log(step, phase)
                bar.set_postfix({"step": f"{step}/{total}"}
                                | {k: f"{v:.3f}" for k, v in stats.items()})  # fmt: skip
                bar.set_description(phase)
            if check:
                run.check_consistency(step)
            if main_process and (step % cfg.image_every == 0 or step == total):
                run.save_grid(step)
            signum = run.stop.poll()
            if step % cfg.ckpt_every == 0 or step == total or signum:
                path = run.checkpoint(step)
            if signum:
                name = signal.Signals(signum).name
                raise Preempted(
                    f"stopped by {name} after step {step}; checkpoint "
                    f"{path or latest_checkpoint(run.run_dir)}; continue with --resume auto "
                    f"--run-dir {run.run_dir}"
                )
    finally:
        bar.close()
        run.close()
    run.accelerator.wait_for_everyone()
    if main_process:
        run.summarise(stats, first_step, time.perf_counter() - started)
    return run.run_dir


def settings_for_resume(cfg: Config, given: set[str]) -> tuple[Config, Resume | None]:
    """A resume continues the run it resumes: every setting the command line did not give
    comes from that checkpoint's config, not from a preset (leaving a flag off must not
    change the run: once it reset --keep-checkpoints and deleted the checkpoints resumed
    from). A fresh start, or --resume auto with no checkpoint yet, is `cfg` as it is. Also
    returns the checkpoint found, for ``training_loop`` (None: nothing was looked up)."""
    if not cfg.resume or (cfg.resume == "auto" and not cfg.run_dir):
        return cfg, None
    found = find_resume(cfg.resume, cfg.run_dir)
    ckpt = found[0]
    if ckpt is None:
        return cfg, found
    saved = load_config(ckpt / "config.json")
    keep = given | {"run_dir", "resume", "progress"}
    if "mixed_precision" not in given:
        keep.add("mixed_precision")  # what this launch says (accelerate launch's flag)
    inherited = dataclasses.replace(saved, **{k: getattr(cfg, k) for k in keep})
    inherited.validate()
    return inherited, found


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, given = resolve_given(argv)
        cfg, found = settings_for_resume(cfg, given)
        training_loop(cfg, resume=found)
    except Preempted as stopped:
        print(f"distsim.train: {stopped}", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("distsim.train: interrupted; no checkpoint was saved for the steps since the last "
              "one", file=sys.stderr)  # fmt: skip
        return 130
    except (ValueError, OSError, FloatingPointError) as err:
        print(f"distsim.train: error: {one_line(err)}", file=sys.stderr)
        return 2
    finally:
        # Left to interpreter shutdown, gloo's threads can abort the process at exit
        # ("terminate called without an active exception").
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except KeyboardInterrupt:  # a second Ctrl-C after the checkpoint, while shutting down
        code = 130
    sys.exit(code)
