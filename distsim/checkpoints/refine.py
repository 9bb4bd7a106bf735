"""Refining a shard set with a trained refiner, labels kept: the dataset SimGAN is for
(``python -m distsim.refine`` is its command line).

Every image of SHARDS goes through R and every label is copied unchanged: DIR is a shard set
in the same order (output sample i is R applied to input sample i) with the same image shape
and dtype, label names, shapes and dtypes. Its manifest's ``source`` records the input
directory, the input's own ``source`` and the checkpoint (path, step, and the sha256 of
``refiner.safetensors``). RUN_DIR is a run directory (its newest checkpoint) or a checkpoint
directory; ``--checkpoint`` picks another.

Pixels: the trainer feeds R ``to_unit_range(x)`` (uint8 x -> x / 127.5 - 1) and R ends in tanh,
so its output is in [-1, 1]; ``from_unit_range`` maps it back with round((y + 1) * 127.5)
clipped to [0, 255] (uint16 depth codes: round((y + 1) * 32767 + 1) in 1..65535, the inverse of
``distsim.data.depth``'s map, and never 0: a refined crop has no holes; float32 images are stored as
R gives them).
Rounding is half to even (``torch.round``, as ``np.round``).

Deterministic: R in eval mode, float32 (no autocast), and every forward pass has the same batch
shape, so equal inputs give byte-identical shards whatever the world size. A refiner with
noise inputs (``--refiner-noise``) gets, for image i, noise seeded by (``--noise-seed``, i)
(``distsim.gan.noise``), so that stays true.

Weights: a checkpoint with a weight average of the refiner (``--ema-halflife``) is refined with
the average unless ``--weights raw`` says otherwise; the manifest records which.

Several ranks (`accelerate launch -m distsim.refine ...`) split the set by position (the
loader's exact "split" epoch, unshuffled); each rank writes its refined batches as .npz files
(no pickles) under DIR/.parts/, and after all have finished rank 0 streams them back in index
order into the one shard set and removes .parts. DIR must therefore be on a filesystem every
rank sees (always true on one node).
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distsim import data
from distsim.checkpoints.models import load_models
from distsim.checkpoints.store import (
    PREFIX,
    best_checkpoint,
    has_ema,
    image_dtype,
    image_shape,
    read_json,
    resolve_checkpoint,
    verify_checkpoint,
)
from distsim.config import load_config
from distsim.data.pixels import from_unit_range, to_unit_range
from distsim.gan.noise import indexed_noise
from shards.cliutil import one_line
from shards.depth import FAR_CODE
from shards.format import IMAGE_KEY, MANIFEST_NAME, Manifest, file_sha256
from shards.progress import Progress
from shards.writer import ShardSetWriter

PARTS_DIR = ".parts"
INDEX_KEY = "index"
_LABEL_PREFIX = "label."  # npz keys of labels, apart from the image and position keys

# An all-gather of one picklable object: gather(x) on every rank returns [x_0, ..., x_{W-1}].
Gather = Callable[[Any], list[Any]]


class RefineError(ValueError):
    """A user-facing problem; the message is one line."""


# --- checkpoints --------------------------------------------------------------------------------


WEIGHTS = ("auto", "ema", "raw")


def checkpoint_info(ckpt: Path, weights: str = "raw") -> dict[str, Any]:
    """What the output manifest records about the refiner used (`weights`: raw or ema), and
    the dtype of the images it was trained on (None when that cannot be known)."""
    step = int(ckpt.name[len(PREFIX) :]) if ckpt.name.startswith(PREFIX) else None
    name = "refiner_ema" if weights == "ema" else "refiner"
    return {
        "path": str(ckpt.resolve()),
        "step": step,
        "weights": weights,
        "refiner_sha256": file_sha256(ckpt / f"{name}.safetensors"),
        "image_dtype": image_dtype(ckpt),
    }


def load_refiner(
    path: str | Path, weights: str = "auto"
) -> tuple[nn.Module, dict[str, Any], tuple[int, int, int]]:
    """(R in eval mode on the CPU, checkpoint_info, trained (C, H, W)) from a run or
    checkpoint directory (a run directory means its newest checkpoint). `weights`: "auto"
    (the weight average if the checkpoint has one), "ema" (it must) or "raw"."""
    path = Path(path)
    if weights not in WEIGHTS:
        raise RefineError(f"--weights must be one of {WEIGHTS}, got {weights!r}")
    if not path.exists():
        raise RefineError(f"{path}: run or checkpoint directory does not exist")
    ckpt = resolve_checkpoint(path)
    problem = verify_checkpoint(ckpt)
    if problem is not None:  # refining with damaged weights would write a set that verifies
        raise RefineError(f"{ckpt}: {problem}")
    if not (ckpt / "meta.json").is_file():
        raise RefineError(f"{ckpt}: no meta.json (a checkpoint from before distsim recorded it)")
    if weights == "ema" and not has_ema(ckpt):
        raise RefineError(f"{ckpt}: no refiner_ema.safetensors (trained without --ema-halflife)")
    use_ema = weights == "ema" or (weights == "auto" and has_ema(ckpt))
    refiner, _, _ = load_models(ckpt, ema=use_ema)
    info = checkpoint_info(ckpt, "ema" if use_ema else "raw")
    return refiner.eval(), info, image_shape(ckpt)


def check_images(
    manifest: Manifest,
    input_dir: str | Path,
    channels: int | None,
    trained_shape: Sequence[int] | None,
    trained_dtype: str | None = None,
) -> None:
    """Refuse images R cannot refine or was not trained on, naming both shapes (or dtypes:
    8-bit images and depth codes map onto [-1, 1] differently)."""
    if trained_dtype is not None and manifest.image_dtype != trained_dtype:
        raise RefineError(
            f"{input_dir}: images are {_KINDS.get(manifest.image_dtype, manifest.image_dtype)} "
            f"but the refiner was trained on {_KINDS.get(trained_dtype, trained_dtype)}; refine "
            "them with a refiner trained on their kind"
        )
    shape = tuple(manifest.image_shape)
    text = "x".join(map(str, shape))
    if channels is not None and shape[0] != channels:
        trained = "x".join(map(str, trained_shape)) if trained_shape else "unknown-size"
        raise RefineError(
            f"{input_dir}: images are {text} ({shape[0]} channels) but the refiner takes "
            f"{channels}-channel images (trained on {trained} images)"
        )
    if trained_shape is not None and shape != tuple(trained_shape):
        trained = "x".join(map(str, trained_shape))
        raise RefineError(
            f"{input_dir}: images are {text} but the refiner was trained on {trained} images"
        )


# How a dtype's pixels read, for messages.
_KINDS = {"uint8": "uint8 (8-bit images)", "uint16": "uint16 (depth codes)",
          "float32": "float32 images"}  # fmt: skip


def _stem_channels(refiner: nn.Module) -> int | None:
    """Image channels the refiner takes (its stem's inputs less its noise channels)."""
    stem = getattr(refiner, "stem", None)
    noise = int(getattr(refiner, "noise_channels", 0))
    return int(stem.in_channels) - noise if isinstance(stem, nn.Conv2d) else None


# --- the work -----------------------------------------------------------------------------------


def _single(value: Any) -> list[Any]:
    return [value]


def raise_first(statuses: list[str | None]) -> None:
    failed = [(rank, message) for rank, message in enumerate(statuses) if message is not None]
    if not failed:
        return
    rank, message = failed[0]
    if len(failed) == len(statuses) and len({m for _, m in failed}) == 1:
        raise RefineError(message)  # the same on every rank
    raise RefineError(f"rank {rank}: {message}")


def refine_shards(
    refiner: nn.Module,
    input_dir: str | Path,
    out_dir: str | Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 256,
    num_workers: int = 1,
    block_size: int | None = None,
    shard_size: int | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    trained_shape: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    gather: Gather | None = None,
    progress: bool = False,
    noise_seed: int = 0,
    overwrite: bool = False,
) -> Manifest | None:
    """Refine every image of ``input_dir`` into a shard set in ``out_dir``, labels unchanged.

    Call on every rank with the same arguments except ``rank``; ``gather`` is an all-gather of
    a picklable object across the ranks (needed when world_size > 1). Errors are agreed
    between ranks, so every rank raises ``RefineError`` (one line) or none does. Returns the
    new manifest on rank 0, None on the others. ``block_size`` and ``shard_size`` default to
    the input's block size and largest shard, which reproduces a count-based input's layout.
    ``checkpoint`` goes into the manifest's source; ``trained_shape`` (C, H, W), when known,
    is checked against the input's images. ``noise_seed`` seeds a refiner's noise inputs.
    """
    if gather is None:
        if world_size != 1:
            raise ValueError(f"world_size {world_size} needs a gather function")
        gather = _single
    if batch_size < 1:
        raise RefineError(f"--batch-size must be >= 1, got {batch_size}")
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    parts = out_dir / PARTS_DIR

    def agree(error: str | None) -> None:
        """Every rank learns whether any failed; on failure rank 0 removes the parts."""
        statuses = gather(error)
        if rank == 0 and any(s is not None for s in statuses):
            shutil.rmtree(parts, ignore_errors=True)
        raise_first(statuses)

    # 1. Validate and open the input on every rank; all ranks stop if any rank cannot go on.
    error = None
    try:
        if out_dir.resolve() == input_dir.resolve():
            raise RefineError(f"{out_dir}: output directory is the input directory")
        if out_dir.exists() and not out_dir.is_dir():
            raise RefineError(f"{out_dir}: exists and is not a directory")
        # Said now rather than by the writer after the whole set is refined.
        visible = [p.name for p in out_dir.iterdir() if not p.name.startswith(".")] if (
            out_dir.is_dir()) else []  # fmt: skip
        if visible and MANIFEST_NAME not in visible and not overwrite:
            raise RefineError(
                f"{out_dir}: not empty ({', '.join(sorted(visible)[:3])}) and not a shard set; "
                "--overwrite writes into it anyway, keeping those files"
            )
        manifest = data.open_shards(input_dir)
        check_images(manifest, input_dir, _stem_channels(refiner), trained_shape,
                     (checkpoint or {}).get("image_dtype"))  # fmt: skip
        label_names = tuple(manifest.labels)
        if INDEX_KEY in label_names:
            # The loader's with_index key would overwrite this label with positions.
            raise RefineError(
                f"{input_dir}: a label named {INDEX_KEY!r} clashes with distsim.data's position "
                "key; refining it is not supported yet"
            )
        # Unshuffled exact split: every image once, contiguous runs of positions per rank, and
        # "index" tells where each one goes. A bad block raises (never "skip"): the output
        # must stay one-to-one with the input.
        loader = data.make_epoch_loader(
            input_dir, batch_size, rank, world_size, seed=0, num_workers=num_workers,
            labels=label_names, shuffle=False, remainder="split", with_index=True,
        )  # fmt: skip
        if rank == 0:
            shutil.rmtree(parts, ignore_errors=True)  # left by an interrupted run
            parts.mkdir(parents=True)
    except (ValueError, OSError) as err:
        error = one_line(err)
    agree(error)  # also the barrier: .parts is clean before anyone writes into it

    # 2. Refine this rank's slice, one .npz per batch named by its first position.
    refiner = refiner.to(device).eval()
    dtype = manifest.image_dtype
    _, sizes = data.rank_batches(manifest.count, batch_size, world_size, rank, "split")
    invented, error = 0, None
    try:
        with (
            loader,
            torch.inference_mode(),
            Progress(
                sum(sizes),
                "refine" if world_size == 1 else f"refine (rank 0 of {world_size})",
                unit="img",
                enabled=progress and rank == 0,
                where=out_dir,
            ) as bar,
        ):
            for batch in loader:
                n, new = _refine_batch(
                    refiner, batch, label_names, dtype, batch_size, parts, device, noise_seed
                )
                invented += new
                bar.update(n)
    except (ValueError, OSError) as err:
        error = one_line(err)
    agree(error)
    _warn_if_invented(sum(gather(invented)), manifest, input_dir, rank)

    # 3. Rank 0 streams the parts back in position order into the final shard set.
    result = None
    error = None
    if rank == 0:
        source = {
            "name": "refined",
            "input": str(input_dir.resolve()),
            "input_source": manifest.source,
            "checkpoint": dict(checkpoint) if checkpoint is not None else None,
        }
        if int(getattr(refiner, "noise_channels", 0)):
            source["noise_seed"] = noise_seed
        try:
            result = _assemble(
                parts,
                out_dir,
                manifest,
                source,
                block_size or manifest.block_size,
                shard_size or max(s.count for s in manifest.shards),
                progress,
                overwrite,
            )
        except (ValueError, OSError) as err:
            error = one_line(err)
        finally:
            shutil.rmtree(parts, ignore_errors=True)
    agree(error)
    return result


def _refine_batch(
    refiner: nn.Module,
    batch: dict[str, torch.Tensor],
    label_names: Sequence[str],
    dtype: str,
    batch_size: int,
    parts: Path,
    device: torch.device | str,
    noise_seed: int = 0,
) -> tuple[int, int]:
    """Refine one loader batch and write it as PARTS/<first position>.npz; returns its size
    and, for depth, how many pixels got a depth though their 3x3 window had none."""
    order = torch.argsort(batch[INDEX_KEY])  # rows in position order
    n = len(order)
    x = to_unit_range(batch[IMAGE_KEY][order].to(device))  # (n, C, H, W) in [-1, 1]
    noise_channels = int(getattr(refiner, "noise_channels", 0))
    noise = None
    if noise_channels:
        shape = (noise_channels, *x.shape[2:])
        noise = indexed_noise(batch[INDEX_KEY][order], shape, noise_seed).to(device)
    if n < batch_size:
        # Convolution kernels pick their algorithm by batch size (oneDNN, cuDNN), so a short
        # batch can round differently. Padding every pass to one shape makes image i's bits
        # independent of how ranks and batches cut the set.
        x = torch.cat([x, x.new_zeros((batch_size - n, *x.shape[1:]))])  # (batch_size, C, H, W)
        if noise is not None:
            noise = torch.cat([noise, noise.new_zeros((batch_size - n, *noise.shape[1:]))])
    y = (refiner(x) if noise is None else refiner(x, noise))[:n]  # (n, C, H, W) in [-1, 1]
    # The inverse of to_unit_range above, back to the shard set's dtype.
    images = from_unit_range(y, dtype).cpu().numpy().astype(dtype, copy=False)
    arrays = {IMAGE_KEY: images, INDEX_KEY: batch[INDEX_KEY][order].numpy()}
    for name in label_names:
        arrays[_LABEL_PREFIX + name] = batch[name][order].numpy()
    np.savez(parts / f"{int(arrays[INDEX_KEY][0]):012d}.npz", **arrays)
    return n, invented_depths(batch[IMAGE_KEY][order], images) if dtype == "uint16" else 0


def invented_depths(codes: torch.Tensor, refined: np.ndarray) -> int:
    """Pixels of refined depth crops that are not the far plane where every input pixel of
    their 3x3 window was invalid: depths that no measurement was near. (n, C, H, W) each."""
    measured = F.max_pool2d((codes != 0).float(), 3, stride=1, padding=1) > 0
    return int((~measured & torch.from_numpy(refined.astype(np.int32) != FAR_CODE)).sum())


def _warn_if_invented(invented: int, manifest: Manifest, input_dir: Path, rank: int) -> None:
    if invented == 0 or rank != 0:
        return
    pixels = manifest.count * math.prod(manifest.image_shape)
    print(
        f"distsim.refine: warning: the refiner wrote depths into {invented:,} pixels "
        f"({100 * invented / pixels:.2f}%) whose whole window in {input_dir} held no "
        "measurement; renders converted as sensor depth? (shards convert nyu --depth synth)",
        file=sys.stderr, flush=True,
    )  # fmt: skip


def _assemble(
    parts: Path,
    out_dir: Path,
    manifest: Manifest,
    source: dict[str, Any],
    block_size: int,
    shard_size: int,
    progress: bool,
    overwrite: bool = False,
) -> Manifest:
    expected = 0  # the next position to write: parts must tile [0, count) exactly
    with (
        ShardSetWriter(
            out_dir,
            image_shape=manifest.image_shape,
            image_dtype=manifest.image_dtype,
            labels=manifest.labels,
            source=source,
            shard_size=shard_size,
            block_size=block_size,
            labelled=manifest.labelled,
            labels_for_evaluation_only=manifest.labels_for_evaluation_only,
            overwrite=overwrite,
        ) as writer,
        Progress(
            manifest.count, "write shards", unit="img", enabled=progress, where=out_dir
        ) as bar,
    ):
        for path in sorted(parts.glob("*.npz")):  # zero-padded names: position order
            with np.load(path, allow_pickle=False) as part:
                index = part[INDEX_KEY]  # (n,)
                want = np.arange(expected, expected + len(index))
                if not np.array_equal(index, want):
                    raise RefineError(
                        f"{path}: holds positions {index[0]}..{index[-1]}, expected from "
                        f"{expected}; is {out_dir} on a filesystem all ranks share?"
                    )
                labels = {name: part[_LABEL_PREFIX + name] for name in manifest.labels}
                writer.add(part[IMAGE_KEY], labels)
            expected += len(index)
            bar.update(len(index))
        if expected != manifest.count:
            raise RefineError(
                f"{parts}: refined {expected} of {manifest.count} images; is {out_dir} on a "
                "filesystem all ranks share?"
            )
    assert writer.manifest is not None
    return writer.manifest


def warn_if_pretraining(ckpt: Path) -> None:
    """Say so when a checkpoint predates adversarial training: its refiner is then close to
    the identity (or is only learning it), and refined images are not what SimGAN makes."""
    cfg = load_config(ckpt / "config.json")
    started = cfg.schedule.pretrain_r_steps + cfg.schedule.pretrain_d_steps
    step = int(read_json(ckpt / "meta.json")["step"])
    if step <= started:
        print(
            f"distsim.refine: warning: {ckpt.name} is from step {step}, before adversarial "
            f"training began (after step {started}): its refiner was only pretrained to copy "
            "its input; use a later checkpoint (or --checkpoint best)",
            file=sys.stderr,
        )


def checkpoint_path(run: Path | None, checkpoint: str | None) -> Path:
    """The directory --run / --checkpoint name (resolved further by ``load_refiner``)."""
    if checkpoint is None:
        if run is None:
            raise RefineError("give --run (a run or checkpoint directory) or --checkpoint")
        return run
    as_path = Path(checkpoint)
    if as_path.is_dir() or run is None:
        return as_path
    if checkpoint == "best":
        best = best_checkpoint(run)
        if best is None:
            raise RefineError(
                f"{run}: no checkpoint has realism scores to pick the best by (trained with "
                "--realism-images 0, or before distsim scored realism)"
            )
        return best
    name = f"{PREFIX}{int(checkpoint):08d}" if checkpoint.isdigit() else checkpoint
    return run / "checkpoints" / name
