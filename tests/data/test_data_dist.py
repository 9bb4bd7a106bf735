"""distsim.data across real processes: 2 gloo ranks x 2 DataLoader workers each.

Each rank builds its own loader from (rank, world_size) and the counts and sample ids are
all-gathered, as a DDP trainer would see them.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distsim.data import make_epoch_loader, make_loader
from tests.data.test_data import write_indexed_set

WORLD, WORKERS, BATCH = 2, 2, 32
SIZES = (700, 90, 13)  # fewer shards than ranks x workers, and uneven


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather(value: object) -> list:
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _rank(rank: int, port: int, directory: str, result: str) -> None:
    # mp.spawn children default to spawning their own children, which re-imports everything per
    # DataLoader worker (seconds each); ranks started by torchrun/accelerate fork them.
    multiprocessing.set_start_method("fork", force=True)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        report: dict[str, object] = {}
        loader = make_epoch_loader(
            directory,
            BATCH,
            rank,
            WORLD,
            seed=3,
            num_workers=WORKERS,
            labels=("idx",),
            with_index=True,
        )
        for epoch in range(2):
            loader.set_epoch(epoch)
            ids, sizes = [], []
            for batch in loader:
                assert torch.equal(batch["idx"], batch["index"])
                ids += batch["idx"].tolist()
                sizes.append(len(batch["idx"]))
            report[f"epoch{epoch}"] = {
                "len": _gather(len(loader)),
                "sizes": _gather(sizes),
                "ids": _gather(ids),
            }
        # The infinite stream: a fixed number of steps on every rank, never exhausted.
        stream = iter(
            make_loader(directory, BATCH, rank, WORLD, seed=0, num_workers=WORKERS, labels=("idx",))
        )
        counts = 0
        for _ in range(9):
            counts += len(next(stream)["idx"]) == BATCH
        report["infinite"] = _gather(counts)
        if rank == 0:
            Path(result).write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def uneven_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_indexed_set(tmp_path_factory.mktemp("dist") / "set", SIZES, block_size=32)


def test_two_gloo_ranks_get_equal_batch_counts_and_every_sample_once(
    uneven_set: Path, tmp_path: Path
) -> None:
    result = tmp_path / "result.json"
    mp.spawn(_rank, args=(_free_port(), str(uneven_set), str(result)), nprocs=WORLD)
    report = json.loads(result.read_text())
    total = sum(SIZES)
    orders = []
    for epoch in range(2):
        r = report[f"epoch{epoch}"]
        sizes = r["sizes"]
        # Same number of batches on both ranks, none empty, equal to len(loader).
        assert len(sizes[0]) == len(sizes[1]) == r["len"][0] == r["len"][1] == 13
        assert min(min(s) for s in sizes) >= 1 and max(max(s) for s in sizes) == BATCH
        ids = r["ids"][0] + r["ids"][1]
        assert sorted(ids) == list(range(total))  # every sample exactly once
        orders.append(ids)
    assert orders[0] != orders[1]  # set_epoch reached the persistent workers
    assert report["infinite"] == [9, 9]
