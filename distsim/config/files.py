"""A run's config.json: written next to its checkpoints, read back to resume or refine it.

config.json holds the groups as nested objects (``Config.to_json``). Runs made before the
groups existed wrote one flat object; both load. A setting a run's config lacks takes the value
that reproduces what runs did before it existed (``LEGACY``): a default may change later, what
an old run did may not. A run made with a setting distsim no longer has is refused in one line.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from distsim.config.schema import FIELDS, GROUPS, Config

# Values that reproduce what runs did before a setting existed.
LEGACY: dict[str, Any] = {
    "refiner_output": "tanh",
    "refiner_window": 3,
    "refiner_slack": 0.05,
    "refiner_dropout": False,
    "builtin_sim": "eyes",
    "builtin_size": 224,
    "builtin_real": "real",
    "refiner_noise": 0,
    "ema_halflife": 0.0,
    "channels_last": False,
    "compile": False,
    "compile_mode": "default",
    "realism_images": 0,
    "deterministic": False,
    "history_mode": "replicated",
    "adam_beta1": 0.9,
}

# Settings distsim had and measured to gain nothing: the value that meant "off", and why
# they went. A run made with another value cannot be rebuilt.
REMOVED: dict[str, tuple[Any, str]] = {
    "refiner_highpass": (0.0, "a blur taken off the refiner's change gained the estimator nothing"),
    "refiner_edge": (0.0, "drop-outs gated by a depth edge gained the estimator nothing"),
    "disc_blur": (0.0, "a blur on the discriminator's inputs gained nothing"),
    "disc_highpass": (0.0, "a high-pass on the discriminator's inputs gained nothing"),
}
REMOVED_CHOICES: dict[str, dict[Any, str]] = {
    "refiner_output": {
        "residual": "its unbounded correction ran away under the clamp",
        "bounded": "local_range replaced it for depth; no preset used it",
    },
}


def _flat(saved: dict[str, Any]) -> dict[str, Any]:
    """A config.json's settings by flat name, whichever form it has."""
    if not any(isinstance(saved.get(group), dict) for group in GROUPS):
        return dict(saved)  # written before the groups: flat already
    flat = {k: v for k, v in saved.items() if k not in GROUPS}
    by_place = {(f.group, f.name): key for key, f in FIELDS.items()}
    for group in GROUPS:
        for name, value in saved.get(group, {}).items():
            flat[by_place.get((group, name), f"{group}.{name}")] = value
    return flat


def load_config(path: str | Path) -> Config:
    """Read a run's config.json back. ValueError, one line naming the file, for a run made
    with a setting distsim no longer has, or one it does not know."""
    data = LEGACY | _flat(json.loads(Path(path).read_text()))
    data.setdefault("lr_r_pretrain", data.get("lr_r", FIELDS["lr_r"].spec.default))
    for name, (off, why) in REMOVED.items():
        value = data.pop(name, off)
        if value != off:
            raise ValueError(f"{path}: made with --{name.replace('_', '-')} {value}, which "
                             f"distsim no longer has ({why}); use distsim 0.1.0 for this "
                             "run")  # fmt: skip
    for name, gone in REMOVED_CHOICES.items():
        if data.get(name) in gone:
            raise ValueError(f"{path}: made with --{name.replace('_', '-')} {data[name]}, which "
                             f"distsim no longer has ({gone[data[name]]}); use distsim 0.1.0 for "
                             "this run")  # fmt: skip
    preset = data.pop("preset", "cpu")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown} (made by a newer distsim?)")
    for key in data:
        f = FIELDS[key]
        if typing.get_origin(typing.get_type_hints(GROUPS[f.group])[f.name]) is tuple:
            data[key] = tuple(data[key])
    return Config.from_flat(preset, **data)


__all__ = ["LEGACY", "REMOVED", "REMOVED_CHOICES", "load_config"]
