"""Distributed scaling: measured on this machine, and modelled for GPU clusters.

    python benchmarks/scaling.py [--measure] [--model] [--out benchmarks/results/scaling.json]

--measure: SimGAN training throughput (synthetic images through R per second, all ranks; the
  trainer's `images_per_second`, averaged over the adversarial phase after its first log) for
  1 process with all cores, 1 process with 1 thread, and 2 gloo processes with 1 thread each,
  for the `smoke` config and a mid-sized one (the `cpu` preset's models at batch 32).
--model: per-iteration FLOPs (counted by torch's FlopCounterMode on meta tensors, so exact for
  these architectures at any size) and bytes each rank hands to collectives for the `eyes`
  and `hands` presets, then the weak-scaling efficiency expected at 8, 64 and 256 GPUs under
  the stated hardware assumptions (HW below). Printed as a table and written to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from distsim.checkpoints.models import build_models  # noqa: E402
from distsim.config import make_config  # noqa: E402
from distsim.gan.discriminator import REAL, REFINED  # noqa: E402
from distsim.gan.losses import local_adversarial_loss, self_regularization_loss  # noqa: E402

# Hardware assumptions for the model (an 8x H100 SXM node per 8 GPUs).
HW = {
    # Achieved bf16 throughput per GPU. These convolutions are small (64 channels; eyes are
    # 35x55), far from the 989 TFLOP/s dense peak: we assume 10% for eyes, 25% for hands.
    "tflops_eyes": 100.0,
    "tflops_hands": 250.0,
    # Per-GPU bus bandwidth for collectives: NVLink inside a node, one 400 Gb/s NIC per GPU
    # between nodes (about 50 GB/s, of which NCCL typically reaches ~40).
    "nvlink_gbs": 360.0,
    "ib_gbs": 40.0,
    # Per-hop latency of a small collective (NCCL tree: ~2 log2(W) hops).
    "latency_us_intra": 8.0,
    "latency_us_inter": 15.0,
}
MID = {
    "refiner_width": 32,
    "batch_size": 32,
    "pretrain_r_steps": 20,
    "pretrain_d_steps": 10,
    "steps": 60,
    "log_every": 10,
    "image_every": 10_000,
    "ckpt_every": 10_000,
    "history_size": 3200,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flags(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        flag = k.replace("_", "-")
        if isinstance(v, bool):  # the trainer's booleans are --x / --no-x, with no value
            out.append(f"--{flag}" if v else f"--no-{flag}")
        else:
            out += [f"--{flag}", str(v)]
    return out


def measure_one(
    preset: str, overrides: dict, procs: int, threads: int, cache: Path
) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        args = [
            str(REPO / "distsim" / "train.py"), "--preset", preset, "--run-dir", str(run_dir),
            "--cache-dir", str(cache), "--no-progress", "--num-workers", "0",
            "--builtin-count", "2048", *flags(overrides),
        ]  # fmt: skip
        if procs == 1:
            cmd = [sys.executable, *args]
        else:
            cmd = [
                sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                "--num_processes", str(procs), "--num_machines", "1", "--mixed_precision",
                "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *args,
            ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        acc = EventAccumulator(str(run_dir / "tensorboard"))
        acc.Reload()
        events = acc.Scalars("images_per_second")
        cfg = make_config(preset, **overrides)
        adversarial = [
            e.value
            for e in events
            if e.step > cfg.schedule.pretrain_r_steps + cfg.schedule.pretrain_d_steps
        ][1:]  # the first adversarial interval includes warm-up
        return {"images_per_second": statistics.mean(adversarial), "wall_s": wall}


def measure(cache: Path) -> list[dict]:
    rows = []
    configs = {
        "smoke": ("smoke", {"steps": 200, "log_every": 20, "ckpt_every": 10_000}),
        "mid": ("cpu", MID),
    }
    for name, (preset, overrides) in configs.items():
        for procs, threads in ((1, os.cpu_count() or 1), (1, 1), (2, 1)):
            # Once untimed: the built-in shards get made, caches warm.
            result = measure_one(preset, overrides, procs, threads, cache)
            row = {"config": name, "processes": procs, "threads_each": threads, **result}
            rows.append(row)
            print(
                f"{name:6s} {procs} proc x {threads} thread(s): "
                f"{row['images_per_second']:8.1f} images/s (run {row['wall_s']:.1f} s)",
                flush=True,
            )
    return rows


def iteration_flops(preset: str, batch: int | None = None) -> dict[str, float]:
    """FLOPs of one adversarial iteration (K_g R steps + K_d D steps) on one rank; the D
    step refines only the b/2 images it uses (step.py)."""
    cfg = make_config(preset, **({"batch_size": batch} if batch else {}))
    c, h, w = (1, 35, 55) if cfg.discriminator.arch == "eyes" else (1, 224, 224)
    b = cfg.schedule.batch_size
    with torch.device("meta"):
        refiner, disc = build_models(cfg, c)
        syn = torch.empty(b, c, h, w)
        real = torch.empty(b, c, h, w)
        counter = FlopCounterMode(display=False)
        with counter:
            refined = refiner(syn)
            loss = local_adversarial_loss(disc(refined), REAL).mean()
            loss = loss + cfg.optim.lambda_reg * self_regularization_loss(refined, syn).mean()
            loss.backward()
        r_step = counter.get_total_flops()
        counter = FlopCounterMode(display=False)
        with counter:
            with torch.no_grad():
                fake = refiner(syn[: b // 2])
            logits = disc(torch.cat([fake, fake, real]))
            loss = local_adversarial_loss(logits[:b], REFINED).mean()
            loss = loss + local_adversarial_loss(logits[b:], REAL).mean()
            loss.backward()
        d_step = counter.get_total_flops()
    r_params = sum(p.numel() for p in refiner.parameters())
    d_params = sum(p.numel() for p in disc.parameters())
    return {
        "batch": b,
        "image": [c, h, w],
        "k_g": cfg.schedule.k_g,
        "k_d": cfg.schedule.k_d,
        "r_step_flops": r_step,
        "d_step_flops": d_step,
        "iteration_flops": cfg.schedule.k_g * r_step + cfg.schedule.k_d * d_step,
        "r_params": r_params,
        "d_params": d_params,
    }


def comm_model(
    f: dict, world: int, image_bytes: int = 2, sharded: bool = False
) -> dict[str, float]:
    """Bytes each rank hands to collectives per iteration, and the time they take. A sharded
    history buffer exchanges no images (history.py)."""
    c, h, w = f["image"]
    gather = 0 if sharded else (world - 1) * (f["batch"] // 2) * c * h * w * image_bytes
    grads_r, grads_d = 4 * f["r_params"], 4 * f["d_params"]  # fp32 gradients
    # Ring all-reduce moves 2 (W-1)/W of the payload through each rank's link.
    ring = 2 * (world - 1) / world
    per_iter = f["k_g"] * grads_r * ring + f["k_d"] * (grads_d * ring + gather)
    inter = world > 8
    bw = (HW["ib_gbs"] if inter else HW["nvlink_gbs"]) * 1e9
    hop = (HW["latency_us_inter"] if inter else HW["latency_us_intra"]) * 1e-6
    # R all-reduce per R step; per D step the D all-reduce, and the gather when replicated.
    collectives = f["k_g"] + f["k_d"] * (1 if sharded else 2)
    latency = collectives * 2 * math.log2(world) * hop
    return {
        "payload_bytes": {
            "r_grads": grads_r,
            "d_grads": grads_d,
            "history_gather_received": gather,
        },
        "bytes_per_iteration": per_iter,
        "comm_s": per_iter / bw + latency,
    }


def model(batches: dict[str, list[int]] | None = None) -> dict:
    """Weak scaling at 8, 64 and 256 GPUs for both buffer layouts, at each preset's batch
    and, for the eyes, at a larger per-GPU batch (its compute per step grows, the collectives
    do not)."""
    batches = batches or {"eyes": [64, 128], "hands": [16]}
    out = {"hardware_assumptions": HW, "presets": {}}
    for preset, sizes in batches.items():
        for batch in sizes:
            f = iteration_flops(preset, batch)
            tflops = HW["tflops_eyes"] if preset == "eyes" else HW["tflops_hands"]
            compute = f["iteration_flops"] / (tflops * 1e12)
            rows = {}
            for layout in ("replicated", "sharded"):
                for world in (8, 64, 256):
                    comm = comm_model(f, world, sharded=layout == "sharded")
                    # No overlap assumed: these models' gradients fit one DDP bucket, whose
                    # all-reduce starts only when backward ends.
                    eff = compute / (compute + comm["comm_s"])
                    rows[f"{layout}-{world}"] = {**comm, "compute_s": compute,
                                                 "weak_scaling_efficiency": eff}  # fmt: skip
            out["presets"][f"{preset}-b{batch}"] = {"flops": f, "worlds": rows}
            print(
                f"{preset}: batch {batch}/GPU, {f['iteration_flops'] / 1e9:.1f} GFLOP per "
                f"iteration -> {compute * 1e3:.2f} ms at {tflops:.0f} TFLOP/s; R "
                f"{f['r_params']:,} and D {f['d_params']:,} parameters"
            )
            for key, r in rows.items():
                print(
                    f"  {key:15s}: {r['bytes_per_iteration'] / 1e6:8.2f} MB/iteration/rank, "
                    f"comm {r['comm_s'] * 1e3:6.3f} ms -> efficiency "
                    f"{100 * r['weak_scaling_efficiency']:.1f}%"
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", action="store_true")
    parser.add_argument("--model", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/scaling.json")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench")
    args = parser.parse_args()
    if not (args.measure or args.model):
        args.measure = args.model = True
    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
    }
    if args.model:
        result["model"] = model()
    if args.measure:
        result["measured"] = measure(args.cache_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
