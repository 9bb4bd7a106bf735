"""Saving the whole run at a step: every rank's part of the state gathered on rank 0 and
written atomically (``distsim.checkpoints.store``), with the refiner's realism score.

Before anything is written, every statistic since the last check must be finite and every
rank must hold the same R and D: a checkpoint never records a broken run. A write that fails
(a full disk, a read-only directory) stops every rank with one line saying what was kept.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list

from distsim.checkpoints.realism import RealismProbe
from distsim.checkpoints.store import latest_checkpoint, rng_state, save_checkpoint
from distsim.config import Config
from distsim.distributed.guards import check_rank_consistency, named_state
from distsim.training.models import RunModels
from distsim.training.runtime import Runtime
from shards.cliutil import one_line


class CheckpointError(OSError):
    """A checkpoint could not be written (a full disk, a read-only directory); the message is
    one line and says what was kept."""


class Checkpointer:
    """Writes the run's checkpoints; `probe` (rank 0, when scoring is on) scores each one's
    refiner, and `protect` is kept by retention until the run has saved one of its own."""

    def __init__(
        self,
        cfg: Config,
        runtime: Runtime,
        run_dir: Path,
        image_shape: tuple[int, ...],
        image_dtype: str,
        probe: RealismProbe | None,
        protect: Path | None,
    ) -> None:
        self.cfg, self.runtime, self.run_dir = cfg, runtime, run_dir
        self.image_shape, self.image_dtype = image_shape, image_dtype
        self.probe, self.protect = probe, protect
        self.realism_seconds = 0.0

    def check_consistency(self, step: int, models: RunModels) -> None:
        tensors = named_state("refiner", models.refiner)
        tensors |= named_state("discriminator", models.discriminator)
        try:
            check_rank_consistency(tensors, self.runtime.world, self.runtime.control)
        except RuntimeError as err:
            raise RuntimeError(f"step {step}: {err}") from None

    def score_realism(self, step: int, models: RunModels) -> dict[str, float] | None:
        """The realism scores of the refiner now (rank 0; None elsewhere, when off, and before
        adversarial training, when R is still the identity: its score would be the synthetic
        reference)."""
        cfg = self.cfg
        if (
            self.probe is None
            or step <= cfg.schedule.pretrain_r_steps + cfg.schedule.pretrain_d_steps
        ):
            return None
        started = time.perf_counter()
        refined = torch.cat([models.step.refine(x) for x in self.probe.synthetic.split(256)])
        scores = self.probe.score(refined)
        self.realism_seconds += time.perf_counter() - started
        return scores

    def save(
        self, step: int, models: RunModels, counters: dict[str, int]
    ) -> tuple[Path | None, dict[str, float] | None]:
        """Checkpoint `step` (a collective): its path and realism scores on rank 0, None
        elsewhere."""
        rt = self.runtime
        self.check_consistency(step, models)
        rngs: list[Any] = [None] * rt.world
        if rt.world > 1:
            torch.distributed.all_gather_object(rngs, rng_state(), group=rt.control)
        else:
            rngs = [rng_state()]
        history: Any = models.history.state_dict() if models.history is not None else None
        if models.sharded:  # every rank's own slots, saved together by rank 0
            shards: list[Any] = [None] * rt.world
            torch.distributed.all_gather_object(shards, history, group=rt.control)
            history = shards
        path, error = None, None
        realism = self.score_realism(step, models)
        if rt.main:
            step_state = models.step.state_dict()
            state = {
                "opt_r": models.step.opt_r.state_dict(),
                "opt_d": models.step.opt_d.state_dict(),
                "scaler": step_state.pop("scaler"),
                "step": step_state,
                "history": history if not models.sharded else None,
                "history_shards": history if models.sharded else None,
                "counters": counters,
                "rng": rngs,
                "world_size": rt.world,
            }
            ema = models.step.ema
            try:
                path = save_checkpoint(
                    self.run_dir, step, refiner=models.refiner,
                    discriminator=models.discriminator,
                    refiner_ema=ema.model if ema is not None else None, state=state,
                    config=self.cfg.replace(mixed_precision=rt.precision),
                    image_shape=self.image_shape, image_dtype=self.image_dtype,
                    keep=self.cfg.outputs.keep_checkpoints,
                    realism=realism, protect=self.protect,
                )  # fmt: skip
            except OSError as err:
                previous = latest_checkpoint(self.run_dir)
                kept = (f"the previous checkpoint {previous} is intact (--resume auto goes on "
                        "from it)" if previous else "no earlier checkpoint exists")  # fmt: skip
                error = (f"could not write checkpoint step {step} in "
                         f"{self.run_dir / 'checkpoints'} ({one_line(err)}); {kept}")  # fmt: skip
        if rt.world > 1:  # every rank learns whether rank 0 could save, and stops if not
            box = [error]
            broadcast_object_list(box)
            error = box[0]
        if error is not None:
            raise CheckpointError(error)
        self.protect = None  # a newer checkpoint exists now
        rt.accelerator.wait_for_everyone()
        return path, realism
