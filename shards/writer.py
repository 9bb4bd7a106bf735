"""Write a shard set: blocks of images + labels into tar shards, then the manifest, last."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from shards.format import (
    FORMAT_NAME,
    IMAGE_DTYPES,
    LABEL_DTYPES,
    MANIFEST_NAME,
    TOOL_VERSION,
    LabelSpec,
    Manifest,
    ShardInfo,
    block_crc32,
    block_key,
    check_label_name,
    encode_block,
    file_sha256,
    shard_name,
)

LabelArg = tuple[tuple[int, ...], str, str] | LabelSpec


# Written before each new shard file is created and removed once the manifest is: the names of
# the files this writer may have left here, so a rerun after an interruption (even SIGKILL)
# deletes exactly those. Its temp file, like the manifest's, matches _TEMP_GLOB.
JOURNAL_NAME = f".{MANIFEST_NAME}.writing"
_TEMP_GLOB = f".{MANIFEST_NAME}.*.tmp"
# The only names this writer gives shards: a manifest listing anything else cannot make it
# delete that file.
_SHARD_NAME = re.compile(r"shard-\d{6,}\.tar")


class ShardSetWriter:
    """Context manager that writes a shard set into ``out_dir``.

    On entry the shard set already there is removed: the manifest first (so an interrupted
    rewrite is never mistaken for a complete set), then the shards it lists, the shards an
    interrupted run recorded in ``JOURNAL_NAME``, and this tool's temp files; nothing else is
    ever deleted or replaced. A directory holding other (non-hidden) files and no shard set is
    refused unless ``overwrite`` (its files are kept), and so is a ``manifest.json`` or a
    ``shard-NNNNNN.tar`` that no manifest written here vouches for, even with ``overwrite``.
    The manifest is written only when the with-block ends without an exception; partial shards
    left behind by an error are refused by every reader, and a rerun removes them. Tar headers
    carry fixed mtime/uid/gid/mode, so equal inputs give byte-identical shards.

    A shard closes after ``shard_size`` images or, with ``shard_bytes``, after the first block
    that takes it to at least that many bytes, whichever comes first.
    """

    def __init__(
        self,
        out_dir: str | Path,
        image_shape: tuple[int, ...],
        image_dtype: str | np.dtype,
        labels: dict[str, LabelArg],
        source: dict[str, Any],
        shard_size: int = 50_000,
        block_size: int = 256,
        *,
        shard_bytes: int | None = None,
        labelled: bool = True,
        labels_for_evaluation_only: bool = False,
        overwrite: bool = False,
    ) -> None:
        shape = tuple(int(s) for s in image_shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image_shape {image_shape} is not (C, H, W) or (H, W)")
        self.image_shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.image_dtype = np.dtype(image_dtype).name
        if self.image_dtype not in IMAGE_DTYPES:
            raise ValueError(f"image dtype {self.image_dtype} is not one of {IMAGE_DTYPES}")
        self.labels: dict[str, LabelSpec] = {}
        for name, spec in labels.items():
            check_label_name(name)
            if not isinstance(spec, LabelSpec):
                spec = LabelSpec(tuple(int(s) for s in spec[0]), np.dtype(spec[1]).name, spec[2])
            if spec.dtype not in LABEL_DTYPES:
                raise ValueError(f"label {name} dtype {spec.dtype} is not one of {LABEL_DTYPES}")
            self.labels[name] = spec
        json.dumps(source)  # fail now, not after an hour of conversion
        if shard_size < 1 or block_size < 1:
            raise ValueError(f"shard_size {shard_size} and block_size {block_size} must be >= 1")
        if shard_bytes is not None and shard_bytes < 1:
            raise ValueError(f"shard_bytes {shard_bytes} must be >= 1")
        self.out_dir = Path(out_dir)
        self.source = dict(source)
        self.shard_size = shard_size
        self.block_size = block_size
        self.shard_bytes = shard_bytes
        self.labelled = labelled
        self.labels_for_evaluation_only = labels_for_evaluation_only

        self._shards: list[ShardInfo] = []
        self._file: BinaryIO | None = None
        self._tar: tarfile.TarFile | None = None
        self._shard_count = 0  # images in the open shard
        self._shard_blocks = 0
        self._shard_crc32: list[int] = []  # checksums of the open shard's blocks
        self._blocks = 0  # global block number
        self._pending: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        self._pending_count = 0
        self._closed = False
        self.manifest: Manifest | None = None  # set by close()
        self._written: list[str] = []  # shard files created so far, as in the journal
        self._remove_old(overwrite)

    def _remove_old(self, overwrite: bool) -> None:
        """Delete what a previous run of this tool left in ``out_dir``, and nothing else."""
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise ValueError(f"{out}: exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        listed = _names_written(out / MANIFEST_NAME, "shards")
        pending = _names_written(out / JOURNAL_NAME, "writing")
        ours = {*(listed or ()), *(pending or ())}
        temps = {p.name for p in out.glob(_TEMP_GLOB)}
        others = sorted(
            p.name
            for p in out.iterdir()
            if p.name not in {*ours, *temps, MANIFEST_NAME, JOURNAL_NAME}
        )
        visible = [name for name in others if not name.startswith(".")]
        if listed is None and pending is None and visible and not overwrite:
            shown = ", ".join(visible[:3]) + (", ..." if len(visible) > 3 else "")
            raise ValueError(
                f"{out}: not empty ({shown}) and not a shard set; --overwrite writes into it "
                "anyway, keeping those files"
            )
        clash = [name for name in others if _SHARD_NAME.fullmatch(name)]
        if clash:
            raise ValueError(
                f"{out / clash[0]}: no manifest written here lists it (an older shards' "
                "interrupted run, or not ours): move it away; shards replaces only files it wrote"
            )
        # Recorded before anything is deleted, so an interruption now is cleaned up by a rerun.
        self._write_journal(sorted(name for name in ours if (out / name).exists()))
        (out / MANIFEST_NAME).unlink(missing_ok=True)
        for name in sorted(ours):
            (out / name).unlink(missing_ok=True)
        for name in temps:
            (out / name).unlink(missing_ok=True)
        # Names no longer ours must leave the journal: a user's file could take one later.
        self._write_journal([])

    def _write_journal(self, names: list[str]) -> None:
        tmp = self.out_dir / f"{JOURNAL_NAME}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"format": FORMAT_NAME, "writing": names}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.out_dir / JOURNAL_NAME)

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._close_shard(finished=False)
            self._closed = True

    def add(self, images: np.ndarray, labels: dict[str, np.ndarray]) -> None:
        """Append images (N, C, H, W) or (N, H, W) with labels {name: (N, *shape)}."""
        if self._closed:
            raise ValueError("add() after close()")
        images, labels = self._validate(images, labels)
        i, n = 0, len(images)
        while i < n:
            # A block never spans two shards, so the last block of a shard may be short.
            limit = min(self.block_size, self.shard_size - self._shard_count)
            take = min(limit - self._pending_count, n - i)
            self._pending.append(
                (images[i : i + take], {k: v[i : i + take] for k, v in labels.items()})
            )
            self._pending_count += take
            i += take
            if self._pending_count == limit:
                self._write_block()

    def _validate(
        self, images: np.ndarray, labels: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        images = np.asarray(images)
        c, h, w = self.image_shape
        if images.ndim == 3 and c == 1:
            images = images[:, None]  # (N, H, W) -> (N, 1, H, W)
        if images.ndim != 4 or images.shape[1:] != self.image_shape:
            raise ValueError(f"images have shape {images.shape}, expected (N, {c}, {h}, {w})")
        if images.dtype.name != self.image_dtype:
            # No silent casts: float images in [0, 1] would become all zeros as uint8.
            raise ValueError(
                f"images are {images.dtype.name}, the shard set stores "
                f"{self.image_dtype}: convert them first"
            )
        if set(labels) != set(self.labels):
            raise ValueError(f"labels given {sorted(labels)}, expected {sorted(self.labels)}")
        out = {}
        for name, spec in self.labels.items():
            values = np.asarray(labels[name])
            if values.shape != (len(images), *spec.shape):
                raise ValueError(
                    f"label {name} has shape {values.shape}, expected "
                    f"({len(images)}, {', '.join(map(str, spec.shape))})"
                )
            if not np.can_cast(values.dtype, spec.dtype, "same_kind"):
                raise ValueError(
                    f"label {name} is {values.dtype.name}, cannot store as {spec.dtype}"
                )
            values = values.astype(spec.dtype, copy=False)
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                raise ValueError(f"label {name} has non-finite values")
            out[name] = values
        return images, out

    def _write_block(self) -> None:
        images = np.concatenate([p[0] for p in self._pending])  # (K, C, H, W)
        labels = {k: np.concatenate([p[1][k] for p in self._pending]) for k in self.labels}
        self._pending, self._pending_count = [], 0
        if self._tar is None:
            path = self.out_dir / shard_name(len(self._shards))
            self._written.append(path.name)
            self._write_journal(self._written)  # before the file exists: a kill leaves it listed
            # "x": a file that appeared since __init__ is not ours to replace. Both stay open
            # across add() calls; _close_shard closes them.
            self._file = open(path, "xb")  # noqa: SIM115
            self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        key = block_key(self._blocks)
        members = encode_block(images, labels)
        for member, data in members.items():
            info = tarfile.TarInfo(f"{key}.{member}")
            info.size = len(data)
            info.mtime, info.mode, info.uid, info.gid = 0, 0o644, 0, 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._shard_crc32.append(block_crc32(members.values()))  # members in file order
        self._blocks += 1
        self._shard_blocks += 1
        self._shard_count += len(images)
        full = self._shard_count == self.shard_size
        if self.shard_bytes is not None and self._file is not None:
            full = full or self._file.tell() >= self.shard_bytes
        if full:
            self._close_shard(finished=True)

    def _close_shard(self, finished: bool) -> None:
        if self._tar is None or self._file is None:
            return
        self._tar.close()
        if finished:
            # The manifest will vouch for these bytes, so they must be on disk before it is.
            self._file.flush()
            os.fsync(self._file.fileno())
        self._file.close()
        path = Path(self._file.name)
        self._tar = self._file = None
        if finished:
            self._shards.append(
                ShardInfo(
                    path.name,
                    self._shard_count,
                    self._shard_blocks,
                    path.stat().st_size,
                    file_sha256(path),
                    tuple(self._shard_crc32),
                )
            )
        self._shard_count = self._shard_blocks = 0
        self._shard_crc32 = []

    def close(self) -> Manifest:
        """Flush the last block and shard, then write the manifest atomically."""
        if self._closed:
            raise ValueError("close() called twice")
        self._closed = True
        if self._pending_count:
            self._write_block()
        self._close_shard(finished=True)
        if not self._shards:
            raise ValueError(f"{self.out_dir}: no images were added; not writing an empty set")
        manifest = Manifest(
            count=sum(s.count for s in self._shards),
            image_shape=self.image_shape,
            image_dtype=self.image_dtype,
            block_size=self.block_size,
            labels=self.labels,
            source=self.source,
            labelled=self.labelled,
            shards=self._shards,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            tool_version=TOOL_VERSION,
            labels_for_evaluation_only=self.labels_for_evaluation_only,
        )
        tmp = self.out_dir / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(manifest.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.out_dir / MANIFEST_NAME)
        (self.out_dir / JOURNAL_NAME).unlink(missing_ok=True)  # the manifest lists what is ours
        self.manifest = manifest
        return manifest


def _names_written(path: Path, key: str) -> list[str] | None:
    """The shard file names a manifest or journal written by this tool lists (None: no such
    file); ValueError for a file by that name that this tool did not write."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        d = json.loads(text)
    except json.JSONDecodeError:
        d = None
    if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
        raise ValueError(
            f'{path}: not written by shards (no "format": "{FORMAT_NAME}"); move it away: '
            "shards replaces only files it wrote"
        )
    entries = d.get(key)
    entries = entries if isinstance(entries, list) else []
    names = [e.get("name") if isinstance(e, dict) else e for e in entries]
    return [n for n in names if isinstance(n, str) and _SHARD_NAME.fullmatch(n)]
