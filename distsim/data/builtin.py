"""The built-in simulators' shard sets, rendered once into a cache and reused."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from shards.format import MANIFEST_NAME, ShardError


def default_cache_dir() -> Path:
    return Path(os.environ.get("DISTSIM_CACHE") or Path.home() / ".cache" / "distsim")


def builtin_shards_name(sim: str, domain: str, count: int, seed: int, size: int = 224) -> str:
    """The cache directory name of a built-in shard set. The simulator's version is in it, so
    a changed renderer never reuses stale shards; hand sets also name their crop size."""
    if sim == "eyes":
        from shards.sim.eyes import SIM_VERSION

        return f"sim-eyes-v{SIM_VERSION}-{domain}-n{count}-s{seed}"
    if sim == "hands":
        from shards.sim.hands import SIM_VERSION as HANDS_VERSION

        return f"sim-hands-v{HANDS_VERSION}-{domain}-{size}px-n{count}-s{seed}"
    raise ValueError(f"unknown built-in simulator {sim!r}; expected eyes or hands")


def ensure_builtin_shards(
    domain: str,
    count: int,
    seed: int,
    cache_dir: Path | None = None,
    *,
    progress: bool = True,
    sim: str = "eyes",
    size: int = 224,
) -> Path:
    """Shard set of a built-in simulator (``sim``: eyes, or hands with ``size`` x ``size``
    crops), created under ``cache_dir`` on first use (with ``progress``, naming the set it
    makes and how far along it is, also in a log).

    The trainer calls this on the main process before the other ranks, so normally only one
    process converts. Creation is still safe under races: each caller writes into its own temp
    directory and renames it into place; a loser of the rename uses the winner's set.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / builtin_shards_name(sim, domain, count, seed, size)
    if (final / MANIFEST_NAME).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        # The writer side is needed only on a cache miss. Progress names the final directory.
        if sim == "hands":
            from shards.sources.sim_hands import convert_sim_hands

            convert_sim_hands(
                tmp, domain, count, seed, size=size, progress=progress, shown_as=final
            )
        else:
            from shards.sources.sim_eyes import convert_sim_eyes

            convert_sim_eyes(tmp, domain, count, seed, progress=progress, shown_as=final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MANIFEST_NAME).is_file():
                raise ShardError(
                    f"{final}: exists but is not a complete shard set; delete it to rebuild"
                ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename won
    return final
