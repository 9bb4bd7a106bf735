"""One training run, set up from its parts: where it runs (``runtime``), its data
(``streams``), its models (``models``), what it resumes (``resume``), what it shows
(``logs``), how it saves (``checkpointing``) and how it stops (``signals``).

``training_loop`` (``distsim.training.loop``) drives it; the methods here are the updates with
their guards, and what happens between them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from distsim.checkpoints.realism import LabelShift, RealismProbe
from distsim.checkpoints.store import find_resume, list_checkpoints
from distsim.config import Config
from distsim.data.pixels import to_unit_range
from distsim.distributed.guards import named_state, tensor_checksums
from distsim.gan.step import D_STATS, D_STATS_HISTORY, R_STATS
from distsim.training.checkpointing import Checkpointer
from distsim.training.logs import RunLog
from distsim.training.meter import Meter
from distsim.training.models import RunModels
from distsim.training.resume import Found, ResumePoint
from distsim.training.runtime import Runtime
from distsim.training.signals import StopRequest
from distsim.training.streams import RunData, Streams


@dataclass
class Counters:
    step: int = 0  # global step over all phases
    r_steps: int = 0
    d_steps: int = 0
    skipped: int = 0  # updates skipped for a non-finite loss (--on-nonfinite skip)

    def phase(self, cfg: Config) -> str:
        if self.step < cfg.schedule.pretrain_r_steps:
            return "pretrain_r"
        if self.step < cfg.schedule.pretrain_r_steps + cfg.schedule.pretrain_d_steps:
            return "pretrain_d"
        return "adversarial"


def default_run_dir(cfg: Config) -> str:
    return str(Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")


class Run:
    """`resume`: what ``find_resume`` returned for `cfg`, when the caller has it (it is
    looked up otherwise); `label_shift`: the workload's measure of how far refinement moves
    labels, scored with the realism score at each checkpoint."""

    def __init__(
        self,
        cfg: Config,
        accelerator: Accelerator | None = None,
        streams: Streams | None = None,
        resume: Found | None = None,
        label_shift: LabelShift | None = None,
    ) -> None:
        cfg.validate()
        if cfg.runtime.resume == "auto" and not cfg.outputs.run_dir:
            raise ValueError("--resume auto needs --run-dir: the run directory to resume in")
        self.cfg = cfg
        self.runtime = rt = Runtime.start(cfg, accelerator)

        # One run directory for all ranks: the main process names it.
        names = [cfg.outputs.run_dir or default_run_dir(cfg)]
        broadcast_object_list(names)
        cfg.outputs.run_dir = names[0]
        self.run_dir = Path(cfg.outputs.run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"{self.run_dir}: --run-dir exists and is not a directory")
        # Found already when the command line's settings were resolved: verifying every
        # checkpoint's checksums again would read them all a second time.
        if resume is None:
            resume = find_resume(cfg.runtime.resume, self.run_dir)
        resume_from, skipped = resume
        if not cfg.runtime.resume and list_checkpoints(self.run_dir):
            # A fresh run here would mix its checkpoints with another run's and let retention
            # delete that run's.
            newest = list_checkpoints(self.run_dir)[-1].name
            raise ValueError(
                f"{self.run_dir}: already holds another run's checkpoints (newest {newest}); "
                "continue it with --resume auto, or pick another --run-dir"
            )

        self.data = RunData(cfg, rt)
        if cfg.optim.psi == "channel_mean" and self.data.image_shape[0] == 1:
            raise ValueError("--psi channel_mean needs colour images; these shards have 1 channel")
        point = ResumePoint(resume_from, cfg, rt.world) if resume_from is not None else None
        self.counters = Counters()
        self.models = RunModels(
            cfg, rt, self.data.image_shape, self.data.image_dtype, point,
            update_if=self._finite_everywhere if cfg.runtime.on_nonfinite == "skip" else None,
        )  # fmt: skip
        if point is not None:
            self.counters = Counters(**point.counters)
        c = self.counters
        self.data.start(c.r_steps + c.d_steps, c.d_steps, streams)

        self.log = RunLog(cfg, rt, self.run_dir)
        if point is not None:
            self.log.say(f"resuming from {resume_from} at step {c.step}")
            for note in [f"skipped {why}" for why in skipped] + point.notes:
                self.log.say(f"  changed: {note}")
        # The same images in every grid, whatever the resume point. Depth grids show the real
        # crops as measured, invalid pixels marked (D sees them filled, distsim.data.depth).
        syn, real = self.data.first_images(cfg.outputs.grid_rows)
        self.grid_syn, self.grid_real = (to_unit_range(x).to(rt.device) for x in (syn, real))
        self.grid_real_valid = real != 0 if self.data.depth else None
        # The label-free realism score at each checkpoint: fixed images, scored on rank 0.
        probe = None
        if cfg.outputs.realism_images > 0 and rt.main:
            syn, real = (to_unit_range(x).to(rt.device)
                         for x in self.data.first_images(cfg.outputs.realism_images))  # fmt: skip
            probe = RealismProbe(syn, real, seed=cfg.schedule.seed, label_shift=label_shift)
        self.checkpointer = Checkpointer(
            cfg, rt, self.run_dir, self.data.image_shape, self.data.image_dtype, probe,
            protect=resume_from,
        )  # fmt: skip
        self.meter = Meter()
        self.stop = StopRequest(rt.control).install()

    # --- the updates, with their guards ------------------------------------------------------

    def refiner_steps(self, n: int, *, adversarial: bool, check: bool) -> None:
        d_before = self._d_checksum() if check and adversarial else None
        lr = self.cfg.optim.lr_r if adversarial else self.cfg.optim.lr_r_pretrain
        step = self.models.step
        for group in step.opt_r.param_groups:
            group["lr"] = lr
        for _ in range(n):
            skipped = self.counters.skipped
            stats = step.refiner_step(next(self.data.syn), adversarial)
            self.counters.r_steps += 1
            if self.counters.skipped == skipped:  # a skipped update (non-finite) is not logged
                self.meter.add(self.counters.step + 1, R_STATS, stats)
        if d_before is not None and not torch.equal(d_before, self._d_checksum()):
            raise RuntimeError(
                f"rank {self.runtime.rank}: a refiner step changed D at step "
                f"{self.counters.step + 1}"
            )

    def discriminator_steps(self, n: int) -> None:
        for _ in range(n):
            skipped = self.counters.skipped
            stats = self.models.step.discriminator_step(next(self.data.syn), next(self.data.real))
            self.counters.d_steps += 1
            names = D_STATS_HISTORY if stats.shape[0] == len(D_STATS_HISTORY) else D_STATS
            if self.counters.skipped == skipped:
                # Numbered as checkpoints and logs number it: the step being taken.
                self.meter.add(self.counters.step + 1, names, stats)

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        # --on-nonfinite skip only: a host sync, and every rank takes the same decision.
        ok = torch.isfinite(loss.detach()).all().float()
        reduced = self.runtime.accelerator.reduce(ok, reduction="sum")
        finite = bool(reduced.item() == self.runtime.world)
        if not finite:
            self.counters.skipped += 1
        return finite

    def _d_checksum(self) -> torch.Tensor:
        return tensor_checksums(named_state("discriminator", self.models.discriminator))

    # --- between updates ---------------------------------------------------------------------

    def log_step(self, step: int, phase: str) -> dict[str, float]:
        """The statistics since the last log step, over ranks; written to TensorBoard."""
        self.check_finite(step)
        stats = self.meter.pop(self.runtime.accelerator)
        if self.cfg.data.on_bad_shard == "skip":
            stats |= self.data.skipped_totals()
        sent = self.models.comm.pop()
        c, since = self.counters, self.log.since
        extra = {"nonfinite_skipped": float(c.skipped)}
        if self.models.history is not None:
            extra["history_filled"] = float(len(self.models.history))
        self.log.scalars(step, phase, stats, r_steps=c.r_steps, d_steps=c.d_steps, extra=extra)
        if self.runtime.world > 1:
            self.log.comm_scalars(step, sent, r_steps=c.r_steps - since.r_steps,
                                  d_steps=c.d_steps - since.d_steps)  # fmt: skip
        return stats

    def check_finite(self, step: int) -> None:
        bad = self.meter.first_nonfinite(self.runtime.accelerator)
        if bad is not None:
            names, at = bad
            raise FloatingPointError(
                f"non-finite {', '.join(names)} at step {at} (checked at step {step}); the last "
                f"checkpoint in {self.run_dir / 'checkpoints'} is untouched (or pass "
                "--on-nonfinite skip)"
            )

    def check_consistency(self, step: int) -> None:
        self.checkpointer.check_consistency(step, self.models)

    def save_grid(self, step: int) -> None:
        refined = self.models.step.refine(self.grid_syn)
        self.log.grid(step, [self.grid_syn, refined, self.grid_real],
                      averaged=self.models.step.ema is not None,
                      real_valid=self.grid_real_valid)  # fmt: skip

    def checkpoint(self, step: int) -> Path | None:
        self.check_finite(step)
        path, realism = self.checkpointer.save(step, self.models,
                                               dataclasses.asdict(self.counters))  # fmt: skip
        if realism is not None:
            self.log.realism(step, realism, self.checkpointer.realism_seconds)
        return path

    def summarise(self, stats: dict[str, float], first_step: int, seconds: float) -> None:
        self.log.summary(stats, first_step, seconds, self.checkpointer.realism_seconds)

    def close(self) -> None:
        self.stop.uninstall()
        self.data.close()
        self.log.close()
