"""Opening a shard set (``shards.format``) for reading: its manifest, its shards' index, and
what to do about a bad shard.

Bad data (``on_error``): by default a missing, truncated or corrupt shard raises a one-line
``ShardError`` naming the file, when indexing finds it (every tar header is read then). With
``on_error="skip"`` such a shard is dropped with a ``ShardWarning`` naming it; the streams
(``distsim.data.streams``) then skip blocks that fail to decode and count what they lose.
Sets written before block checksums existed load with one ``UnverifiedShardsWarning`` per
set and process, and are read unverified.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from shards.format import (
    IMAGE_KEY,
    MANIFEST_NAME,
    BlockRef,
    Manifest,
    ShardError,
    UnverifiedShardsWarning,
    check_shard_file,
    decode_block,
    file_sha256,
    index_shard,
    read_block,
    read_manifest,
)

# numpy dtype name -> torch dtype the loader yields.
SUPPORTED_IMAGE_DTYPES = {"uint8": torch.uint8, "uint16": torch.uint16, "float32": torch.float32}

OnError = Literal["raise", "skip"]
_ON_ERROR = ("raise", "skip")


class ShardWarning(UserWarning):
    """A shard or block was skipped under ``on_error="skip"``; the message names the file."""


# Shard sets already noted as unverified in this process (resolved paths): once each.
_NOTED_UNVERIFIED: set[str] = set()


def check_on_error(on_error: str) -> None:
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")


def open_shards(directory: str | Path, *, on_error: OnError = "raise") -> Manifest:
    """Read a shard set's manifest; ShardError (a ValueError) with one line on any problem.

    With ``on_error="skip"`` only the manifest itself must be valid: shards that are missing or
    whose size differs from the manifest are left for the streams to drop with a warning. A
    manifest without block checksums (written before them) gives one ``UnverifiedShardsWarning``
    per set and process.
    """
    check_on_error(on_error)
    if on_error == "raise":
        manifest = read_manifest(directory)
    else:
        path = Path(directory) / MANIFEST_NAME
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            # read_manifest words every "cannot even start" case (no dir, no manifest) best.
            read_manifest(directory)
            raise  # unreachable unless the file appeared meanwhile
        manifest = Manifest.from_json(text, where=str(path))
    if manifest.image_dtype not in SUPPORTED_IMAGE_DTYPES:
        raise ShardError(
            f"{directory}: image dtype {manifest.image_dtype} is not supported by "
            f"the loader ({', '.join(SUPPORTED_IMAGE_DTYPES)})"
        )
    key = str(Path(directory).resolve())
    if not manifest.block_checksums and key not in _NOTED_UNVERIFIED:
        _NOTED_UNVERIFIED.add(key)
        warnings.warn(
            f"{directory}: {MANIFEST_NAME} has no block checksums (written by an older shards): "
            "its blocks are read unverified; write it again (convert, refine) to add them",
            UnverifiedShardsWarning,
            2,
        )
    return manifest


def check_pair(
    synthetic: Manifest, synthetic_dir: str | Path, real: Manifest, real_dir: str | Path
) -> None:
    """Refuse a synthetic/real pair whose images cannot go through the same refiner."""

    def shape(m: Manifest) -> str:
        return "x".join(map(str, m.image_shape))

    if synthetic.image_shape != real.image_shape:
        raise ValueError(
            f"real shards {real_dir} have images {shape(real)} but synthetic shards "
            f"{synthetic_dir} have {shape(synthetic)}; convert them to the same size"
        )
    if synthetic.image_dtype != real.image_dtype:
        raise ValueError(
            f"real shards {real_dir} have {real.image_dtype} images but synthetic "
            f"shards {synthetic_dir} have {synthetic.image_dtype}; convert them to "
            "the same dtype"
        )


def index_shard_set(
    directory: str | Path,
    manifest: Manifest,
    *,
    on_error: OnError = "raise",
    verify: bool = False,
) -> tuple[list[BlockRef], list[str]]:
    """Index every shard: (blocks in set order, names of shards skipped).

    Checks each shard exists, has the manifest's byte size (and sha256 with ``verify``: the only
    way to catch a flipped pixel, at the cost of reading every byte once) and a tar layout that
    matches the manifest. With ``on_error="skip"`` a failing shard is dropped with a
    ``ShardWarning``; if none is left, ShardError either way.
    """
    check_on_error(on_error)
    root = Path(directory)
    blocks: list[BlockRef] = []
    skipped: list[str] = []
    for i, info in enumerate(manifest.shards):
        path = root / info.name
        try:
            check_shard_file(root, info)
            if verify and file_sha256(path) != info.sha256:
                raise ShardError(f"{path}: sha256 differs from {MANIFEST_NAME} (corrupt)")
            refs = index_shard(path, i, manifest)
        except (ShardError, OSError) as e:
            message = str(e) if isinstance(e, ShardError) else f"{path}: cannot read: {e}"
            if on_error == "raise":
                raise ShardError(message) from None
            warnings.warn(f"{message}; skipping its {info.count} images", ShardWarning, 2)
            skipped.append(info.name)
            continue
        blocks.extend(refs)
    if not blocks:
        raise ShardError(f"{root}: no readable shard left ({len(skipped)} skipped)")
    return blocks, skipped


def first_block(directory: str | Path, manifest: Manifest) -> np.ndarray:
    """The images of a shard set's first block, (n, C, H, W) as stored: a cheap look at what
    a set holds, that draws no random numbers (a DataLoader's iterator would)."""
    path = Path(directory) / manifest.shards[0].name
    ref = index_shard(path, 0, manifest)[0]
    with open(path, "rb") as f:
        return decode_block(read_block(f, ref, (f"{IMAGE_KEY}.npy",)), manifest)[0]
