"""Depth-hand simulator speed: crops per second through ``shards convert sim-hands``.

    python benchmarks/hand_sim_speed.py [--count 1000] [--sizes 224 64] [--workers 1 2]
                                        [--out benchmarks/results/hand_sim_speed.json]

Each row converts ``--count`` crops of one domain and size with ``convert_sim_hands`` (render,
encode and write the shard set; the writer is a small part) in 1 or 2 worker processes, and
records the wall-clock rate and the CPU time per crop (this process plus its workers). On a
shared machine the wall-clock rate moves with other people's jobs, the CPU time much less:
the load average is recorded, and ``minutes_for_10k`` is the wall-clock rate extrapolated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package from a checkout

from shards.sim import hands  # noqa: E402
from shards.sources.sim_hands import convert_sim_hands  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU of this process and of its waited-for children (the workers)."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(domain: str, size: int, workers: int, count: int, tmp: Path) -> dict[str, object]:
    out = tmp / f"{domain}-{size}-{workers}"
    cpu, start = cpu_seconds(), time.perf_counter()
    convert_sim_hands(out, domain, count, seed=0, size=size, workers=workers, progress=False)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    shutil.rmtree(out)
    row = {
        "domain": domain,
        "size": size,
        "workers": workers,
        "crops": count,
        "seconds": round(wall, 2),
        "crops_per_s": round(count / wall, 1),
        "cpu_ms_per_crop": round(1000 * cpu / count, 2),
        "minutes_for_10k": round(10_000 / (count / wall) / 60, 1),
        "load_average": round(os.getloadavg()[0], 2),
    }
    print(
        f"{domain:>9} {size:>4} px  {workers} worker(s): {row['crops_per_s']:>7} crops/s  "
        f"{row['cpu_ms_per_crop']:>6} CPU ms/crop  10k in {row['minutes_for_10k']} min  "
        f"(load {row['load_average']})",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--count", type=int, default=1000, help="crops per row (default 1000)")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--domains", nargs="+", default=list(hands.DOMAINS), choices=hands.DOMAINS)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/hand_sim_speed.json")
    a = p.parse_args(argv)
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="hand_sim_speed."))
    try:
        rows = [
            measure(domain, size, workers, a.count, tmp)
            for domain in a.domains
            for size in a.sizes
            for workers in a.workers
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "command": " ".join(["python", "benchmarks/hand_sim_speed.py", *(argv or sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()}-core CPU",
        "python": platform.python_version(),
        "niceness": os.nice(0),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "sim_version": hands.SIM_VERSION,
        "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "rows": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
