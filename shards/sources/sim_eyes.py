"""Source ``sim-eyes``: the built-in procedural eye simulator (``shards.sim.eyes``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from shards.format import Manifest
from shards.sources.common import (
    Batch,
    ShardSize,
    add_simulator_args,
    run_simulator,
    simulator_output,
    write_tasks,
)

NAME = "sim-eyes"

LABELS = {
    "gaze": ((3,), "float32", "unit gaze vector, MPIIGaze normalised camera coords (shards.gaze)"),
    "pitchyaw": ((2,), "float32", "gaze (pitch, yaw) in radians (shards.gaze convention)"),
    "pupil": ((2,), "float32", "pupil centre (x, y) in pixels, x right, y down"),
}

# Samples per task: a multiple of the simulator's own block size (256), so no block is rendered
# twice at task edges, and small enough to keep two workers busy on a few thousand images.
_CHUNK = 2048
# The simulator's domains, spelled out so that building the parser imports no simulator;
# tests check that they match shards.sim.eyes.DOMAINS.
_DOMAINS = ("synthetic", "real", "real-lit", "real-ir")


def _render(task: tuple[str, int, int, int]) -> Batch:
    domain, seed, start, n = task
    # Imported here so that `shards` does not pull in the simulator for other sources.
    from shards.sim import eyes

    sample = eyes.generate(domain, n, seed, start=start)
    return sample["image"], {k: sample[k] for k in LABELS}


def convert_sim_eyes(
    out_dir: str | Path,
    domain: str,
    count: int,
    seed: int,
    *,
    shard_size: int | ShardSize = 50_000,
    block_size: int = 256,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
    shown_as: Path | None = None,
) -> Manifest:
    """Render ``count`` eyes from the built-in simulator into a shard set at ``out_dir``
    (``overwrite``: see ``ShardSetWriter``; ``shown_as``: the directory progress names, when
    ``out_dir`` is a temporary one that will be renamed)."""
    from shards.sim import eyes

    output = simulator_output(
        out_dir,
        domain,
        eyes.DOMAINS,
        count,
        seed,
        shard_size,
        block_size,
        workers,
        progress,
        overwrite,
        shown_as,
    )
    tasks = [(domain, seed, s, min(_CHUNK, count - s)) for s in range(0, count, _CHUNK)]
    real = domain != "synthetic"
    return write_tasks(
        output,
        _render,
        tasks,
        image_shape=eyes.IMAGE_SHAPE,
        labels=LABELS,
        source={"name": NAME, "domain": domain, "seed": seed},
        total=count,
        desc=f"sim-eyes {domain}",
        # The simulator's "real" domain has labels only to score estimators on it.
        labelled=not real,
        labels_for_evaluation_only=real,
    )


def add_parser(sources: argparse._SubParsersAction) -> None:
    p = sources.add_parser(
        NAME,
        help="built-in procedural eye simulator (35x55 grey)",
        description="Render eyes with shards.sim.eyes; labels gaze (3), pitchyaw (2), pupil (2).",
    )
    add_simulator_args(
        p,
        _DOMAINS,
        "synthetic (labelled), or one of the real domains (labels for evaluation only): "
        "real (camera response), real-lit (directional light, low-light noise, blur), "
        "real-ir (near-infrared, JPEG)",
        unit="images",
    )
    p.set_defaults(run=lambda a: run_simulator(a, convert_sim_eyes))
