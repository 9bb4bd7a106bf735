"""Checkpoints on disk: one directory per save, written atomically.

    RUN_DIR/checkpoints/step-00000500/
        refiner.safetensors  discriminator.safetensors   weights, loadable without torch.load
        refiner_ema.safetensors                           the refiner's weight average, if any
        state.pt                                          optimisers, scaler, history buffer,
                                                          counters, every rank's RNG states
        config.json                                       the resolved run config

A save goes to a hidden temporary directory that is renamed into place only when complete, so
a crash mid-save never leaves a half checkpoint that looks whole. ``SHA256SUMS`` lists a
checksum of every other file, and every file is fsynced before the rename: a checkpoint that
later loses bytes (a full disk, a bad copy, a truncated transfer) is found out by
``verify_checkpoint``, and ``--resume auto`` takes the newest one that verifies.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from distsim.checkpoints.realism import select_checkpoint
from distsim.config import Config, load_config
from shards.format import file_sha256

PREFIX = "step-"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    refiner: nn.Module,
    discriminator: nn.Module,
    state: dict[str, Any],
    config: Config,
    image_shape: tuple[int, ...],
    image_dtype: str | None = None,
    keep: int = 0,
    refiner_ema: nn.Module | None = None,
    realism: dict[str, float] | None = None,
    protect: Path | None = None,
) -> Path:
    """Write checkpoint `step` atomically and keep only the newest `keep` (0: keep all), the
    one with the best realism score (``distsim.checkpoints.realism.select_checkpoint``), which
    ``refine --checkpoint best`` takes, and `protect` (the checkpoint a run resumed from,
    until it has saved one of its own).

    `image_shape` (C, H, W) and `image_dtype` (uint8 images, uint16 depth codes) of the
    training images go into meta.json, so tools that load
    the refiner (refine, evaluate) can check their input without reading the training data;
    so do the realism scores of this checkpoint's refiner, when the run measured them.
    """
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    # Leftovers of saves that crashed (any step, any process) are never read: remove them.
    for stale in root.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    tmp.mkdir()
    try:
        _write(tmp, refiner, discriminator, refiner_ema, state, config, step, image_shape,
               image_dtype, realism)  # fmt: skip
    except (RuntimeError, SafetensorError) as err:
        # torch.save and safetensors say a full disk their own way (basic_ios::clear, os
        # error 28); a failed write is an OSError, one line, whichever wrote.
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"{tmp}: {' '.join(str(err).split())}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk keeps no half checkpoint
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    if keep > 0:
        # Never the one just written (a run resumed from an older checkpoint writes below
        # newer ones), the best by realism, or the one a run resumed from.
        spare = {final, best_checkpoint(run_dir), protect}
        for old in list_checkpoints(run_dir)[:-keep]:
            if old not in spare:
                shutil.rmtree(old)
    return final


def _write(
    tmp: Path,
    refiner: nn.Module,
    discriminator: nn.Module,
    refiner_ema: nn.Module | None,
    state: dict[str, Any],
    config: Config,
    step: int,
    image_shape: tuple[int, ...],
    image_dtype: str | None,
    realism: dict[str, float] | None,
) -> None:
    save_file(_contiguous(refiner.state_dict()), tmp / "refiner.safetensors")
    save_file(_contiguous(discriminator.state_dict()), tmp / "discriminator.safetensors")
    if refiner_ema is not None:
        save_file(_contiguous(refiner_ema.state_dict()), tmp / "refiner_ema.safetensors")
    torch.save(state, tmp / "state.pt")
    (tmp / "config.json").write_text(config.to_json())
    meta: dict[str, Any] = {"step": step, "image_shape": [int(v) for v in image_shape]}
    if image_dtype is not None:
        meta["image_dtype"] = image_dtype
    if realism is not None:
        meta["realism"] = realism
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    sums = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
    (tmp / CHECKSUMS).write_text("".join(f"{h}  {name}\n" for name, h in sums.items()))
    for path in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
        _fsync(path)
    _fsync(tmp)


CHECKSUMS = "SHA256SUMS"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify_checkpoint(ckpt: str | Path) -> str | None:
    """None if every file the checkpoint's SHA256SUMS lists is there with that checksum (or,
    for a checkpoint from before checksums, if its files are there and load); else what is
    wrong."""
    ckpt = Path(ckpt)
    listing = ckpt / CHECKSUMS
    if not listing.is_file():
        return _readable(ckpt)
    for line in listing.read_text().splitlines():
        want, _, name = line.partition("  ")
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != want:
            return f"{name} does not match its checksum (truncated or corrupt)"
    return None


_FILES = ("refiner.safetensors", "discriminator.safetensors", "state.pt", "config.json",
          "meta.json")  # fmt: skip


def _readable(ckpt: Path) -> str | None:
    """What is wrong with a checkpoint without checksums, found by loading every file (there
    is nothing else to check a truncated file against)."""
    for name in _FILES:
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        try:
            if name.endswith(".safetensors"):
                load_file(path)
            elif name == "state.pt":
                torch.load(path, map_location="cpu", weights_only=True)
            else:
                json.loads(path.read_text())
        except Exception as err:  # noqa: BLE001 - every library's own error for a bad file
            return f"{name} cannot be read, truncated or corrupt ({type(err).__name__})"
    return None


def realism_scores(run_dir: str | Path) -> dict[str, dict[str, float]]:
    """{checkpoint name: its realism scores} for the run's checkpoints that have them."""
    scores = {}
    for ckpt in list_checkpoints(run_dir):
        try:
            meta = read_json(ckpt / "meta.json")
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get("realism"), dict):
            scores[ckpt.name] = meta["realism"]
    return scores


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``realism.select_checkpoint`` picks, or None if none is scored."""

    name = select_checkpoint(realism_scores(run_dir))
    return checkpoint_root(run_dir) / name if name is not None else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are not listed)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory or a run directory (meaning its newest checkpoint)."""
    path = Path(path)
    if (path / "refiner.safetensors").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise ValueError(f"{path}: no checkpoint found (expected {path}/checkpoints/{PREFIX}*)")
    return latest


def image_shape(path: str | Path) -> tuple[int, int, int]:
    """(C, H, W) of the images a checkpoint's models were trained on."""
    meta = read_json(resolve_checkpoint(path) / "meta.json")
    c, h, w = meta["image_shape"]
    return int(c), int(h), int(w)


def image_dtype(path: str | Path) -> str | None:
    """The stored dtype of the images a checkpoint's models were trained on (uint8 images,
    uint16 depth codes): its meta.json's, else, for a run on built-in data from before meta
    recorded it, the simulator's; None when that cannot be known."""
    ckpt = resolve_checkpoint(path)
    recorded = read_json(ckpt / "meta.json").get("image_dtype")
    if recorded is not None:
        return str(recorded)
    data = load_config(ckpt / "config.json").data
    if data.synthetic:
        return None
    return "uint16" if data.builtin_sim == "hands" else "uint8"


def load_state(path: str | Path) -> dict[str, Any]:
    return torch.load(resolve_checkpoint(path) / "state.pt", map_location="cpu", weights_only=True)


def find_resume(spec: str, run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The checkpoint `--resume spec` means (None: a fresh start), and the checkpoints skipped
    on the way, each with why.

    "auto" is the newest checkpoint of `run_dir` that verifies, or None if it has none (so one
    command both starts and resumes a preemptible job; ValueError if it has some and none
    verifies); anything else must name a checkpoint,
    or a run directory whose newest checkpoint, that verifies (ValueError otherwise).
    """
    if not spec:
        return None, []
    if spec == "auto":
        skipped = []
        for ckpt in reversed(list_checkpoints(run_dir)):
            problem = verify_checkpoint(ckpt)
            if problem is None:
                return ckpt, skipped
            skipped.append(f"{ckpt}: {problem}")
        if skipped:  # starting afresh over a run whose checkpoints all fail would hide it
            raise ValueError(
                f"no checkpoint in {Path(run_dir) / 'checkpoints'} verifies ({skipped[0]}"
                f"{f' and {len(skipped) - 1} more' if len(skipped) > 1 else ''}); "
                "give one with --resume PATH or start a new --run-dir"
            )
        return None, skipped
    ckpt = resolve_checkpoint(spec)
    problem = verify_checkpoint(ckpt)
    if problem is not None:
        raise ValueError(f"{ckpt}: {problem}; give an older checkpoint or --resume auto")
    return ckpt, []


def rng_state() -> dict[str, Any]:
    """This process's global RNG states, in types `torch.load(weights_only=True)` accepts."""
    kind, key, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(np.asarray(key, dtype=np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_tuples(state["python"]))


def _tuples(value: Any) -> Any:
    # random.setstate needs tuples; a checkpoint round trip may hand back lists.
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def load_weights(
    path: str | Path,
    refiner: nn.Module | None,
    discriminator: nn.Module | None,
    *,
    refiner_file: str = "refiner",
) -> None:
    """Load a checkpoint's weights into the models given; `refiner_file` "refiner_ema" loads
    the refiner's weight average instead of its last weights."""
    ckpt = resolve_checkpoint(path)
    if refiner is not None:
        refiner.load_state_dict(load_file(ckpt / f"{refiner_file}.safetensors"))
    if discriminator is not None:
        discriminator.load_state_dict(load_file(ckpt / "discriminator.safetensors"))


def has_ema(path: str | Path) -> bool:
    return (resolve_checkpoint(path) / "refiner_ema.safetensors").is_file()


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}
