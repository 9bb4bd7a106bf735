"""The train.py command line: every setting is a flag (``batch_size`` -> ``--batch-size``); a
preset fills the settings first, then flags override them."""

from __future__ import annotations

import argparse
import typing
from typing import Any

from distsim.config.presets import PRESETS
from distsim.config.schema import FIELDS, GROUPS, Config


def make_config(preset: str = "cpu", **overrides: Any) -> Config:
    """`preset`'s config with flat `overrides` (``FIELDS``' names), validated."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    cfg = Config.from_flat(preset, **{**PRESETS[preset], **overrides})
    cfg.validate()
    return cfg


def _parse_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _field_type(key: str) -> Any:
    f = FIELDS[key]
    return typing.get_type_hints(GROUPS[f.group])[f.name]


def build_parser(preset: str = "cpu") -> argparse.ArgumentParser:
    """The train.py command line; each flag's help shows `preset`'s value (the preset a bare
    `train.py` runs with, or the one given by --preset)."""
    parser = argparse.ArgumentParser(
        prog="distsim.train",
        description="Train a SimGAN refiner (Shrivastava et al. 2017, Algorithm 1).",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="named preset; other flags override it (default: cpu)")  # fmt: skip
    defaults = make_config(preset) if preset in PRESETS else Config()
    for key, f in FIELDS.items():
        typ, default = _field_type(key), defaults.get(key)
        shown = f" ({preset}: {default})"
        if typ is bool:
            parser.add_argument(f"--{f.flag}", dest=key, action=argparse.BooleanOptionalAction,
                                default=None, help=f.help + shown)  # fmt: skip
        elif typing.get_origin(typ) is tuple:
            values = ",".join(map(str, default))
            parser.add_argument(
                f"--{f.flag}",
                dest=key,
                type=_parse_tuple,
                default=None,
                metavar="N,N,...",
                help=f"{f.help} ({preset}: {values})",
            )
        else:
            parser.add_argument(f"--{f.flag}", dest=key, type=typ, default=None,
                                help=f.help + (shown if default != "" else ""))  # fmt: skip
    return parser


def _preset_in(argv: list[str] | None) -> str:
    """The --preset an argument list names (cpu if none or an unknown one: the full parser
    then reports the error)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--preset", default="cpu")
    known, _ = early.parse_known_args(argv)
    return known.preset if known.preset in PRESETS else "cpu"


def resolve_given(argv: list[str] | None = None) -> tuple[Config, set[str]]:
    """The config `argv` asks for (preset first, then explicit flags), and the flat names of
    the settings it set explicitly (a resume takes every other setting from the checkpoint it
    resumes). SystemExit on bad flags, ValueError on bad values."""
    args = build_parser(_preset_in(argv)).parse_args(argv)
    given = {k for k, v in vars(args).items() if v is not None}
    preset = args.preset if args.preset is not None else "cpu"
    return make_config(preset, **{k: getattr(args, k) for k in given - {"preset"}}), given


def resolve(argv: list[str] | None = None) -> Config:
    """``resolve_given`` without the names."""
    return resolve_given(argv)[0]
