"""The on-disk shard-set format, shared by the writer (``shards``) and reader (``distsim.data``).

A shard set is a directory holding ``shard-000000.tar``, ``shard-000001.tar``, ... and
``manifest.json``. The tars are plain WebDataset tars, but each tar *sample* is a block of up to
``block_size`` images, so a loader reads a few large members instead of many tiny ones:

    00000000.image.npy   (K, C, H, W) image_dtype
    00000000.gaze.npy    (K, 3) float32           one member per label
    00000001.image.npy   ...

Block numbers are global across the set. Every block of a shard holds exactly ``block_size``
images except the shard's last, which holds 1 to ``block_size``. Arrays are ``.npy`` bytes,
never pickles. The manifest is written last, so a directory without one is an incomplete
conversion and is refused.

The manifest vouches for the bytes twice: a sha256 per shard file (read whole by ``inspect`` or
``verify=True``) and, per block, a CRC32 of its members' data in file order (``block_crc32``),
which readers check each time they read a block, so a flipped byte never trains silently. Sets
written before block checksums existed have no ``block_crc32`` and are read unverified.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

FORMAT_NAME = "distsim-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_GLOB = "shard-*.tar"
IMAGE_KEY = "image"
IMAGE_DTYPES = ("uint8", "uint16", "float32")
LABEL_DTYPES = ("float32", "int64")

# Member names are "{key}.{name}.npy" and WebDataset splits them at the first dot, so label
# names must not contain dots.
_LABEL_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _tool_version() -> str:
    try:
        return metadata.version("distsim")
    except metadata.PackageNotFoundError:  # running from a source checkout
        return "0+unknown"


TOOL_VERSION = _tool_version()


class ShardError(ValueError):
    """A shard set on disk is missing, incomplete or corrupt. The message is one line."""


class UnverifiedShardsWarning(UserWarning):
    """A shard set's manifest has no block checksums (written before they existed): its blocks
    are read without checking their bytes. Reconverting the set adds them."""


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def block_key(block: int) -> str:
    return f"{block:08d}"


def check_label_name(name: str) -> None:
    if name == IMAGE_KEY or not _LABEL_NAME.fullmatch(name):
        raise ValueError(f"label name {name!r} must be letters, digits, '_' or '-' and not 'image'")


@dataclass(frozen=True)
class LabelSpec:
    shape: tuple[int, ...]  # per image, e.g. (3,) for a gaze vector
    dtype: str
    description: str = ""


@dataclass(frozen=True)
class ShardInfo:
    name: str
    count: int  # images
    blocks: int
    bytes: int
    sha256: str
    # CRC32 of each block's member data, in file order; None in sets written before them.
    block_crc32: tuple[int, ...] | None = None


@dataclass
class Manifest:
    count: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    image_dtype: str
    block_size: int
    labels: dict[str, LabelSpec]
    source: dict[str, Any]
    # False when labels exist only for evaluation (e.g. the simulator's "real" domain): training
    # code must not learn from them.
    labelled: bool
    shards: list[ShardInfo]
    created: str
    tool_version: str
    labels_for_evaluation_only: bool = False

    def to_json(self) -> str:
        d: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
        d.update(asdict(self))
        d["image_shape"] = list(self.image_shape)
        d["labels"] = {
            k: {"shape": list(s.shape), "dtype": s.dtype, "description": s.description}
            for k, s in self.labels.items()
        }
        for shard in d["shards"]:
            if shard["block_crc32"] is None:
                del shard["block_crc32"]  # as written before block checksums existed
            else:
                shard["block_crc32"] = list(shard["block_crc32"])
        return json.dumps(d, indent=2) + "\n"

    @property
    def block_checksums(self) -> bool:
        """Whether every block has a checksum (sets written before them have none)."""
        return all(s.block_crc32 is not None for s in self.shards)

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST_NAME) -> Manifest:
        """Parse and validate; any problem raises ShardError("<where>: <problem>")."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ShardError(f"{where}: invalid JSON: {e}") from None
        try:
            return cls._from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            problem = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            raise ShardError(f"{where}: {problem}") from None

    @classmethod
    def _from_dict(cls, d: Any) -> Manifest:
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        if d.get("format") != FORMAT_NAME:
            raise ValueError(f"format is {d.get('format')!r}, expected {FORMAT_NAME!r}")
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"format version {d.get('version')!r} is not supported "
                f"(this reader knows version {FORMAT_VERSION})"
            )
        image_shape = _int_tuple(d["image_shape"], "image_shape")
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape {list(image_shape)} is not [C, H, W]")
        if d["image_dtype"] not in IMAGE_DTYPES:
            raise ValueError(f"image_dtype {d['image_dtype']!r} is not one of {IMAGE_DTYPES}")
        labels = {}
        for name, spec in _typed(d["labels"], dict, "labels").items():
            check_label_name(name)
            if spec["dtype"] not in LABEL_DTYPES:
                raise ValueError(f"label {name} dtype {spec['dtype']!r} not in {LABEL_DTYPES}")
            shape = _int_tuple(spec["shape"], f"labels.{name}.shape")
            labels[name] = LabelSpec(shape, spec["dtype"], str(spec.get("description", "")))
        shards = [_shard_info(s) for s in _typed(d["shards"], list, "shards")]
        m = cls(
            count=_typed(d["count"], int, "count"),
            image_shape=image_shape,  # type: ignore[arg-type]
            image_dtype=d["image_dtype"],
            block_size=_typed(d["block_size"], int, "block_size"),
            labels=labels,
            source=_typed(d["source"], dict, "source"),
            labelled=_typed(d["labelled"], bool, "labelled"),
            shards=shards,
            created=_typed(d["created"], str, "created"),
            tool_version=_typed(d["tool_version"], str, "tool_version"),
            labels_for_evaluation_only=_typed(
                d.get("labels_for_evaluation_only", False), bool, "labels_for_evaluation_only"
            ),
        )
        m._check_whole()
        return m

    def _check_whole(self) -> None:
        """What no single field shows: the shards and counts must agree with each other.

        Readers size buffers from ``block_size`` and open ``<dir>/<name>`` for every entry, so a
        lie here would allocate without bound, read outside the set, or read a shard twice.
        """
        if self.block_size < 1:
            raise ValueError(f"block_size {self.block_size} must be positive")
        if self.count < 1 or not self.shards:
            raise ValueError(f"count {self.count} with {len(self.shards)} shards: the set is empty")
        seen: set[str] = set()
        for s in self.shards:
            _check_shard_name(s.name)
            if s.name in seen:
                raise ValueError(f"shard {s.name} is listed twice")
            seen.add(s.name)
            if s.count < 1 or s.blocks < 1 or s.bytes < 1:
                raise ValueError(
                    f"shard {s.name} has count {s.count}, blocks {s.blocks}, bytes {s.bytes}: "
                    "each must be positive"
                )
            # Every block but a shard's last is full, the last holds 1 to block_size images.
            if not (s.blocks - 1) * self.block_size < s.count <= s.blocks * self.block_size:
                raise ValueError(
                    f"shard {s.name} has {s.count} images in {s.blocks} blocks, which does not "
                    f"fit block_size {self.block_size}"
                )
            if s.block_crc32 is not None and len(s.block_crc32) != s.blocks:
                raise ValueError(
                    f"shard {s.name} has {len(s.block_crc32)} block checksums for {s.blocks} blocks"
                )
        if sum(s.count for s in self.shards) != self.count:
            raise ValueError(
                f"shard counts sum to {sum(s.count for s in self.shards)}, not {self.count}"
            )


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _shard_info(s: Any) -> ShardInfo:
    crc = s.get("block_crc32") if isinstance(s, dict) else None
    if crc is not None:
        crc = _typed(crc, list, "shards.block_crc32")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in crc):
            raise TypeError(f"field shards.block_crc32 should hold 32-bit unsigned ints, got {crc}")
        crc = tuple(crc)
    info = ShardInfo(
        name=_typed(s["name"], str, "shards.name"),
        count=_typed(s["count"], int, "shards.count"),
        blocks=_typed(s["blocks"], int, "shards.blocks"),
        bytes=_typed(s["bytes"], int, "shards.bytes"),
        sha256=_typed(s["sha256"], str, "shards.sha256"),
        block_crc32=crc,
    )
    if not _SHA256.fullmatch(info.sha256):
        raise ValueError(f"shard {info.name} sha256 {info.sha256!r} is not 64 hex digits")
    return info


def _check_shard_name(name: str) -> None:
    # A shard is a plain file of the set's own directory: an absolute path, "..", or a
    # subdirectory would make a reader open files outside the set, and convert delete them.
    if (
        name in ("", ".", "..", MANIFEST_NAME)
        or "/" in name
        or "\\" in name
        or "\0" in name
        or name.startswith(".")
    ):
        raise ValueError(f"shard name {name!r} is not a file name inside the set's directory")


def _typed(value: Any, kind: type, name: str) -> Any:
    # bool is an int in Python but not in a manifest.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"field {name} should be {kind.__name__}, got {value!r}")
    return value


def _int_tuple(value: Any, name: str) -> tuple[int, ...]:
    items = _typed(value, list, name)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in items):
        raise TypeError(f"field {name} should be a list of non-negative ints, got {value!r}")
    return tuple(items)


def read_manifest(directory: str | Path) -> Manifest:
    """Read and validate a shard set's manifest, checking that every listed shard exists."""
    root = Path(directory)
    if not root.is_dir():
        problem = "is not a directory" if root.exists() else "does not exist"
        raise ShardError(f"{root}: shard directory {problem}")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(f"{root} has no {MANIFEST_NAME}: conversion incomplete or not a shard set")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: cannot read: {e}") from None
    manifest = Manifest.from_json(text, where=str(path))
    for info in manifest.shards:
        check_shard_file(root, info)
    return manifest


def check_shard_file(root: Path, info: ShardInfo) -> Path:
    """The shard's path, if it exists with the size the manifest records (a cheap truncation
    check); ShardError naming it otherwise."""
    shard = root / info.name
    if not shard.is_file():
        raise ShardError(f"{shard}: listed in {MANIFEST_NAME} but missing")
    size = shard.stat().st_size
    if size != info.bytes:
        raise ShardError(
            f"{shard}: {size} bytes but {MANIFEST_NAME} says {info.bytes} (truncated?)"
        )
    return shard


def block_crc32(members: Iterable[bytes | memoryview]) -> int:
    """The checksum the manifest keeps per block: CRC32 of the members' data, chained in file
    order (tar headers are not included: tarfile checks their own checksums when indexing)."""
    crc = 0
    for data in members:
        crc = zlib.crc32(data, crc)
    return crc


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --- blocks -------------------------------------------------------------------------------------


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_block(images: np.ndarray, labels: dict[str, np.ndarray]) -> dict[str, bytes]:
    """Encode one block as {"image.npy": ..., "<label>.npy": ...}, image first, labels in order.

    images: (K, C, H, W); each label: (K, *label_shape).
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"a block holds (K, C, H, W) images with K >= 1, got {images.shape}")
    sample = {f"{IMAGE_KEY}.npy": _npy_bytes(images)}
    for name, values in labels.items():
        check_label_name(name)
        if len(values) != len(images):
            raise ValueError(f"label {name} has {len(values)} rows for {len(images)} images")
        sample[f"{name}.npy"] = _npy_bytes(values)
    return sample


def decode_block(
    sample: dict[str, bytes], manifest: Manifest | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Decode a block (a WebDataset sample: "__key__"-style entries are ignored).

    With a manifest, the image and every label present are checked against it. A sample may
    carry a subset of the labels (a loader reads only the ones it needs); ``index_shard``
    checks that each block on disk has all of them.
    """
    images = None
    labels: dict[str, np.ndarray] = {}
    for member, data in sample.items():
        if member.startswith("__"):
            continue
        name, dot, ext = member.partition(".")
        if ext != "npy":
            raise ShardError(f"unexpected member {member!r} (expected <name>.npy)")
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ShardError(f"{member} does not decode: {e}") from None
        if name == IMAGE_KEY:
            images = array
        else:
            labels[name] = array
    if images is None:
        raise ShardError("block has no image.npy")
    count = len(images)
    if manifest is not None:
        want = (manifest.image_dtype, tuple(manifest.image_shape))
        if (images.dtype.name, images.shape[1:]) != want or not 1 <= count <= manifest.block_size:
            raise ShardError(
                f"image.npy is {images.dtype.name} {images.shape}, expected up to "
                f"{manifest.block_size} x {want[1]} {want[0]}"
            )
    for name, values in labels.items():
        spec = manifest.labels.get(name) if manifest is not None else None
        if manifest is not None and spec is None:
            raise ShardError(f"label {name} is not in the manifest")
        if len(values) != count or (
            spec is not None and (values.dtype.name, values.shape[1:]) != (spec.dtype, spec.shape)
        ):
            expected = f"({count}, *{spec.shape}) {spec.dtype}" if spec else f"{count} rows"
            raise ShardError(
                f"{name}.npy is {values.dtype.name} {values.shape}, expected {expected}"
            )
    return images, labels


# --- random access to blocks in a tar -----------------------------------------------------------


@dataclass(frozen=True)
class BlockRef:
    """Where one block's members lie in its shard, so it can be read with one seek + read."""

    shard: int  # index into Manifest.shards
    key: str
    count: int  # images in the block
    start: int  # file offset of the first member's data
    length: int  # bytes from start to the end of the last member's data
    members: tuple[tuple[str, int, int], ...]  # (member name, offset from start, size)
    crc32: int | None = None  # the manifest's block checksum (None: written before them)


def index_shard(path: str | Path, shard: int, manifest: Manifest) -> list[BlockRef]:
    """List the blocks of one shard, checking layout and counts against the manifest.

    Every block but the shard's last must hold ``block_size`` images (the last 1 to
    ``block_size``): checked here, before any reader sizes a buffer from ``block_size``.
    """
    info = manifest.shards[shard]
    need = {f"{IMAGE_KEY}.npy", *(f"{name}.npy" for name in manifest.labels)}
    groups: dict[str, list[tuple[str, int, int]]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, _, member = m.name.partition(".")
                groups.setdefault(key, []).append((member, m.offset_data, m.size))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ShardError(f"{path}: not a readable tar: {e}") from None

    blocks = []
    with open(path, "rb") as f:
        size = f.seek(0, io.SEEK_END)
        for key, members in groups.items():
            names = {m[0] for m in members}
            if names != need or len(members) != len(need):
                raise ShardError(
                    f"{path}: block {key} has members {sorted(names)}, expected {sorted(need)}"
                )
            start = min(m[1] for m in members)
            end = max(m[1] + m[2] for m in members)
            if end > size:
                raise ShardError(f"{path}: block {key} runs past the end of the file (truncated)")
            image = next(m for m in members if m[0] == f"{IMAGE_KEY}.npy")
            count = _npy_rows(f, image[1], path, key)
            rel = tuple((name, off - start, n) for name, off, n in members)
            blocks.append(BlockRef(shard, key, count, start, end - start, rel))
    total = sum(b.count for b in blocks)
    if len(blocks) != info.blocks or total != info.count:
        raise ShardError(
            f"{path}: holds {len(blocks)} blocks / {total} images but "
            f"{MANIFEST_NAME} says {info.blocks} / {info.count}"
        )
    for i, b in enumerate(blocks):
        if b.count > manifest.block_size or (i < len(blocks) - 1 and b.count < manifest.block_size):
            raise ShardError(
                f"{path}: block {b.key} holds {b.count} images, which disagrees with "
                f"{MANIFEST_NAME}'s block_size {manifest.block_size}"
            )
    if info.block_crc32 is not None:
        # Blocks are listed in file order, as the writer wrote them and their checksums.
        blocks = [replace(b, crc32=crc) for b, crc in zip(blocks, info.block_crc32, strict=True)]
    return blocks


def _npy_rows(f: BinaryIO, offset: int, path: str | Path, key: str) -> int:
    # Reading just the .npy header gives the block's image count without loading the pixels.
    f.seek(offset)
    try:
        version = np.lib.format.read_magic(f)
        header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape = header(f)[0]
    except (ValueError, OSError, EOFError) as e:
        raise ShardError(f"{path}: block {key} image.npy has a bad header: {e}") from None
    if len(shape) != 4 or shape[0] < 1:
        raise ShardError(f"{path}: block {key} image.npy has shape {shape}, expected (K, C, H, W)")
    return int(shape[0])


def read_block(
    f: BinaryIO, ref: BlockRef, names: tuple[str, ...] | None = None, *, verify: bool = True
) -> dict[str, bytes]:
    """Read a block's raw members (all, or only ``names`` such as ("image.npy", "gaze.npy")).

    With ``verify`` (the default) and a checksum in ``ref``, the CRC32 of all its members is
    checked first, so corrupt bytes are never decoded (a flipped .npy header could ask for any
    allocation). ShardError names the problem; the caller adds shard and block.
    """
    f.seek(ref.start)
    data = f.read(ref.length)
    if len(data) != ref.length:
        raise ShardError(f"block {ref.key} is truncated")
    if verify and ref.crc32 is not None:
        view = memoryview(data)  # slices of a memoryview are not copies
        got = block_crc32(view[off : off + n] for _, off, n in ref.members)
        if got != ref.crc32:
            raise ShardError(
                f"crc32 {got:08x} of its data differs from {MANIFEST_NAME}'s {ref.crc32:08x} "
                "(corrupt)"
            )
    return {
        name: data[off : off + n] for name, off, n in ref.members if names is None or name in names
    }
