"""Small helpers several tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distsim.config import load_config


def saved_settings(path: str | Path) -> dict[str, Any]:
    """A run's config.json as flat settings (the flags in underscores), preset included."""
    cfg = load_config(path)
    return cfg.flat() | {"preset": cfg.preset}
