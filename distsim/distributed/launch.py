"""The launch: an Accelerator for however many processes were started, the GPU kernels, DDP
without Accelerate's wrappers, and the small collectives the loop needs.

This is the one module that reads the launch environment (``WORLD_SIZE``, set by
``accelerate launch``, torchrun and the SLURM scripts in ``launch/``); everything else gets
rank and world size as arguments.
"""

from __future__ import annotations

import inspect
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
from torch.nn.parallel import DistributedDataParallel


def make_accelerator(mixed_precision: str = "", timeout_s: int = 600) -> Accelerator:
    """Accelerator for this launch. Launched as W processes (torchrun, `accelerate launch
    --multi_gpu`) on a machine without CUDA, Accelerate would silently run W independent
    single-process trainings unless told to use the CPU: then it uses gloo.

    `timeout_s` bounds how long a collective waits for a rank that died: the survivors then
    fail instead of hanging (the launcher usually stops them sooner)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    asked = requested_processes()
    if asked is not None and asked != launched:
        print(
            f"distsim: warning: accelerate launch was asked for --num_processes {asked} but "
            f"started {launched} process{'es' if launched > 1 else ''}; without a config file "
            "it needs --multi_gpu for several (on a machine without CUDA distsim then runs them "
            "on the CPU over gloo), or use --config_file accelerate_config.yaml",
            file=sys.stderr, flush=True,
        )  # fmt: skip
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


def requested_processes() -> int | None:
    """The --num_processes the `accelerate launch` that started this process was given, read
    from the launcher's command line (None: not started so, or not seen). A launch without a
    config file and without --multi_gpu starts one process whatever it was asked."""
    try:
        cmdline = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in cmdline]
    if not any(a.endswith(("accelerate", "accelerate.commands.launch")) for a in args[:3]):
        return None
    for i, arg in enumerate(args):
        value = None
        if arg in ("--num_processes", "--num-processes") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(("--num_processes=", "--num-processes=")):
            value = arg.partition("=")[2]
        if value is not None:
            return int(value) if value.isdigit() else None
    return None


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


def control_group(world: int, timeout_s: int) -> torch.distributed.ProcessGroup | None:
    """A gloo group over every rank for control messages (stop requests, consistency
    checksums), so agreeing on them never waits on the GPU's stream; None for one process."""
    if world == 1:
        return None
    return torch.distributed.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))


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


def reduce_min(accelerator: Accelerator, values: torch.Tensor) -> torch.Tensor:
    """Elementwise minimum over ranks (`values` itself for one process)."""
    if accelerator.num_processes == 1:
        return values
    values = values.clone()
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MIN)
    return values
