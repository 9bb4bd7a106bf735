"""DeepSpeed for the estimators, through Accelerate's DeepSpeed plugin: ``evaluate --deepspeed``.

    python -m distsim.evaluate gaze ... --deepspeed launch/deepspeed_zero2.json     # 1 process
    accelerate launch --multi_gpu --num_processes 8 -m distsim.evaluate gaze ... \
        --deepspeed launch/deepspeed_zero2.json                                      # 8 GPUs
    accelerate launch --config_file launch/accelerate_deepspeed.yaml -m distsim.evaluate gaze ...

(the last: an Accelerate config whose ``deepspeed_config_file`` names the JSON says the same as
the flag). ``DeepSpeed`` is a ``distsim.estimation.fit.Prepare`` hook, so every estimator
trained by ``distsim.estimation.fit.fit`` gets it. The GAN trainer keeps plain DDP: its two
players' losses run through each other, which one DeepSpeed engine per model does not serve,
and ZeRO would save a few MiB there (``benchmarks/zero_savings.py``).

What the estimator needs from the JSON, checked before Accelerate starts (one-line ValueError):
- No "optimizer" or "scheduler": the estimator's own (--optimizer, --lr) is used.
- ZeRO stage 0, 1 or 2. Stage 3 shards the parameters themselves, which buys nothing at a
  few million parameters; stage 0 with bf16 keeps the float32 master weights where no public
  DeepSpeed API returns them.
- bf16 ``true``, ``false`` or ``"auto"`` (bf16 on GPUs that have it, else float32, or what the
  launcher's mixed_precision says); not fp16 (``false`` or ``"auto"``), whose loss scaler
  skips steps on overflow, so --steps would stop counting updates.
- Batch fields ``"auto"`` or equal to what the run uses (--batch-size per rank, one micro
  step per optimizer step: gradient_accumulation_steps 1).
- ``gradient_clipping`` absent or ``"auto"`` means none (0.0), as without DeepSpeed:
  DeepSpeed's own default clips at 1.0 and Accelerate fills "auto" with 1.0, which would
  train a different estimator.

After the last step the float32 weights (the ZeRO master copy when training ran in bf16) are
gathered into the bare model, which is then tested exactly as without DeepSpeed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distsim.estimation.fit import Prepared

if TYPE_CHECKING:
    from accelerate import Accelerator

INSTALL = "pip install 'distsim[deepspeed]'"
STAGES = (0, 1, 2)


def check_installed() -> None:
    """ValueError (one line) unless DeepSpeed, and the transformers package that Accelerate's
    DeepSpeed plugin imports (accelerate >= 1.0), are installed."""
    for package in ("deepspeed", "transformers"):
        if importlib.util.find_spec(package) is None:
            raise ValueError(f"--deepspeed needs the {package} package, not installed: {INSTALL}")


def launcher_config() -> str | None:
    """The DeepSpeed config an Accelerate launcher config asked for (distributed_type DEEPSPEED
    with deepspeed_config_file), or None when not launched that way."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if path == "none":
        raise ValueError(
            "the Accelerate config enables DeepSpeed without a deepspeed_config_file; "
            "the estimators need one (e.g. launch/deepspeed_zero2.json)"
        )
    return path


def _auto_or(config: dict[str, Any], key: str, want: int, why: str, path: str | Path) -> None:
    value = config.get(key, "auto")
    if value == "auto":
        config[key] = want
    elif value != want:
        raise ValueError(f'{path}: {key} is {value!r} but {why} is {want}; set it to "auto"')


def load_config(
    path: str | Path, batch_size: int, world_size: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the DeepSpeed config to run with, what the report records) for training at
    ``batch_size`` per rank over ``world_size`` ranks (default: the launcher's WORLD_SIZE)."""
    check_installed()
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        config = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such DeepSpeed config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the DeepSpeed config ({err})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON DeepSpeed config ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a DeepSpeed config is a JSON object")
    for key in ("optimizer", "scheduler"):
        if key in config:
            raise ValueError(
                f"{path}: remove {key!r}; the estimator brings its own (--optimizer, --lr)"
            )
    zero = config.get("zero_optimization")
    stage = zero.get("stage") if isinstance(zero, dict) else None
    if stage not in STAGES:
        raise ValueError(
            f"{path}: zero_optimization.stage must be one of {STAGES}, got {stage!r} (stage 3 "
            "shards parameters, which gains nothing at an estimator's few million)"
        )
    if _enabled(config, "fp16") not in (False, "auto"):
        raise ValueError(f"{path}: fp16 is not supported (its loss scaler skips steps); use bf16")
    bf16 = _enabled(config, "bf16")
    if bf16 not in (True, False, "auto"):
        raise ValueError(f'{path}: bf16.enabled must be true, false or "auto", got {bf16!r}')
    _auto_or(config, "train_micro_batch_size_per_gpu", batch_size, "--batch-size", path)
    _auto_or(config, "gradient_accumulation_steps", 1, "one micro step per update", path)
    _auto_or(config, "train_batch_size", batch_size * world_size, "the global batch", path)
    if config.get("gradient_clipping", "auto") == "auto":
        config["gradient_clipping"] = 0.0
    info = {"config": str(path), "zero_stage": stage, "bf16": bf16}
    info["gradient_clipping"] = config["gradient_clipping"]
    return config, info


def _enabled(config: dict[str, Any], key: str) -> Any:
    section = config.get(key, {})
    return section.get("enabled", False) if isinstance(section, dict) else section


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_accelerator(
    config: dict[str, Any], info: dict[str, Any], timeout_s: int = 600
) -> Accelerator:
    """The Accelerator with DeepSpeed for this launch, and the precision settled in ``info``.

    DeepSpeed always needs a process group; run without a launcher, this makes the group of
    one that torchrun would (RANK 0 of WORLD_SIZE 1 on a free local port). Without CUDA the
    group uses gloo (DeepSpeed's CPU accelerator), which Accelerate must be told.
    """
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    cuda = torch.cuda.is_available()
    mixed: str | None = None  # None: the launcher's ACCELERATE_MIXED_PRECISION
    if "ACCELERATE_MIXED_PRECISION" not in os.environ:
        mixed = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if (mixed or os.environ["ACCELERATE_MIXED_PRECISION"]) == "fp16":
        raise ValueError("--deepspeed: fp16 is not supported (its loss scaler skips steps)")
    bf16 = info["bf16"] is True or (
        info["bf16"] == "auto" and (mixed or os.environ["ACCELERATE_MIXED_PRECISION"]) == "bf16"
    )
    if info["zero_stage"] == 0 and bf16:
        raise ValueError(
            f"{info['config']}: ZeRO stage 0 with bf16 keeps the float32 weights out of reach; "
            "use stage 1 or 2"
        )
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
        )  # fmt: skip
    launched = int(os.environ["WORLD_SIZE"])
    group = InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))
    if not cuda:
        group.backend = "gloo"
    try:
        accelerator = Accelerator(
            mixed_precision=mixed,
            deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config),
            kwargs_handlers=[group],
        )
    except ImportError as err:  # a DeepSpeed or transformers that does not import
        raise ValueError(f"--deepspeed: {err}".splitlines()[0]) from None
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"launched as {launched} processes but Accelerate formed a group of "
            f"{accelerator.num_processes}; check the launcher and backend"
        )
    plugin = accelerator.state.deepspeed_plugin
    assert plugin is not None
    info["bf16"] = _enabled(plugin.deepspeed_config, "bf16") is True  # "auto" resolved
    return accelerator


class DeepSpeed:
    """``distsim.estimation.fit.Prepare`` through ``accelerator``'s DeepSpeed plugin: the loop
    calls the DeepSpeed engine, ``accelerator.backward`` runs the engine's backward and step, and
    ``finish`` gathers the float32 weights into the bare model. Accelerate takes one model per
    Accelerator under DeepSpeed, so one ``DeepSpeed`` trains one estimator."""

    def __init__(self, accelerator: Accelerator, info: dict[str, Any]) -> None:
        self.accelerator = accelerator
        self.deepspeed = info

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> Prepared:
        engine, opt = self.accelerator.prepare(model, optimizer)
        dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
        return Prepared(engine, opt, self.accelerator.backward, lambda: gather_fp32(model), dtype)


def gather_fp32(model: nn.Module) -> None:
    """Put DeepSpeed's float32 weights into ``model`` (a module DeepSpeed trained), as float32.

    With ZeRO 1/2 each rank holds a shard of the float32 master weights: every rank must call
    this, since it all-reduces each parameter in turn. Buffers, which DeepSpeed keeps in the
    training dtype, are cast back to float32.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    full = {}
    for name, param in model.named_parameters():
        master = safe_get_full_fp32_param(param)  # None where the parameter is the master
        if master is None and param.dtype != torch.float32:
            raise RuntimeError(f"DeepSpeed kept no float32 copy of {name}")
        full[name] = param.detach() if master is None else master
    model.float()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(full[name])
