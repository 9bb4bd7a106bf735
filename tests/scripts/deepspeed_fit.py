"""Train a tiny gaze estimator through ``distsim.estimation.fit.fit`` with the DeepSpeed hook,
on fixed global batches, and save what it learned: the DeepSpeed side of
tests/estimation/test_deepspeed.py.

    python tests/scripts/deepspeed_fit.py CONFIG OUT_DIR                          # 1 process
    torchrun --standalone --nproc-per-node W tests/scripts/deepspeed_fit.py CONFIG OUT_DIR

Global batch g is a pure function of g; rank r of W takes rows [r * G/W, (r + 1) * G/W), so
W ranks and one process with the global batch see the same images. Rank 0 writes
OUT_DIR/estimator.pt (the bare estimator's state dict after ``fit``) and OUT_DIR/losses.json.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from distsim.gaze.estimator import GazeEstimator, gaze_loss  # noqa: E402

GLOBAL_BATCH, STEPS, WIDTH, LR, SEED = 16, 6, 0.25, 1e-3, 0


def global_batches(rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's rows of each fixed global batch: ((b, 1, 35, 55) in [-1, 1], (b, 3) unit)."""
    per = GLOBAL_BATCH // world
    g = 0
    while True:
        gen = torch.Generator().manual_seed(1_000_003 + g)
        x = torch.rand(GLOBAL_BATCH, 1, 35, 55, generator=gen) * 2 - 1
        y = torch.nn.functional.normalize(torch.randn(GLOBAL_BATCH, 3, generator=gen), dim=1)
        yield x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
        g += 1


def estimator() -> tuple[GazeEstimator, torch.optim.Optimizer]:
    torch.manual_seed(SEED)
    model = GazeEstimator(WIDTH)
    return model, torch.optim.Adam(model.parameters(), lr=LR)


def main() -> None:
    from distsim.estimation import deepspeed as zero
    from distsim.estimation.fit import fit

    config_path, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    config, info = zero.load_config(config_path, GLOBAL_BATCH // world)
    accelerator = zero.make_accelerator(config, info)
    rank = accelerator.process_index
    model, opt = estimator()
    losses = fit(
        model, opt, global_batches(rank, world), gaze_loss, STEPS,
        prepare=zero.DeepSpeed(accelerator, info), rank=rank, log_every=1,
    )  # fmt: skip
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "estimator.pt")
        (out / "losses.json").write_text(json.dumps({"losses": losses, "deepspeed": info}))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
