"""``python -m shards``: convert source datasets into shard sets, and inspect shard sets.

Adding a source: write a ``convert_<source>(out_dir, ..., shard_size, block_size, progress)``
function and an ``_add_<source>(sources)`` subparser that sets ``run=``, then list the adder in
``SOURCES``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shards.format import (
    Manifest,
    ShardError,
    decode_block,
    file_sha256,
    index_shard,
    read_block,
    read_manifest,
)
from shards.writer import ShardSetWriter

# Generating in chunks bounds memory for any --count; a multiple of the simulator's own block
# size (256) avoids regenerating a block twice at chunk edges.
_CHUNK = 4096

# --- source: sim-eyes ---------------------------------------------------------------------------

SIM_EYES_LABELS = {
    "gaze": ((3,), "float32", "unit gaze vector, MPIIGaze normalised camera coords (shards.gaze)"),
    "pitchyaw": ((2,), "float32", "gaze (pitch, yaw) in radians (shards.gaze convention)"),
    "pupil": ((2,), "float32", "pupil centre (x, y) in pixels, x right, y down"),
}


def convert_sim_eyes(
    out_dir: str | Path,
    domain: str,
    count: int,
    seed: int,
    *,
    shard_size: int = 50_000,
    block_size: int = 256,
    progress: bool = True,
) -> Manifest:
    """Render ``count`` eyes from the built-in simulator into a shard set at ``out_dir``."""
    # Imported here so that `shards` does not pull in the simulator for other commands.
    eyes = importlib.import_module("distsim.sim.eyes")
    if domain not in eyes.DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {eyes.DOMAINS}")
    if count < 1 or seed < 0:
        raise ValueError(f"count ({count}) must be >= 1 and seed ({seed}) >= 0")
    real = domain == "real"
    with (
        ShardSetWriter(
            out_dir,
            image_shape=eyes.IMAGE_SHAPE,
            image_dtype="uint8",
            labels=SIM_EYES_LABELS,
            source={"name": "sim-eyes", "domain": domain, "seed": seed},
            shard_size=shard_size,
            block_size=block_size,
            # The simulator's "real" domain has labels only to score estimators on it.
            labelled=not real,
            labels_for_evaluation_only=real,
        ) as writer,
        tqdm(total=count, unit="img", desc=f"sim-eyes {domain}", disable=not progress) as bar,
    ):
        for start in range(0, count, _CHUNK):
            n = min(_CHUNK, count - start)
            sample = eyes.generate(domain, n, seed, start=start)
            writer.add(sample["image"], {k: sample[k] for k in SIM_EYES_LABELS})
            bar.update(n)
    assert writer.manifest is not None
    return writer.manifest


def _add_sim_eyes(sources: argparse._SubParsersAction) -> None:
    p = sources.add_parser(
        "sim-eyes",
        help="built-in procedural eye simulator (35x55 grey)",
        description="Render eyes with distsim.sim.eyes; labels gaze (3), pitchyaw (2), pupil (2).",
    )
    p.add_argument(
        "--domain",
        choices=("synthetic", "real"),
        required=True,
        help="synthetic (labelled) or real (labels for evaluation only)",
    )
    p.add_argument("--count", type=_positive_int, required=True, help="number of images")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="stream seed (default 0)")
    _add_output_args(p)
    p.set_defaults(
        run=lambda a: convert_sim_eyes(
            a.out, a.domain, a.count, a.seed, shard_size=a.shard_size, block_size=a.block_size
        )
    )


SOURCES: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_sim_eyes,)

# --- inspect ------------------------------------------------------------------------------------


def inspect_shard_set(directory: str | Path, out: Callable[[str], None] = print) -> Manifest:
    """Print a summary, verify checksums and decode every block; ShardError on any problem."""
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
                    _, labels = decode_block(read_block(f, ref), m)
                except ShardError as e:
                    raise ShardError(f"{path}: block {ref.key}: {e}") from None
                for name, values in labels.items():
                    flat = values.reshape(len(values), -1).astype(np.float64)  # (K, prod(shape))
                    stats[name].append(np.stack([flat.min(0), flat.max(0), flat.sum(0)]))
        out(f"  {info.name}  {info.count} images  {info.blocks} blocks  {info.bytes} bytes  ok")
    for name, parts in stats.items():
        s = np.stack(parts)  # (blocks, 3, prod(shape)): per-block min, max, sum
        lo, hi, mean = s[:, 0].min(0), s[:, 1].max(0), s[:, 2].sum(0) / m.count
        out(f"  {name:<9} min {_fmt(lo)}  max {_fmt(hi)}  mean {_fmt(mean)}")
    out(f"ok: {m.count} images verified")
    return m


def _fmt(values: np.ndarray) -> str:
    return np.array2string(values, formatter={"float_kind": lambda x: f"{x:.4g}"})


# --- command line -------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output directory (an existing shard set there is replaced)",
    )
    p.add_argument(
        "--shard-size", type=_positive_int, default=50_000, help="images per shard (default 50000)"
    )
    p.add_argument(
        "--block-size", type=_positive_int, default=256, help="images per tar sample (default 256)"
    )


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
    for add_source in SOURCES:
        add_source(sources)
    inspect = commands.add_parser(
        "inspect",
        help="summarise and verify a shard set",
        description="Print a shard set's manifest, verify every "
        "shard's sha256 and decode every block.",
    )
    inspect.add_argument("dir", type=Path)
    inspect.set_defaults(run=lambda a: inspect_shard_set(a.dir))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as e:  # ShardError is a ValueError
        print(f"shards: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shards: interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        text = f"{e.filename}: {e.strerror or e}"
    else:
        text = str(e)
    return " ".join(text.split())
