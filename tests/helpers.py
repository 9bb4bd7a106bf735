"""Small helpers several tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distsim.config import load_config


def saved_settings(path: str | Path) -> dict[str, Any]:
    """A run's config.json as flat settings (the flags in underscores), preset included."""
    cfg = load_config(path)
    return cfg.flat() | {"preset": cfg.preset}


def scalars(run_dir: str | Path) -> dict[str, list[float]]:
    """Every scalar a run's TensorBoard log holds, by tag, in step order."""
    acc = EventAccumulator(str(Path(run_dir) / "tensorboard"))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
