"""CPU seconds per R and D update of a hand preset (default hands-cpu), for sizing it.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/hand_step_cpu.py [--preset hands-cpu]

Counts process CPU time (time.process_time), not wall time, so a busy shared machine does
not inflate the number: on an idle machine with T cores a run takes about CPU seconds / T
at best. Data are random depth-like tensors (the loader is not measured). Prints per-update
CPU seconds and the preset's whole schedule (R pretraining, D pretraining, adversarial steps
of K_g R + K_d D updates) extrapolated to 1 and 2 idle cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from distsim.checkpoints.models import build_models
from distsim.config import make_config
from distsim.gan.history import HistoryBuffer
from distsim.gan.losses import PSI
from distsim.gan.step import SimGANStep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="hands-cpu")
    parser.add_argument("--updates", type=int, default=6)
    args = parser.parse_args()
    cfg = make_config(args.preset)
    side = cfg.data.builtin_size
    torch.manual_seed(0)
    refiner, disc = build_models(cfg, 1)
    opt_r = torch.optim.Adam(refiner.parameters(), lr=cfg.optim.lr_r)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.optim.lr_d)
    shape = (1, side, side)
    history = HistoryBuffer(cfg.history.size, shape, seed=0, device=torch.device("cpu"))
    step = SimGANStep(
        refiner,
        disc,
        opt_r,
        opt_d,
        psi=PSI[cfg.optim.psi],
        lambda_reg=cfg.optim.lambda_reg,
        history=history,
        noise_channels=cfg.refiner.noise,
    )
    x = torch.rand(cfg.schedule.batch_size, *shape) * 2 - 1

    def cpu_per(fn: object, n: int) -> float:
        fn()  # warm-up
        t = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - t) / n

    r = cpu_per(lambda: step.refiner_step(x, True), args.updates)
    d = cpu_per(lambda: step.discriminator_step(x, x), args.updates)
    total = cfg.schedule.pretrain_r_steps * r + cfg.schedule.pretrain_d_steps * d
    total += cfg.schedule.steps * (cfg.schedule.k_g * r + cfg.schedule.k_d * d)
    print(f"{args.preset}: {side}x{side}, batch {cfg.schedule.batch_size}, threads "
          f"{torch.get_num_threads()}: R update {r:.3f} CPU s, D update {d:.3f} CPU s; "
          f"schedule {total:.0f} CPU s = {total / 60:.1f} min on 1 idle core, "
          f"~{total / 120:.1f} min on 2 (perfect scaling)")  # fmt: skip


if __name__ == "__main__":
    main()
