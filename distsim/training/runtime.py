"""Where this process trains: its Accelerator, rank, world size, device and precision, and a
CPU group for control messages."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator

from distsim.config import Config
from distsim.distributed.launch import control_group, make_accelerator, set_gpu_kernels


@dataclass
class Runtime:
    accelerator: Accelerator
    precision: str  # what the step's autocast uses: no, bf16 or fp16
    rank: int
    world: int
    device: torch.device
    # A gloo group over every rank (None for one process): stop requests and consistency
    # checksums go over the CPU, so agreeing on them never waits on the GPU's stream.
    control: torch.distributed.ProcessGroup | None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @classmethod
    def start(cls, cfg: Config, accelerator: Accelerator | None = None) -> Runtime:
        """The runtime for `cfg` (an Accelerator made for it unless one is given)."""
        if accelerator is None:
            accelerator = make_accelerator(cfg.runtime.mixed_precision, cfg.runtime.dist_timeout)
        # The flag, else what `accelerate launch` said.
        precision = cfg.runtime.mixed_precision or str(accelerator.mixed_precision or "no")
        device = accelerator.device
        if precision == "fp16" and device.type != "cuda":
            raise ValueError(
                "--mixed-precision fp16 needs a CUDA device (Accelerate runs CPU fp16 as "
                "float32 with no loss scaling); use bf16 or no on the CPU"
            )
        if device.type == "cuda":
            set_gpu_kernels(deterministic=cfg.runtime.deterministic)
        world = accelerator.num_processes
        return cls(accelerator, precision, accelerator.process_index, world, device,
                   control_group(world, cfg.runtime.dist_timeout))  # fmt: skip
