"""A config field with its command-line help and its check beside it.

    width: int = option(64, "refiner channels (paper: 64)", flag="refiner-width", check=positive)

``flag`` is the command-line name without its dashes (``--refiner-width``); its underscore
form (``refiner_width``) is the field's name wherever the config is seen flat: in presets,
``make_config`` overrides and a resumed run's list of changes. A check returns what is wrong
with a value (to follow "--flag ..."), or None.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

Check = Callable[[Any], str | None]


def option(
    default: Any,
    help: str,  # noqa: A002 - argparse's word for it
    *,
    flag: str,
    check: Check | None = None,
    architecture: bool = False,
) -> Any:
    """A dataclass field: `default`, the flag's `help`, its `check`, and whether it decides the
    models' shapes (`architecture`: a resume cannot change it)."""
    metadata = {"help": help, "flag": flag, "check": check, "architecture": architecture}
    if isinstance(default, list | dict):
        raise TypeError("use a tuple for a sequence default")
    return dataclasses.field(default=default, metadata=metadata)


def positive(value: Any) -> str | None:
    return None if value > 0 else f"must be positive, got {value}"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value}"


def finite_non_negative(value: float) -> str | None:
    return finite(value) or non_negative(value)


def finite(value: float) -> str | None:
    return None if math.isfinite(value) else f"must be a finite number, got {value}"


def finite_positive(value: float) -> str | None:
    return finite(value) or positive(value)


def one_of(*allowed: Any) -> Check:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {allowed}, got {value!r}"

    check.allowed = allowed  # type: ignore[attr-defined]  # for --help and tests
    return check


def in_range(lo: float, hi: float) -> Check:
    """lo <= value < hi."""

    def check(value: float) -> str | None:
        return None if lo <= value < hi else f"must be in [{lo:g}, {hi:g}), got {value}"

    return check


def odd_kernel(value: int) -> str | None:
    if value <= 0:
        return f"must be positive, got {value}"
    return None if value % 2 else f"must be odd (same padding), got {value}"


def odd_window(value: int) -> str | None:
    return None if value >= 1 and value % 2 else f"must be odd and >= 1, got {value}"


def four_widths(value: Sequence[int]) -> str | None:
    if any(w <= 0 for w in value):
        return f"must all be positive, got {value}"
    return None if len(value) == 4 else f"needs 4 widths, got {value}"


# Seeds are mixed into generator seeds with multipliers (x 1_000_003 + rank, and the like):
# up to 2^31 - 1 they stay inside torch's 64-bit seeds.
MAX_SEED = 2**31 - 1


def seed_range(value: int) -> str | None:
    return None if 0 <= value <= MAX_SEED else f"must be in [0, {MAX_SEED}], got {value}"
