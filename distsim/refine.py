"""Refine a shard set with a trained refiner, labels kept: the dataset SimGAN is for.

    python -m distsim.refine --run RUN_DIR --input SHARDS --out DIR
    accelerate launch -m distsim.refine --run RUN_DIR --input SHARDS --out DIR   # W ranks

What is written and how (every label copied, byte-identical at any world size, the
checkpoint recorded in the manifest): ``distsim.checkpoints.refine``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from distsim.checkpoints.refine import (
    WEIGHTS,
    checkpoint_path,
    load_refiner,
    raise_first,
    refine_shards,
    warn_if_pretraining,
)
from distsim.checkpoints.store import read_json
from distsim.distributed.launch import make_accelerator
from shards.cliutil import non_negative_int, one_line, positive_int

# --- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distsim.refine",
        description="Refine a shard set with a trained refiner; labels are kept unchanged. "
        "Under `accelerate launch` the ranks split the work.",
    )
    parser.add_argument(
        "--run", type=Path, help="run directory (its newest checkpoint) or checkpoint directory"
    )
    parser.add_argument(
        "--checkpoint",
        help="(default: --run's newest) a checkpoint directory, a step (500 or step-00000500) "
        "of --run's checkpoints, or "
        "best: the one whose refined images a fresh classifier told least well from real "
        "ones, among those that keep the pupil within 1 px (distsim.realism)",
    )
    parser.add_argument("--input", type=Path, required=True, help="shard set to refine")
    parser.add_argument("--out", type=Path, required=True, help="output shard directory")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=256,
        help="images per forward pass per rank (256)",
    )
    parser.add_argument(
        "--num-workers", type=non_negative_int, default=1, help="loader processes per rank (1)"
    )
    parser.add_argument(
        "--block-size", type=positive_int, help="images per tar sample (default: the input's)"
    )
    parser.add_argument(
        "--shard-size",
        type=positive_int,
        help="images per shard (default: the input's largest shard)",
    )
    parser.add_argument(
        "--weights",
        choices=WEIGHTS,
        default="auto",
        help="auto (default): the refiner's weight average when the checkpoint has one (ema), "
        "else its last weights (raw)",
    )
    parser.add_argument(
        "--noise-seed",
        type=non_negative_int,
        default=0,
        help="seed of the noise inputs of a refiner trained with --refiner-noise (0)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out that is not a shard set, keeping its files (a shard "
        "set there is always replaced)",
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from accelerate.utils import gather_object

    # Refinement is float32 whatever `accelerate launch --mixed_precision` says: the output
    # must not depend on the launcher.
    accelerator = make_accelerator("no")
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.backends.cudnn.benchmark = False  # autotuning may pick kernels that round differently
    torch.backends.cudnn.deterministic = True

    def gather(value: Any) -> list[Any]:
        return gather_object([value]) if world > 1 else [value]

    try:
        error = None
        try:
            path = checkpoint_path(args.run, args.checkpoint)
            refiner, info, trained_shape = load_refiner(path, args.weights)
        except (ValueError, OSError) as err:
            error = one_line(err)
        raise_first(gather(error))
        manifest = refine_shards(
            refiner,
            args.input,
            args.out,
            rank=rank,
            world_size=world,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            block_size=args.block_size,
            shard_size=args.shard_size,
            checkpoint=info,
            trained_shape=trained_shape,
            device=accelerator.device,
            gather=gather,
            progress=args.progress,
            noise_seed=args.noise_seed,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError) as err:
        # Errors are agreed between ranks: one line from rank 0 is the whole story.
        if accelerator.is_main_process:
            print(f"distsim.refine: error: {one_line(err)}", file=sys.stderr)
        return 2
    finally:
        # Every rank gets here together (the last step of refine_shards is a collective); a
        # process group left to the interpreter's exit can abort a rank that is still closing.
        accelerator.end_training()
    if manifest is not None:
        print(f"refined {manifest.count} images into {args.out} with {info['path']}")
        warn_if_pretraining(Path(info["path"]))
        if args.checkpoint == "best":
            scores = read_json(Path(info["path"]) / "meta.json")["realism"]
            print(
                f"  the best by realism: a fresh classifier told its refined images from real "
                f"ones {100 * scores['c2st_refined']:.1f}% of the time (synthetic: "
                f"{100 * scores['c2st_synthetic']:.1f}%)"
                + (
                    f", pupil moved {scores['pupil_shift_px']:.2f} px"
                    if "pupil_shift_px" in scores
                    else ""
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
