"""Loader throughput: decoded float eye batches per second, against h5py baselines.

    python benchmarks/loader_throughput.py [--count 50000] [--out benchmarks/results/...json]

What is timed, per process (the consumer's rate; DataLoader workers are extra processes):
each batch of 512 (1, 35, 55) uint8 eyes is converted as the trainer does, ``x.float() / 127.5
- 1``, so every number is "float batches ready for the model".

- shards, resampled: ``make_loader`` (BatchStream, the trainer's infinite stream), workers 0/1/2;
  ``--block-checksums both`` measures it with and without the per-block CRC32 check.
- shards, exact epoch: ``make_epoch_loader`` (EpochStream), one full epoch, workers 0/1/2.
- h5, one (N, 35, 55) dataset: random batches read with sorted fancy indexing (``ds[idx]``),
  and contiguous slices (no shuffling at all: an upper bound for h5).
- h5, Kaggle layout: group ``image`` with one dataset per image, random images read one by one.
- conversion: ``convert_sim_eyes`` (renderer included), the writer alone, and
  ``python -m shards convert SOURCE`` on fixtures from ``tests/fixtures_sources.py`` for the
  other sources (skipped, with a note, where a converter or fixture writer is missing).

Other people's jobs on a small machine move these numbers: the load average is recorded.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fixtures_sources, and the package from a checkout

from distsim.data import make_epoch_loader, make_loader  # noqa: E402
from shards.sim import eyes  # noqa: E402
from shards.writer import ShardSetWriter  # noqa: E402

BATCH = 512
LABELS = {
    "gaze": ((3,), "float32", "unit gaze vector"),
    "pitchyaw": ((2,), "float32", "radians"),
    "pupil": ((2,), "float32", "pixels"),
}


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1  # (B, 1, 35, 55) in [-1, 1], as distsim.data.pixels does


def rate(batches: Iterator[torch.Tensor], n_batches: int) -> tuple[float, int]:
    """Images per second over ``n_batches`` float batches, and the images counted."""
    images = 0
    start = time.perf_counter()
    for _ in range(n_batches):
        images += len(next(batches))
    return images / (time.perf_counter() - start), images


def shard_rates(
    directory: Path,
    n_batches: int,
    workers: list[int],
    checks: list[bool],
    repeats: int = 1,
    resampled_only: bool = False,
) -> list[dict]:
    """Rows per worker count; ``checks``: with and/or without per-block checksums, alternated
    ``repeats`` times so that a load change on a shared machine hits both alike."""
    rows = []
    for num_workers in workers:
        for _ in range(repeats):
            for check in checks:
                loader = make_loader(
                    directory, BATCH, 0, 1, 0, num_workers, (), verify_blocks=check
                )
                stream = (to_float(b["image"]) for b in loader)
                for _ in range(5):  # worker start-up is not throughput
                    next(stream)
                per_s, n = rate(stream, n_batches)
                name = "shards, resampled (BatchStream)"
                if not check:
                    name += ", block checksums off"
                rows.append(row(name, num_workers, per_s, n))
                del stream, loader
        if resampled_only:
            continue

        loader = make_epoch_loader(directory, BATCH, 0, 1, seed=0, num_workers=num_workers)
        for _ in loader:  # epoch 0 starts the workers
            pass
        loader.set_epoch(1)
        per_s, n = rate((to_float(b["image"]) for b in loader), len(loader))
        rows.append(row("shards, exact epoch (EpochStream)", num_workers, per_s, n))
        del loader
    return rows


def h5_rates(images: np.ndarray, tmp: Path, n_batches: int, per_image_batches: int) -> list[dict]:
    rng = np.random.default_rng(0)
    n = len(images)
    path = tmp / "images.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=images)  # (N, 35, 55) uint8, contiguous
    rows = []
    with h5py.File(path, "r") as f:
        ds = f["image"]

        def fancy() -> Iterator[torch.Tensor]:
            while True:
                idx = np.sort(rng.choice(n, BATCH, replace=False))
                yield to_float(torch.from_numpy(ds[idx])[:, None])

        def slices() -> Iterator[torch.Tensor]:
            while True:
                start = int(rng.integers(n - BATCH))
                yield to_float(torch.from_numpy(ds[start : start + BATCH])[:, None])

        for name, batches in (
            ("h5 (N,35,55) dataset, random batches, sorted fancy index", fancy()),
            ("h5 (N,35,55) dataset, contiguous slices (no shuffle)", slices()),
        ):
            next(batches)
            per_s, count = rate(batches, n_batches)
            rows.append(row(name, 0, per_s, count))

    kaggle = tmp / "kaggle_layout.h5"
    start = time.perf_counter()
    with h5py.File(kaggle, "w") as f:
        group = f.create_group("image")
        for i in range(n):
            group.create_dataset(str(i), data=images[i])
    print(f"  (wrote the per-image h5 in {time.perf_counter() - start:.1f} s)", flush=True)
    with h5py.File(kaggle, "r") as f:
        group = f["image"]

        def per_image() -> Iterator[torch.Tensor]:
            while True:
                idx = rng.choice(n, BATCH, replace=False)
                batch = np.stack([group[str(i)][()] for i in idx])  # (B, 35, 55)
                yield to_float(torch.from_numpy(batch)[:, None])

        batches = per_image()
        next(batches)
        per_s, count = rate(batches, per_image_batches)
        rows.append(row("h5 Kaggle layout (group of per-image datasets), random", 0, per_s, count))
    return rows


def row(name: str, workers: int, per_s: float, images: int) -> dict:
    print(f"  {name:<58} workers={workers}  {per_s:>10,.0f} img/s  ({images} images)", flush=True)
    return {"reader": name, "num_workers": workers, "images_per_s": round(per_s), "images": images}


# --- conversion ---------------------------------------------------------------------------------


def fixture_sources() -> dict[str, tuple[str, Callable[[Path, int], Path]]]:
    """source -> (fixture writer name, write(tmp, n) -> the --input path)."""

    def kaggle(tmp: Path, n: int) -> Path:
        path = tmp / "gaze.h5"
        fixtures().write_kaggle_h5(path, n, labelled=True, seed=0)
        return path

    def unity(tmp: Path, n: int) -> Path:
        fixtures().write_unityeyes_dir(tmp / "unityeyes", n, seed=0)
        return tmp / "unityeyes"

    def mpii(tmp: Path, n: int) -> Path:
        # n images = people x days x frames x 2 eyes.
        fixtures().write_mpiigaze_root(tmp / "mpiigaze", 2, 2, max(1, n // 8), seed=0)
        return tmp / "mpiigaze"

    return {
        "kaggle-h5": ("write_kaggle_h5", kaggle),
        "unityeyes": ("write_unityeyes_dir", unity),
        "mpiigaze": ("write_mpiigaze_root", mpii),
    }


def fixtures():  # noqa: ANN201 - a module
    return importlib.import_module("tests.fixtures_sources")


def conversion_rates(
    tmp: Path, sim_count: int, source_counts: dict[str, int], workers: int
) -> list[dict]:
    from shards.sources.sim_eyes import convert_sim_eyes

    rows = []
    start = time.perf_counter()
    convert_sim_eyes(tmp / "sim", "synthetic", sim_count, 0, progress=False)
    seconds = time.perf_counter() - start
    rows.append(conv_row("sim-eyes (convert_sim_eyes, renderer included)", sim_count, seconds))
    shutil.rmtree(tmp / "sim")

    for source, (writer, write) in fixture_sources().items():
        n = source_counts[source]
        try:
            if not hasattr(fixtures(), writer):
                raise ImportError(f"tests.fixtures_sources has no {writer}")
        except ImportError as e:
            print(f"  {source}: skipped, fixture not available: {e}", flush=True)
            rows.append({"source": source, "skipped": f"fixture not available: {e}"})
            continue
        src = tmp / f"src-{source}"
        src.mkdir()
        made = time.perf_counter()
        given = write(src, n)
        made = time.perf_counter() - made
        out = tmp / f"out-{source}"
        cmd = [sys.executable, "-m", "shards", "convert", source, "--input", str(given)]
        cmd += ["--out", str(out), "--workers", str(workers)]
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["(no stderr)"])[-1]
            print(f"  {source}: skipped, converter failed: {why}", flush=True)
            rows.append({"source": source, "skipped": f"converter failed: {why}"})
        else:
            count = json.loads((out / "manifest.json").read_text())["count"]
            r = conv_row(
                f"{source} (python -m shards convert, --workers {workers})", count, seconds
            )
            r["fixture_write_s"] = round(made, 2)
            rows.append(r)
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    return rows


def conv_row(name: str, count: int, seconds: float) -> dict:
    per_s = count / seconds
    print(f"  {name:<58} {count:>7} images {seconds:7.2f} s {per_s:>10,.0f} img/s", flush=True)
    return {
        "source": name,
        "images": count,
        "seconds": round(seconds, 2),
        "images_per_s": round(per_s),
    }


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--count", type=int, default=50_000, help="eye images (default 50000)")
    p.add_argument("--batches", type=int, default=200, help="timed batches per reader")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads in the consuming process (default 1: on 2 busy cores the "
        "float conversion with 2 OpenMP threads is 10x slower than with 1)",
    )
    p.add_argument("--no-conversion", action="store_true", help="skip the conversion section")
    p.add_argument(
        "--block-checksums",
        choices=("on", "off", "both"),
        default="on",
        help="resampled loader with per-block checksums verified (on, the default everywhere), "
        "not verified (off), or both, alternated: what verification costs",
    )
    p.add_argument(
        "--repeats", type=int, default=1, help="times each resampled row is measured (default 1)"
    )
    p.add_argument(
        "--resampled-only",
        action="store_true",
        help="only the resampled make_loader rows: no epoch loader, h5 baselines or conversion",
    )
    p.add_argument(
        "--source-count",
        type=int,
        default=2000,
        help="fixture images per other source (default 2000; start-up is included)",
    )
    p.add_argument("--convert-workers", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/loader_throughput.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    load_start = os.getloadavg()

    tmp = Path(tempfile.mkdtemp(prefix="loader_throughput."))
    try:
        print(f"rendering {a.count} eyes ...", flush=True)
        start = time.perf_counter()
        sample = eyes.generate("synthetic", a.count, 0)
        render_s = time.perf_counter() - start
        start = time.perf_counter()
        with ShardSetWriter(
            tmp / "set", eyes.IMAGE_SHAPE, "uint8", LABELS, {"name": "sim-eyes"}, 10_000, 256
        ) as writer:
            writer.add(sample["image"], {k: sample[k] for k in LABELS})
        write_s = time.perf_counter() - start

        print(f"readers, batch {BATCH}, float conversion included, {a.threads} torch thread(s):")
        checks = {"on": [True], "off": [False], "both": [True, False]}[a.block_checksums]
        loaders = shard_rates(
            tmp / "set", a.batches, a.workers, checks, a.repeats, a.resampled_only
        )
        baselines = []
        if not a.resampled_only:
            baselines = h5_rates(sample["image"], tmp, a.batches, max(2, a.batches // 20))

        conversion = [
            {
                "source": "sim-eyes render only (eyes.generate)",
                "images": a.count,
                "seconds": round(render_s, 2),
                "images_per_s": round(a.count / render_s),
            },
            {
                "source": "shard writer only (ShardSetWriter.add, 5 shards)",
                "images": a.count,
                "seconds": round(write_s, 2),
                "images_per_s": round(a.count / write_s),
            },
        ]
        if not (a.no_conversion or a.resampled_only):
            print("conversion:")
            counts = dict.fromkeys(fixture_sources(), a.source_count)
            conversion += conversion_rates(tmp, a.count, counts, a.convert_workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "command": " ".join(["python", "benchmarks/loader_throughput.py", *(argv or sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()}-core CPU, no GPU, torch {torch.__version__}",
        "python": platform.python_version(),
        "torch_threads": a.threads,
        "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "count": a.count,
        "batch_size": BATCH,
        "image": "(1, 35, 55) uint8 -> float32 [-1, 1]",
        "loaders": loaders,
        "baselines": baselines,
        "conversion": conversion,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
