"""Source ``sim-hands``: the built-in procedural depth-hand simulator (``shards.sim.hands``).

Crops follow ``shards.depth``: uint16 (1, S, S) depth codes over a 300 mm cube centred on the
palm centre (NYU joint 32), 0 = invalid, with the 36 NYU joints and the crop geometry as labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shards.cliutil import positive_int
from shards.depth import NUM_JOINTS
from shards.format import Manifest
from shards.sources.common import (
    Batch,
    ShardSize,
    add_simulator_args,
    run_simulator,
    simulator_output,
    write_tasks,
)

NAME = "sim-hands"

LABELS = {
    "joints_uvd": (
        (NUM_JOINTS, 3),
        "float32",
        "36 NYU joints in NYU order: crop pixels (u right, v down, pixel centres at integers) "
        "and depth in mm (shards.depth)",
    ),
    "joints_xyz": (
        (NUM_JOINTS, 3),
        "float32",
        "36 NYU joints in camera mm (x right, y up, z away; NYU's intrinsics, shards.depth)",
    ),
    "center": (
        (3,),
        "float32",
        "the depth cube's centre, joint 32 (palm centre): (u, v) source-frame pixels, z mm",
    ),
    "box": (
        (4,),
        "float32",
        "crop box (u0, v0, u1, v1) in 640x480 source-frame pixels, u1/v1 exclusive",
    ),
    "view": ((1,), "int64", "Kinect view (always 1, frontal, for the simulator)"),
    "frame": ((1,), "int64", "sample index in the simulator's (domain, seed) stream"),
}

# Samples per task: small enough that two workers share a few thousand crops evenly and the
# progress bar moves (a real-domain crop takes about 20 ms), large enough to amortise a task.
_CHUNK = 128
# The simulator's domains, spelled out so that building the parser imports no simulator;
# tests check that they match shards.sim.hands.DOMAINS.
_DOMAINS = ("synthetic", "real")
_MIN_SIZE = 8


def _render(task: tuple[str, int, int, int, int, str | None]) -> Batch:
    domain, seed, start, n, size, look = task
    # Imported here so that `shards` does not pull in the simulator for other sources.
    from shards.sim import hands

    sample = hands.generate(domain, n, seed, start=start, size=size, look=look)
    return sample["image"], {k: sample[k] for k in LABELS}


def convert_sim_hands(
    out_dir: str | Path,
    domain: str,
    count: int,
    seed: int,
    *,
    size: int = 224,
    shard_size: int | ShardSize = 50_000,
    block_size: int = 256,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
    shown_as: Path | None = None,
    look: str | None = None,
) -> Manifest:
    """Render ``count`` depth-hand crops of ``size`` x ``size`` from the built-in simulator
    into a shard set at ``out_dir`` (``overwrite``: see ``ShardSetWriter``; ``shown_as``: the
    directory progress names, when ``out_dir`` is a temporary one that will be renamed;
    ``look``: the domain whose scene and sensor show the hands, ``shards.sim.hands.render``'s,
    recorded in the manifest's source when given)."""
    from shards.sim import hands

    if look is not None and look not in hands.DOMAINS:
        raise ValueError(f"unknown look {look!r}; expected one of {hands.DOMAINS}")
    output = simulator_output(
        out_dir,
        domain,
        hands.DOMAINS,
        count,
        seed,
        shard_size,
        block_size,
        workers,
        progress,
        overwrite,
        shown_as,
    )
    if size < _MIN_SIZE:
        raise ValueError(f"size ({size}) must be >= {_MIN_SIZE}")
    tasks = [(domain, seed, s, min(_CHUNK, count - s), size, look) for s in range(0, count, _CHUNK)]
    real = domain != "synthetic"
    return write_tasks(
        output,
        _render,
        tasks,
        image_shape=(1, size, size),
        image_dtype="uint16",
        labels=LABELS,
        source={
            "name": NAME,
            "domain": domain,
            "seed": seed,
            "size": size,
            "sim_version": hands.SIM_VERSION,
        }
        | ({} if look is None else {"look": look}),
        total=count,
        desc=f"sim-hands {domain}",
        # The simulator's "real" domain has labels only to score estimators on it.
        labelled=not real,
        labels_for_evaluation_only=real,
    )


def _size_arg(text: str) -> int:
    value = positive_int(text)
    if value < _MIN_SIZE:
        raise argparse.ArgumentTypeError(f"must be >= {_MIN_SIZE}, got {value}")
    return value


def add_parser(sources: argparse._SubParsersAction) -> None:
    p = sources.add_parser(
        NAME,
        help="built-in procedural depth-hand simulator (NYU-style uint16 crops)",
        description="Render depth hands with shards.sim.hands: uint16 (1, S, S) crops over a "
        "300 mm cube around the palm centre (shards.depth, 0 = invalid); labels joints_uvd "
        "(36, 3), joints_xyz (36, 3), center (3), box (4), view (1), frame (1).",
    )
    add_simulator_args(
        p,
        _DOMAINS,
        "synthetic (clean depth, nothing behind the hand; labelled) or real (a Kinect-like "
        "sensor: noise and quantisation growing with depth, shadows, flying pixels, holes, "
        "a wall and a body behind; its own pose distribution; labels for evaluation only)",
        unit="crops",
    )
    p.add_argument(
        "--size",
        type=_size_arg,
        default=224,
        help="crop side in pixels (default 224, the paper's; e.g. 64 or 96 for CPU runs)",
    )
    p.set_defaults(run=lambda a: run_simulator(a, convert_sim_hands, size=a.size))
