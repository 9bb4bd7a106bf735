"""Rebuilding a run's refiner and discriminator from its config, and loading a checkpoint's
weights into them."""

from __future__ import annotations

from pathlib import Path

from distsim.checkpoints.store import has_ema, image_shape, load_weights, resolve_checkpoint
from distsim.config import Config, load_config
from distsim.gan.discriminator import Discriminator
from distsim.gan.refiner import Refiner, make_output


def build_models(cfg: Config, channels: int) -> tuple[Refiner, Discriminator]:
    output = make_output(cfg.refiner.output, window=cfg.refiner.window,
                         slack=cfg.refiner.slack, dropout=cfg.refiner.dropout)  # fmt: skip
    refiner = Refiner(channels, cfg.refiner.width, cfg.refiner.blocks, cfg.refiner.kernel,
                      cfg.refiner.noise, output)  # fmt: skip
    discriminator = Discriminator(channels, cfg.discriminator.widths, cfg.discriminator.arch)
    return refiner, discriminator


def load_models(path: str | Path, *, ema: bool = False) -> tuple[Refiner, Discriminator, Config]:
    """Rebuild R and D from a checkpoint's own config and load their weights (on the CPU).
    With `ema`, R gets the weight average when the checkpoint has one."""
    ckpt = resolve_checkpoint(path)
    cfg = load_config(ckpt / "config.json")
    refiner, discriminator = build_models(cfg, image_shape(ckpt)[0])
    load_weights(ckpt, refiner, discriminator)
    if ema and has_ema(ckpt):
        load_weights(ckpt, refiner, None, refiner_file="refiner_ema")
    return refiner, discriminator, cfg
