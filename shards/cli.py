"""``python -m shards``: convert source datasets into shard sets, and inspect shard sets.

Each source lives in ``shards/sources/<name>.py`` (listed in ``shards.sources.SOURCES``).
Errors in the input are one line, ``shards: error: <file>: <problem>``, exit status 2. SIGINT
and SIGTERM stop a conversion cleanly: workers are terminated and no manifest is written, so
the partial directory is refused by every reader until a rerun replaces it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import numpy as np

from shards.cliutil import non_negative_int, one_line, positive_int
from shards.format import (
    Manifest,
    ShardError,
    decode_block,
    file_sha256,
    index_shard,
    read_block,
    read_manifest,
)
from shards.sheet import write_contact_sheet
from shards.sources import SOURCES

__all__ = ["build_parser", "inspect_shard_set", "main"]

# --- inspect ------------------------------------------------------------------------------------


_DEFAULT_SHEET = Path("<default>")


def default_sheet_path(directory: str | Path) -> Path:
    """``./<dirname>_contact_sheet.png``: in the current directory, so the shard set stays as
    written (its manifest vouches for the directory's shards, and tools may list it)."""
    return Path(f"{Path(directory).resolve().name}_contact_sheet.png")


def inspect_shard_set(
    directory: str | Path,
    out: Callable[[str], None] = print,
    *,
    sheet: Path | None = None,
    samples: int = 32,
    seed: int = 0,
) -> Manifest:
    """Print a summary, verify checksums and decode every block; ShardError on any problem.

    With ``sheet``, also write a contact sheet of ``samples`` random images (chosen by
    ``seed``) with their gaze drawn (``shards.sheet``).
    """
    root = Path(directory)
    m = read_manifest(root)
    c, h, w = m.image_shape
    out(
        f"{root}: {m.count} images {c}x{h}x{w} {m.image_dtype} in {len(m.shards)} shards, "
        f"blocks of {m.block_size}"
    )
    out(f"  source    {json.dumps(m.source)}")
    out(
        f"  labelled  {m.labelled}"
        + (" (labels for evaluation only)" if m.labels_for_evaluation_only else "")
    )
    for name, spec in m.labels.items():
        out(f"  label     {name} {list(spec.shape)} {spec.dtype}: {spec.description}")
    out(f"  created   {m.created} by tool {m.tool_version}")
    out(
        "  checksums sha256 per shard, "
        + ("crc32 per block" if m.block_checksums else "none per block (an older shards wrote it)")
    )

    # The sheet's samples are picked up during the verifying pass: no second read.
    rng = np.random.default_rng(seed)
    wanted = np.sort(rng.choice(m.count, size=min(samples, m.count), replace=False))
    picked_images: list[np.ndarray] = []
    picked_labels: dict[str, list[np.ndarray]] = {name: [] for name in m.labels}
    first = 0  # global index of the current block's first image

    stats: dict[str, list[np.ndarray]] = {name: [] for name in m.labels}
    for i, info in enumerate(m.shards):
        path = root / info.name
        digest = file_sha256(path)
        if digest != info.sha256:
            raise ShardError(
                f"{path}: sha256 {digest[:16]}... does not match the manifest's "
                f"{info.sha256[:16]}... (corrupt or modified)"
            )
        with open(path, "rb") as f:
            for ref in index_shard(path, i, m):
                try:
                    images, labels = decode_block(read_block(f, ref), m)
                except ShardError as e:
                    raise ShardError(f"{path}: block {ref.key}: {e}") from None
                for name, values in labels.items():
                    flat = values.reshape(len(values), -1).astype(np.float64)  # (K, prod(shape))
                    stats[name].append(np.stack([flat.min(0), flat.max(0), flat.sum(0)]))
                if sheet is not None:
                    lo, hi = np.searchsorted(wanted, [first, first + len(images)])
                    rows = wanted[lo:hi] - first
                    picked_images.append(images[rows])
                    for name, values in labels.items():
                        picked_labels[name].append(values[rows])
                first += len(images)
        out(f"  {info.name}  {info.count} images  {info.blocks} blocks  {info.bytes} bytes  ok")
    for name, parts in stats.items():
        s = np.stack(parts)  # (blocks, 3, prod(shape)): per-block min, max, sum
        lo, hi, mean = s[:, 0].min(0), s[:, 1].max(0), s[:, 2].sum(0) / m.count
        out(f"  {name:<9} min {_fmt(lo)}  max {_fmt(hi)}  mean {_fmt(mean)}")
    if sheet is not None:
        width, height = write_contact_sheet(
            sheet,
            np.concatenate(picked_images),  # (samples, C, H, W)
            {name: np.concatenate(v) for name, v in picked_labels.items()},
        )
        out(f"  sheet     {sheet} ({len(wanted)} samples, {width}x{height})")
    out(f"ok: {m.count} images verified")
    return m


def _fmt(values: np.ndarray) -> str:
    return np.array2string(values, formatter={"float_kind": lambda x: f"{x:.4g}"})


# --- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shards", description="Convert source datasets into shard sets, and inspect them."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert",
        help="convert a source into a shard set",
        description="Convert a source dataset into a shard set.",
    )
    sources = convert.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for source in SOURCES:
        source.add_parser(sources)
    inspect = commands.add_parser(
        "inspect",
        help="summarise and verify a shard set, and draw a contact sheet",
        description="Print a shard set's manifest, verify every shard's sha256 and every "
        "block's crc32, decode every block, and write a PNG contact sheet of random samples "
        "with their gaze drawn as an arrow from the pupil (or the image centre).",
    )
    inspect.add_argument("dir", type=Path)
    inspect.add_argument(
        "--sheet",
        type=Path,
        nargs="?",
        const=_DEFAULT_SHEET,
        default=None,
        metavar="PNG",
        help="also write a contact sheet of random samples with their gaze drawn; without PNG "
        "it goes to ./<dirname>_contact_sheet.png in the current directory, never into the "
        "shard set",
    )
    inspect.add_argument(
        "--samples", type=positive_int, default=32, help="images on the sheet (default 32)"
    )
    inspect.add_argument(
        "--seed", type=non_negative_int, default=0, help="which samples (default 0)"
    )
    inspect.set_defaults(run=_run_inspect)
    return parser


def _run_inspect(a: argparse.Namespace) -> Manifest:
    sheet = default_sheet_path(a.dir) if a.sheet == _DEFAULT_SHEET else a.sheet
    return inspect_shard_set(a.dir, sheet=sheet, samples=a.samples, seed=a.seed)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup (workers, open shards) runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
        # Said explicitly: a process started with SIGINT ignored (a non-interactive shell's
        # background job, some CI runners) never gets Python's Ctrl-C handler, and would
        # convert on after an interrupt meant to stop it.
        signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        args.run(args)
    except (ValueError, OSError) as e:  # ShardError and InputError are ValueErrors
        print(f"shards: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shards: interrupted; no manifest written", file=sys.stderr)
        return 130
    except _Terminated:
        print("shards: terminated; no manifest written", file=sys.stderr)
        return 143
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
