"""Ages of the images a history buffer hands out, sharded over the launched gloo ranks vs one
replicated buffer: the sharded buffer's promise (history.py) is that a sampled image is as
old, in D steps, as one sampled from the global buffer.

    torchrun --nproc-per-node W tests/scripts/history_ages.py OUT.json

Each of W ranks keeps B/W slots, pushes its own b/2 images per D step (each image's pixels
hold the step it was made at) and samples b/2; rank 0 also runs one replicated buffer of B
slots with W b/2 pushed and sampled per step, as a single process with the global batch
would. Rank 0 writes both age histograms (over the last half of the steps) to OUT.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from distsim.gan.history import HistoryBuffer  # noqa: E402

CAPACITY, HALF_BATCH, STEPS = 256, 8, 600


def stamped(step: int, n: int) -> torch.Tensor:
    return torch.full((n, 1, 1, 1), float(step))  # (n, 1, 1, 1): the step it was refined at


def ages(buffer: HistoryBuffer, per_step: int) -> list[int]:
    out = []
    for step in range(STEPS):
        if len(buffer) >= per_step:
            drawn = buffer.images[buffer.sample_indices(per_step)][:, 0, 0, 0]
            if step >= STEPS // 2:
                out += (step - drawn).long().tolist()
        buffer.push(stamped(step, per_step))
    return out


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = ages(HistoryBuffer(CAPACITY // world, (1, 1, 1), seed=1_000_003 + rank), HALF_BATCH)
    everyone: list[list[int]] = [[] for _ in range(world)]
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        sharded = [a for r in everyone for a in r]
        replicated = ages(HistoryBuffer(CAPACITY, (1, 1, 1), seed=0), HALF_BATCH * world)
        Path(sys.argv[1]).write_text(json.dumps({"sharded": sharded, "replicated": replicated}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
