"""The run's data: the synthetic and real shard sets, one endless batch stream per domain
(started where the run left off), the fixed images grids and the realism score show, and what
a skip-mode run skipped.

SimGAN never reads a label: the streams are images only. The loaders never go through
``accelerator.prepare`` (it would re-shard or broadcast them); each rank reads its own split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from distsim import data
from distsim.config import Config
from distsim.data.pixels import to_unit_range
from distsim.training.runtime import Runtime

# (rank, world_size, synthetic start, real start) -> endless image batches per domain, each
# (b, C, H, W). Replaces the shard loaders (tests feed the same global batches at any world
# size); the starts are the batches each rank already consumed (resume).
Streams = Callable[[int, int, int, int], tuple[Iterator[torch.Tensor], Iterator[torch.Tensor]]]
DOMAINS = ("synthetic", "real")


def shard_dirs(cfg: Config, runtime: Runtime) -> tuple[Path, Path]:
    """The synthetic and real shard directories: the given ones, or the built-in simulator's,
    rendered into the cache by the main process first (the others then find them complete)."""
    if cfg.data.synthetic:
        return Path(cfg.data.synthetic), Path(cfg.data.real)
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else None
    paths: list[Path] = []
    with runtime.accelerator.main_process_first():
        for domain in ("synthetic", cfg.data.builtin_real):
            paths.append(
                data.ensure_builtin_shards(
                    domain,
                    cfg.data.builtin_count,
                    cfg.data.builtin_seed,
                    cache,
                    progress=cfg.outputs.progress,
                    sim=cfg.data.builtin_sim,
                    size=cfg.data.builtin_size,
                )
            )
    return paths[0], paths[1]


class RunData:
    """Both domains' shard sets, checked to pair up; ``start`` opens their streams."""

    def __init__(self, cfg: Config, runtime: Runtime) -> None:
        self.cfg, self.runtime = cfg, runtime
        self.dirs = dict(zip(DOMAINS, shard_dirs(cfg, runtime), strict=True))
        syn = data.open_shards(self.dirs["synthetic"], on_error=cfg.data.on_bad_shard)
        real = data.open_shards(self.dirs["real"], on_error=cfg.data.on_bad_shard)
        data.check_pair(syn, self.dirs["synthetic"], real, self.dirs["real"])
        self.image_shape: tuple[int, int, int] = tuple(syn.image_shape)  # type: ignore[assignment]
        self.image_dtype = syn.image_dtype
        # uint16 shards are depth crops (shards.depth): colour grids, invalid pixels filled.
        self.depth = syn.image_dtype == "uint16"
        self.loaders: dict[str, data.ShardLoader] = {}
        self.skipped = {domain: {"blocks": 0, "images": 0} for domain in DOMAINS}
        self.syn: Iterator[torch.Tensor] = iter(())
        self.real: Iterator[torch.Tensor] = iter(())

    def start(self, syn_start: int, real_start: int, streams: Streams | None = None) -> None:
        """Open the streams at the batches this rank already consumed: R and D steps each
        take one synthetic batch, D steps one real batch. Batches are float (b, C, H, W) in
        [-1, 1] on the device."""
        cfg, rt = self.cfg, self.runtime
        if streams is not None:
            syn_it, real_it = streams(rt.rank, rt.world, syn_start, real_start)
            self.syn = (to_unit_range(x.to(rt.device)) for x in syn_it)
            self.real = (to_unit_range(x.to(rt.device)) for x in real_it)
            return
        starts = {"synthetic": syn_start, "real": real_start}
        for i, domain in enumerate(DOMAINS):
            self.loaders[domain] = data.make_loader(
                self.dirs[domain],
                cfg.schedule.batch_size,
                rt.rank,
                rt.world,
                cfg.schedule.seed * 2 + i,
                cfg.data.num_workers,
                labels=(),
                on_error=cfg.data.on_bad_shard,
                start=starts[domain],
                pin_memory=rt.device.type == "cuda",
            )
            self.skipped[domain]["shards"] = len(self.loaders[domain].dataset.skipped_shards)
        self.syn = self._batches("synthetic")
        self.real = self._batches("real")

    def _batches(self, domain: str) -> Iterator[torch.Tensor]:
        """Float images on the device; adds what the loader skipped (skip mode) to
        ``skipped[domain]``."""
        skipped = self.skipped[domain]
        for batch in self.loaders[domain]:
            skipped["blocks"] += batch.get("skipped_blocks", 0)
            skipped["images"] += batch.get("skipped_images", 0)
            yield to_unit_range(batch["image"].to(self.runtime.device, non_blocking=True))

    def first_images(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` images of each set as stored, (n, C, H, W): the same whatever the
        resume point."""
        syn, real = (data.first_images(self.dirs[d], n, on_error=self.cfg.data.on_bad_shard)
                     for d in DOMAINS)  # fmt: skip
        return syn, real

    def skipped_totals(self) -> dict[str, float]:
        """What skip mode skipped so far, summed over ranks, by TensorBoard tag (a collective)."""
        keys = [(d, k) for d in sorted(self.skipped) for k in sorted(self.skipped[d])]
        counts = torch.tensor([self.skipped[d][k] for d, k in keys],
                              device=self.runtime.device, dtype=torch.float64)  # fmt: skip
        total = self.runtime.accelerator.reduce(counts, reduction="sum").tolist()
        return {f"data/skipped_{k}_{d}": v for (d, k), v in zip(keys, total, strict=True)}

    def close(self) -> None:
        for loader in self.loaders.values():
            loader.close()
