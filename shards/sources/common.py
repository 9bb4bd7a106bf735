"""What every source converter shares: input errors, output options, the worker pool, resizing.

A converter cuts its input into *tasks* (picklable descriptions, e.g. a list of files), a
module-level function turns one task into ``(images (n, H, W), {label: (n, ...)})`` (uint8, or
(n, C, H, W) of another ``image_dtype`` such as depth's uint16), and ``write_tasks`` runs those
functions in worker processes and writes results in task order. The output therefore depends
only on the task list, never on ``--workers``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import multiprocessing
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from shards.cliutil import non_negative_int, positive_int
from shards.format import Manifest
from shards.progress import Progress
from shards.writer import LabelArg, ShardSetWriter

T = TypeVar("T")

Batch = tuple[np.ndarray, dict[str, np.ndarray]]  # (n, [C,] H, W) images, {label: (n, ...)}


def warn(text: str) -> None:
    """A converter's warning: one line on stderr, the conversion goes on."""
    print(f"shards: warning: {text}", file=sys.stderr, flush=True)


class InputError(ValueError):
    """A source file is missing, unreadable or not in the expected layout.

    The message is one line, ``<file>: <problem>``; ``shards`` prints it and exits with 2.
    """


# --- output options -----------------------------------------------------------------------------

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SIZE = re.compile(r"(\d+(?:\.\d*)?)\s*([kmg]i?b|b)", re.IGNORECASE)


@dataclass(frozen=True)
class ShardSize:
    """Images per shard, or (``bytes``) a size in bytes after which a shard is closed."""

    images: int = 50_000
    bytes: int | None = None

    @classmethod
    def parse(cls, text: str) -> ShardSize:
        """Parse "50000" (images) or "500MB", "1GB", "64KiB" (bytes; KB/MB/GB are powers of 10)."""
        text = text.strip()
        if text.isdigit():
            if int(text) < 1:
                raise ValueError(f"shard size must be >= 1, got {text}")
            return cls(images=int(text))
        match = _SIZE.fullmatch(text)
        if match is None:
            raise ValueError(f"{text!r} is neither an image count nor a size like 500MB or 1GB")
        size = int(float(match[1]) * _UNITS[match[2].lower()])
        if size < 1:
            raise ValueError(f"shard size {text!r} is less than one byte")
        # Without a count limit, only the size closes a shard.
        return cls(images=2**62, bytes=size)

    def __str__(self) -> str:
        return f"{self.bytes} bytes" if self.bytes is not None else f"{self.images} images"


@dataclass(frozen=True)
class Output:
    """Where and how to write, shared by every ``convert_*`` function."""

    out_dir: Path
    shard_size: ShardSize = ShardSize()
    block_size: int = 256
    workers: int = 1
    limit: int | None = None  # stop after this many images
    progress: bool = True
    overwrite: bool = False  # write into a directory holding other files (they are kept)
    shown_as: Path | None = None  # the directory progress names, if not out_dir (a temp's final)


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output directory: a shard set there is replaced (only the files its manifest "
        "lists are deleted, others are kept); a non-empty directory that is not a shard set "
        "needs --overwrite",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into --out although it holds files that are not a shard set; they are "
        "kept: shards never deletes or replaces a file it did not write",
    )
    p.add_argument(
        "--shard-size",
        type=_shard_size_arg,
        default=ShardSize(),
        metavar="N|SIZE",
        help="images per shard (default 50000), or a size such as 500MB or 1GB: a shard is "
        "closed once it reaches that many bytes",
    )
    p.add_argument(
        "--block-size", type=positive_int, default=256, help="images per tar sample (default 256)"
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes that decode and resize (default 1); the output is identical for any N",
    )
    p.add_argument(
        "--limit", type=positive_int, default=None, help="convert only the first N images"
    )


def output_from_args(a: argparse.Namespace) -> Output:
    return Output(a.out, a.shard_size, a.block_size, a.workers, a.limit, overwrite=a.overwrite)


def _shard_size_arg(text: str) -> ShardSize:
    try:
        return ShardSize.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def existing(path: Path, kind: str) -> Path:
    """``path`` if it exists as a ``kind`` ("file" or "directory"), else InputError."""
    if not path.exists():
        raise InputError(f"{path}: does not exist")
    if kind == "file" and not path.is_file():
        raise InputError(f"{path}: is not a file")
    if kind == "directory" and not path.is_dir():
        raise InputError(f"{path}: is not a directory")
    return path


def numeric_sort(names: Iterable[str]) -> list[str]:
    """Numeric names in numeric order ("2" before "10"), then any others in string order."""
    names = list(names)
    numeric = sorted((n for n in names if n.isdigit()), key=int)
    return numeric + sorted(n for n in names if not n.isdigit())


# --- built-in simulators -----------------------------------------------------------------------


def add_simulator_args(
    p: argparse.ArgumentParser, domains: Sequence[str], domain_help: str, unit: str
) -> None:
    """--domain, --count, --seed and the output options of a simulator source."""
    p.add_argument("--domain", choices=domains, required=True, help=domain_help)
    p.add_argument("--count", type=positive_int, required=True, help=f"number of {unit}")
    p.add_argument("--seed", type=non_negative_int, default=0, help="stream seed (default 0)")
    add_output_args(p)


def simulator_output(
    out_dir: str | Path,
    domain: str,
    domains: Sequence[str],
    count: int,
    seed: int,
    shard_size: int | ShardSize,
    block_size: int,
    workers: int,
    progress: bool,
    overwrite: bool,
    shown_as: Path | None = None,
) -> Output:
    """Check a simulator source's stream arguments; where and how to write its shards
    (``shown_as``: see ``Output``)."""
    if domain not in domains:
        raise ValueError(f"unknown domain {domain!r}; expected one of {tuple(domains)}")
    if count < 1 or seed < 0:
        raise ValueError(f"count ({count}) must be >= 1 and seed ({seed}) >= 0")
    size = shard_size if isinstance(shard_size, ShardSize) else ShardSize(images=shard_size)
    return Output(Path(out_dir), size, block_size, workers, None, progress, overwrite, shown_as)


def run_simulator(
    a: argparse.Namespace, convert: Callable[..., Manifest], **options: Any
) -> Manifest:
    """A simulator source's ``run``: ``convert(out, domain, count, seed, ...)`` from parsed
    arguments, ``--limit`` capping the count, plus the source's own ``options``."""
    o = output_from_args(a)
    count = a.count if o.limit is None else min(a.count, o.limit)
    return convert(
        o.out_dir,
        a.domain,
        count,
        a.seed,
        shard_size=o.shard_size,
        block_size=o.block_size,
        workers=o.workers,
        progress=o.progress,
        overwrite=o.overwrite,
        **options,
    )


# --- worker pool --------------------------------------------------------------------------------


def _init_worker(parent: int) -> None:
    # Ctrl-C reaches the whole process group; only the parent reacts, then terminates the pool
    # (SIGTERM, so that must keep its default action here).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # If the parent is SIGKILLed it cannot terminate the pool: have the kernel do it.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


def _worker_loop(fn: Callable[[Any], Any], conn: Connection, parent: int) -> None:
    _init_worker(parent)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent closed its end
            return
        if task is None:
            return
        try:
            reply: tuple[bool, Any] = (True, fn(task))
        except Exception as e:
            reply = (False, e)
        try:
            conn.send(reply)
        except Exception as e:  # an exception that does not pickle: keep its one-line text
            conn.send((False, RuntimeError(f"{type(e).__name__}: {e}")))


class WorkerPool:
    """Ordered parallel map over worker processes; runs inline when workers == 1.

    Task i goes to worker i % N over that worker's own pipe, and results are read back in the
    same order, so output order never depends on timing. Workers share no locks or queues
    (multiprocessing.Pool's can deadlock its terminate() when a worker dies mid-operation),
    and at most two tasks per worker are in flight, which bounds memory.

    Enter it before starting threads (e.g. a progress bar's): workers are forked on entry. On any
    exit, normal or not, the workers are terminated and joined, so none outlive the parent.
    """

    def __init__(self, workers: int, fn: Callable[[Any], Any]) -> None:
        self.workers = workers
        self.fn = fn
        self._procs: list[Any] = []
        self._conns: list[Connection] = []

    def __enter__(self) -> WorkerPool:
        if self.workers > 1:
            # fork: no re-import of numpy/h5py per worker.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
            ctx = multiprocessing.get_context(method)
            try:
                for _ in range(self.workers):
                    ours, theirs = ctx.Pipe()
                    proc = ctx.Process(
                        target=_worker_loop, args=(self.fn, theirs, os.getpid()), daemon=True
                    )
                    proc.start()
                    theirs.close()
                    self._procs.append(proc)
                    self._conns.append(ours)
            except BaseException:
                self.__exit__()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        for conn in self._conns:
            conn.close()
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._procs, self._conns = [], []

    def map(self, tasks: Iterable[T]) -> Iterator[Any]:
        """Results of ``fn`` over ``tasks``, in order; a worker's exception is re-raised here."""
        if not self._procs:
            yield from map(self.fn, tasks)
            return
        it = iter(tasks)
        sent = received = 0
        n = len(self._conns)

        def send_next() -> None:
            nonlocal sent
            for task in islice(it, 1):
                self._conns[sent % n].send(task)
                sent += 1

        for _ in range(2 * n):
            send_next()
        while received < sent:
            conn = self._conns[received % n]
            try:
                ok, value = conn.recv()
            except EOFError:
                code = self._procs[received % n].exitcode
                raise RuntimeError(f"a worker process died (exit code {code})") from None
            received += 1
            if not ok:
                raise value
            send_next()
            yield value


# --- conversion driver --------------------------------------------------------------------------


def write_tasks(
    output: Output,
    fn: Callable[[T], Batch],
    tasks: Sequence[T] | Iterable[T],
    *,
    image_shape: tuple[int, ...],
    labels: dict[str, LabelArg],
    source: dict[str, Any],
    total: int | None,
    desc: str,
    labelled: bool = True,
    labels_for_evaluation_only: bool = False,
    image_dtype: str = "uint8",
) -> Manifest:
    """Run ``fn`` over ``tasks`` (in ``output.workers`` processes) and write a shard set of
    ``image_shape`` ((H, W) or (C, H, W)) images of ``image_dtype``."""
    limit = output.limit
    if total is not None and limit is not None:
        total = min(total, limit)
    written = 0
    with (
        WorkerPool(output.workers, fn) as pool,
        ShardSetWriter(
            output.out_dir,
            image_shape=image_shape,
            image_dtype=image_dtype,
            labels=labels,
            source=source,
            shard_size=output.shard_size.images,
            shard_bytes=output.shard_size.bytes,
            block_size=output.block_size,
            labelled=labelled,
            labels_for_evaluation_only=labels_for_evaluation_only,
            overwrite=output.overwrite,
        ) as writer,
        # A bar on a terminal, a line every half minute on a log (a SLURM job's), naming
        # the set being written.
        Progress(
            total,
            desc,
            unit="img",
            enabled=output.progress,
            where=output.shown_as or output.out_dir,
        ) as bar,  # fmt: skip
    ):
        for images, values in pool.map(tasks):
            if limit is not None and written + len(images) > limit:
                keep = limit - written
                images, values = images[:keep], {k: v[:keep] for k, v in values.items()}
            if len(images):
                writer.add(images, values)
            written += len(images)
            bar.update(len(images))
            if limit is not None and written >= limit:
                break
    assert writer.manifest is not None
    return writer.manifest


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- resizing -----------------------------------------------------------------------------------


def resize_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of an antialiased bilinear (triangle) resize.

    The same filter as PIL's BILINEAR: pixel centres at i + 0.5, and when shrinking the
    triangle is widened by the scale factor so every input pixel contributes (antialiasing).
    """
    scale = n_in / n_out
    support = max(scale, 1.0)  # triangle half-width in input pixels
    centre = (np.arange(n_out) + 0.5) * scale  # (n_out,) in input coordinates
    x = np.arange(n_in) + 0.5  # (n_in,)
    w = np.clip(1.0 - np.abs(x[None, :] - centre[:, None]) / support, 0.0, None)  # (out, in)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_batch(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) uint8 -> (N, h, w) uint8 with ``resize_matrix`` along both axes, batched."""
    n, h_in, w_in = images.shape
    h, w = size
    rows, cols = resize_matrix(h, h_in), resize_matrix(w, w_in)  # (h, H), (w, W)
    out = rows @ images.astype(np.float32) @ cols.T  # (N, h, w)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
