"""Resuming a run: which checkpoint, which settings, and putting its state back.

A resume continues the run it resumes: every setting the command line did not give comes
from that checkpoint's config, not from a preset (``settings_for_resume``). What the
checkpoint holds (weights, optimisers, history buffer, counters, every rank's RNG states, the
step's own generators) goes back into the new run's parts through ``ResumePoint``; what
cannot carry over exactly (another world size, another history layout) is said in ``notes``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torch.optim import Optimizer

from distsim.checkpoints.store import (
    find_resume,
    image_shape,
    load_state,
    load_weights,
    set_rng_state,
)
from distsim.config import ARCHITECTURE, Config, load_config
from distsim.gan.ema import EMA
from distsim.gan.history import HistoryBuffer, deal, merged_images

# What checkpoint.find_resume returns: the checkpoint to resume (None: fresh) and what it skipped.
Found = tuple[Path | None, list[str]]

# Settings a resume may change without saying so.
_UNSAID = {"run_dir", "resume", "progress"}


def settings_for_resume(cfg: Config, given: set[str]) -> tuple[Config, Found | None]:
    """`cfg` with every setting the command line did not give (`given`) taken from the
    checkpoint it resumes (leaving a flag off must not change the run: once it reset
    --keep-checkpoints and deleted the checkpoints resumed from). A fresh start, or --resume
    auto with no checkpoint yet, is `cfg` as it is. Also returns the checkpoint found, for
    ``training_loop`` (None: nothing was looked up)."""
    if not cfg.runtime.resume or (cfg.runtime.resume == "auto" and not cfg.outputs.run_dir):
        return cfg, None
    found = find_resume(cfg.runtime.resume, cfg.outputs.run_dir)
    ckpt = found[0]
    if ckpt is None:
        return cfg, found
    saved = load_config(ckpt / "config.json")
    if "preset" in given and cfg.preset != saved.preset:
        raise ValueError(
            f"{ckpt}: made with --preset {saved.preset}; a resume keeps that run's settings, so "
            f"--preset {cfg.preset} would change none of them: leave it off, or start a new "
            "--run-dir"
        )
    keep = given | _UNSAID
    if "mixed_precision" not in given:
        keep.add("mixed_precision")  # what this launch says (accelerate launch's flag)
    inherited = saved.replace(**{k: cfg.get(k) if k != "preset" else cfg.preset for k in keep})
    inherited.validate()
    return inherited, found


def config_changes(saved: Config, now: Config) -> list[str]:
    """'field old -> new' for every setting the resumed run changes."""
    # Configs before the precision used was recorded say "" for full precision.
    same = {("", "no"), ("no", "")}
    before, after = saved.flat() | {"preset": saved.preset}, now.flat() | {"preset": now.preset}
    return [
        f"{k} {before[k]!r} -> {after[k]!r}"
        for k in after
        if k not in _UNSAID and before[k] != after[k] and (before[k], after[k]) not in same
    ]


class ResumePoint:
    """A checkpoint being resumed into a run of `world` ranks, config `cfg`."""

    def __init__(self, path: Path, cfg: Config, world: int) -> None:
        self.path, self.cfg, self.world = path, cfg, world
        self.saved = load_config(path / "config.json")
        self.state: dict[str, Any] = {}
        self.notes: list[str] = []

    def load_weights(self, refiner: nn.Module, discriminator: nn.Module,
                     shape: tuple[int, ...]) -> None:  # fmt: skip
        """R's and D's weights, once the checkpoint is known to fit this run's models and
        `shape` (C, H, W) of its images; then the rest of its state, to restore later."""
        changed = [k for k in ARCHITECTURE if self.saved.get(k) != self.cfg.get(k)]
        if changed:
            k = changed[0]
            raise ValueError(
                f"{self.path}: trained with --{k.replace('_', '-')} {self.saved.get(k)}, "
                f"this run asks for {self.cfg.get(k)}; the architecture cannot change on "
                "resume (start a new --run-dir)"
            )
        if image_shape(self.path) != shape:
            raise ValueError(
                f"{self.path}: trained on images {image_shape(self.path)}, these shards hold "
                f"{shape}"
            )
        load_weights(self.path, refiner, discriminator)
        self.state = load_state(self.path)

    def note_changes(self, now: Config) -> None:
        """Say what this run does differently: settings, and the world size."""
        self.notes += config_changes(self.saved, now)
        before = self.state["world_size"]
        if before != self.world:
            b = now.schedule.batch_size
            self.notes.append(
                f"world size {before} -> {self.world}: global batch {before * b} -> "
                f"{self.world * b}, each rank's data stream and RNG start afresh (the buffer "
                "and weights carry over)"
            )

    def load_ema(self, ema: EMA) -> None:
        if (self.path / "refiner_ema.safetensors").is_file():
            load_weights(self.path, ema.model, None, refiner_file="refiner_ema")
        else:
            self.notes.append("the checkpoint has no refiner average: it starts from R")

    def load_optimizers(self, opt_r: Optimizer, opt_d: Optimizer) -> None:
        opt_r.load_state_dict(self.state["opt_r"])
        opt_d.load_state_dict(self.state["opt_d"])

    @property
    def counters(self) -> dict[str, int]:
        return self.state["counters"]

    def load_history(self, history: HistoryBuffer, *, sharded: bool, rank: int) -> None:
        """The checkpoint's buffer, exactly when its layout is this run's; re-dealt otherwise."""
        state = self.state
        shards = state.get("history_shards")
        if shards is None and state["history"] is None:
            self.notes.append("the checkpoint has no history buffer: it starts empty")
            return
        saved = shards if shards is not None else [state["history"]]
        if shards is None and not sharded:
            history.load_state_dict(state["history"])  # a global buffer: any world size
        elif shards is not None and sharded and len(shards) == self.world:
            history.load_state_dict(shards[rank])
        else:
            share, ranks = (rank, self.world) if sharded else (0, 1)
            deal(merged_images(saved), history, share, ranks)
            before = f"sharded over {len(shards)} ranks" if shards is not None else "replicated"
            now = f"sharded over {self.world} ranks" if sharded else "replicated"
            self.notes.append(f"history buffer {before} -> {now}: its images were re-dealt")
        if history.levels is not None and any("codes" not in s for s in saved):
            self.notes.append(
                "history buffer saved at full precision (before buffers held the data's "
                f"{history.levels + 1} codes): its images were rounded to them"
            )

    def load_rng(self, rank: int) -> None:
        """This rank's RNG states, when the world size is the same (else they start afresh)."""
        if self.state["world_size"] == self.world:
            set_rng_state(self.state["rng"][rank])

    @property
    def step_state(self) -> dict[str, Any]:
        """The step's own state (its noise generator, the loss scaler)."""
        return self.state.get("step", {}) | {"scaler": self.state.get("scaler")}
