"""Training configuration: nested dataclasses by component (``schema``), each field's help and
check beside it (``options``), named presets (``presets``), the command line (``cli``) and a
run's config.json (``files``). Every run writes its resolved config next to its checkpoints,
so it can always be reproduced from its directory.
"""

from distsim.config.cli import build_parser, make_config, resolve, resolve_given
from distsim.config.files import load_config
from distsim.config.presets import PRESETS
from distsim.config.schema import (
    ARCHITECTURE,
    BUILTIN_REAL_DOMAINS,
    FIELDS,
    HAND_REAL_DOMAINS,
    REAL_DOMAINS,
    Config,
)

__all__ = [
    "ARCHITECTURE",
    "BUILTIN_REAL_DOMAINS",
    "FIELDS",
    "HAND_REAL_DOMAINS",
    "PRESETS",
    "REAL_DOMAINS",
    "Config",
    "build_parser",
    "load_config",
    "make_config",
    "resolve",
    "resolve_given",
]
