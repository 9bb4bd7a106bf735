"""Algorithm 1 of Shrivastava et al. 2017, in three phases counted by one global step:

  1. ``pretrain_r_steps`` refiner steps on self-regularisation only,
  2. ``pretrain_d_steps`` discriminator steps against that refiner,
  3. ``steps`` iterations of K_g refiner steps, then K_d discriminator steps.

Between steps: logs, image grids, rank-consistency checks and checkpoints at their intervals,
and a stop signal saves a checkpoint and ends the run (``Preempted``). The updates themselves
are ``distsim.gan.step``; the run they act on is ``distsim.training.run``.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from accelerate import Accelerator

from distsim.checkpoints.realism import LabelShift
from distsim.checkpoints.store import latest_checkpoint
from distsim.config import Config
from distsim.training.resume import Found
from distsim.training.run import Run
from distsim.training.signals import Preempted
from distsim.training.streams import Streams
from shards.progress import Progress


def work_units(cfg: Config, step: int) -> int:
    """Updates (R or D steps) in the first `step` steps: what the progress bar counts, since
    an adversarial step (K_g + K_d updates) is several times the work of a pretraining one."""
    pre = cfg.schedule.pretrain_r_steps + cfg.schedule.pretrain_d_steps
    return min(step, pre) + max(0, step - pre) * (cfg.schedule.k_g + cfg.schedule.k_d)


def training_loop(
    cfg: Config,
    accelerator: Accelerator | None = None,
    *,
    streams: Streams | None = None,
    resume: Found | None = None,
    label_shift: LabelShift | None = None,
) -> Path:
    """Run SimGAN training as configured; returns the run directory.

    Raises Preempted after saving a checkpoint if SIGTERM or SIGUSR1 arrived, and
    FloatingPointError naming the step and loss if a loss went non-finite (--on-nonfinite
    stop), leaving the last checkpoint as it was. `resume`: what ``find_resume`` returned for
    `cfg`, when the caller has it; `label_shift`: scored beside realism at each checkpoint.
    """
    run = Run(cfg, accelerator, streams, resume, label_shift)
    counters, main_process = run.counters, run.runtime.main
    total = cfg.schedule.pretrain_r_steps + cfg.schedule.pretrain_d_steps + cfg.schedule.steps
    bar = Progress(work_units(cfg, total), "train", unit="updates",
                   initial=work_units(cfg, counters.step),
                   enabled=cfg.outputs.progress and main_process)  # fmt: skip
    started, first_step = time.perf_counter(), counters.step
    stats: dict[str, float] = {}
    try:
        while counters.step < total:
            phase = counters.phase(cfg)
            check = (
                cfg.runtime.check_every > 0 and (counters.step + 1) % cfg.runtime.check_every == 0
            )
            if phase == "pretrain_r":
                run.refiner_steps(1, adversarial=False, check=check)
            elif phase == "pretrain_d":
                run.discriminator_steps(1)
            else:
                run.refiner_steps(cfg.schedule.k_g, adversarial=True, check=check)
                run.discriminator_steps(cfg.schedule.k_d)
            counters.step += 1
            step = counters.step
            bar.update(work_units(cfg, step) - work_units(cfg, step - 1))

            if step % cfg.outputs.log_every == 0 or step == total:
                stats = run.log_step(step, phase)
                bar.set_postfix({"step": f"{step}/{total}"}
                                | {k: f"{v:.3f}" for k, v in stats.items()})  # fmt: skip
                bar.set_description(phase)
            if check:
                run.check_consistency(step)
            if main_process and (step % cfg.outputs.image_every == 0 or step == total):
                run.save_grid(step)
            signum = run.stop.poll()
            if step % cfg.outputs.ckpt_every == 0 or step == total or signum:
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
    run.runtime.accelerator.wait_for_everyone()
    if main_process:
        run.summarise(stats, first_step, time.perf_counter() - started)
    return run.run_dir
