"""Train a smoke SimGAN on fixed global batches: the world-size-invariance experiment.

    accelerate launch --multi_gpu --num_processes W tests/scripts/fixed_batches.py \
        --run-dir DIR --cache-dir CACHE --global-batch G [train.py flags...]

Every global batch g of each domain is a pure function of (domain, g); rank r of W takes
rows [r * G/W, (r + 1) * G/W). So W ranks at batch G/W and 1 rank at batch G see the same
images in the same order, which is what distsim's world-size invariance promises to need.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from distsim.config import resolve  # noqa: E402
from distsim.distributed.launch import make_accelerator  # noqa: E402
from distsim.training.loop import training_loop  # noqa: E402

SHAPE = (1, 35, 55)


def global_batches(domain: int, size: int, start: int) -> Iterator[torch.Tensor]:
    g = start
    while True:
        gen = torch.Generator().manual_seed(1_000_003 * domain + g)
        yield torch.randint(0, 256, (size, *SHAPE), generator=gen, dtype=torch.uint8)
        g += 1


def main() -> None:
    argv = sys.argv[1:]
    i = argv.index("--global-batch")
    global_batch = int(argv[i + 1])
    del argv[i : i + 2]
    accelerator = make_accelerator("no")
    world = accelerator.num_processes
    b = global_batch // world
    cfg = resolve(["--preset", "smoke", "--batch-size", str(b), *argv])

    def streams(rank: int, world: int, syn_start: int, real_start: int):
        def mine(domain: int, start: int) -> Iterator[torch.Tensor]:
            for batch in global_batches(domain, global_batch, start):
                yield batch[rank * b : (rank + 1) * b]

        return mine(0, syn_start), mine(1, real_start)

    training_loop(cfg, accelerator, streams=streams)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
