"""Reading shard sets for training, refining and evaluation: the two batch streams split by
rank and worker, their loaders, the built-in simulators' cached sets, and how stored pixels
(8-bit images, depth codes) become the [-1, 1] images the models see.

The loaders never go through ``accelerator.prepare`` (it would re-shard or broadcast them):
rank and world size are plain arguments.
"""

from distsim.data.builtin import builtin_shards_name, default_cache_dir, ensure_builtin_shards
from distsim.data.loaders import ShardLoader, first_images, make_epoch_loader, make_loader
from distsim.data.pixels import CODE_LEVELS, from_unit_range, to_unit_range
from distsim.data.shardsets import (
    SUPPORTED_IMAGE_DTYPES,
    OnError,
    ShardWarning,
    check_pair,
    index_shard_set,
    open_shards,
)
from distsim.data.streams import (
    BatchStream,
    EpochStream,
    Remainder,
    chunk_position,
    rank_batches,
    worker_batches,
)

__all__ = [
    "CODE_LEVELS",
    "SUPPORTED_IMAGE_DTYPES",
    "BatchStream",
    "EpochStream",
    "OnError",
    "Remainder",
    "ShardLoader",
    "ShardWarning",
    "builtin_shards_name",
    "check_pair",
    "chunk_position",
    "default_cache_dir",
    "ensure_builtin_shards",
    "first_images",
    "from_unit_range",
    "index_shard_set",
    "make_epoch_loader",
    "make_loader",
    "open_shards",
    "rank_batches",
    "to_unit_range",
    "worker_batches",
]
