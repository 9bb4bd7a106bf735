"""The run's data: the synthetic and real shard sets, one endless batch stream per domain
(started where the run left off), the fixed images grids and the realism score show, and what
a skip-mode run skipped.

SimGAN never reads a label: the streams are images only. The loaders never go through
``accelerator.prepare`` (it would re-shard or broadcast them); each rank reads its own split.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from distsim import data
from distsim.config import Config
from distsim.data.pixels import to_unit_range
from distsim.data.shardsets import first_block
from distsim.training.runtime import Runtime
from shards.format import Manifest

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
        meant = cfg.data.builtin_sim == "hands"  # the kind of data the settings are for
        if self.depth != meant:
            kind, other = ("uint16 depth crops", "8-bit images") if self.depth else (
                f"{syn.image_dtype} images", "depth")  # fmt: skip
            fix = ("train depth with --preset hands-cpu or hands, or pass --builtin-sim hands "
                   "to keep these settings" if self.depth else "train images with --preset "
                   "cpu or eyes, or pass --builtin-sim eyes to keep these settings")  # fmt: skip
            raise ValueError(
                f"{self.dirs['synthetic']}: {kind}, but --preset {cfg.preset}'s settings are for "
                f"{other} (--builtin-sim {cfg.data.builtin_sim}); {fix}"
            )
        if self.depth and runtime.main:
            self._warn_if_invalid(syn)
        self.loaders: dict[str, data.ShardLoader] = {}
        # What skip mode dropped, by domain: shard names, and (shard, start, images) of bad
        # blocks, each once however many workers and ranks met it.
        self.bad_shards: dict[str, set[str]] = {domain: set() for domain in DOMAINS}
        self.bad_blocks: dict[str, set[tuple[int, int, int]]] = {d: set() for d in DOMAINS}
        self.syn: Iterator[torch.Tensor] = iter(())
        self.real: Iterator[torch.Tensor] = iter(())

    def _warn_if_invalid(self, manifest: Manifest) -> None:
        """A simulator never fails to measure: invalid pixels (code 0) in synthetic crops are
        renders converted as sensor depth, whose empty space the refiner would then fill with
        depths of its own."""
        codes = first_block(self.dirs["synthetic"], manifest)  # (n, 1, S, S)
        invalid = float((codes == 0).mean())
        if invalid > 0:
            print(
                f"distsim.train: warning: {self.dirs['synthetic']}: {100 * invalid:.1f}% of its "
                f"first {len(codes)} crops' pixels are invalid (code 0), which renders never "
                "are: renders converted as sensor depth? (shards convert nyu --depth synth)",
                file=sys.stderr, flush=True,
            )  # fmt: skip

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
            self.bad_shards[domain] = set(self.loaders[domain].dataset.skipped_shards)
        self.syn = self._batches("synthetic")
        self.real = self._batches("real")

    def _batches(self, domain: str) -> Iterator[torch.Tensor]:
        """Float images on the device; notes the blocks the loader skipped (skip mode) in
        ``bad_blocks[domain]``."""
        bad = self.bad_blocks[domain]
        for batch in self.loaders[domain]:
            bad.update(tuple(b) for b in batch.get("skipped_block_ids", ()))
            yield to_unit_range(batch["image"].to(self.runtime.device, non_blocking=True))

    def first_images(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` images of each set as stored, (n, C, H, W): the same whatever the
        resume point."""
        syn, real = (data.first_images(self.dirs[d], n, on_error=self.cfg.data.on_bad_shard)
                     for d in DOMAINS)  # fmt: skip
        return syn, real

    def skipped_totals(self) -> dict[str, float]:
        """What skip mode skipped so far on any rank, each shard and block once, by
        TensorBoard tag (a collective)."""
        mine = (self.bad_shards, self.bad_blocks)
        everyone = [mine]
        if self.runtime.world > 1:
            everyone = [None] * self.runtime.world
            torch.distributed.all_gather_object(everyone, mine, group=self.runtime.control)
        totals = {}
        for d in DOMAINS:
            shards = set().union(*(shards[d] for shards, _ in everyone))
            blocks = set().union(*(blocks[d] for _, blocks in everyone))
            totals[f"data/skipped_blocks_{d}"] = float(len(blocks))
            totals[f"data/skipped_images_{d}"] = float(sum(n for _, _, n in blocks))
            totals[f"data/skipped_shards_{d}"] = float(len(shards))
        return totals

    def close(self) -> None:
        for loader in self.loaders.values():
            loader.close()
