"""What DeepSpeed ZeRO would save on SimGAN's models, against what a step's activations take.

    python benchmarks/zero_savings.py [--gpus 8] [--out benchmarks/results/zero_savings.json]

For the `eyes` and `hands` presets' R and D (built as training builds them): parameter counts,
the bytes of parameters + gradients + Adam's two moments in float32 (16 bytes a parameter),
and what ZeRO-1 (moments), ZeRO-2 (+ gradients) and ZeRO-3 (+ parameters) would take off each
of `--gpus` GPUs: the sharded part times (1 - 1/gpus). Against it, the activation memory of
the refiner's update (R forward, D forward on R's output, the self-regularisation term) at the
preset's batch per GPU: the bytes autograd saves for backward, counted by a saved-tensor hook
(distinct storages only) on the meta device, so the hand models at 224x224 cost no memory
here; `--check` also runs the eye step on the CPU with real tensors, which must agree.
ZeRO shards none of the activations, and they do not shrink with more GPUs at a fixed batch
per GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distsim.checkpoints.models import build_models  # noqa: E402
from distsim.config import make_config  # noqa: E402

IMAGE = {"eyes": (1, 35, 55), "hands": (1, 224, 224)}  # the paper's image sizes
MIB = 2**20


def saved_activation_bytes(preset: str, device: str) -> tuple[int, int]:
    """(bytes autograd saves in the refiner's update, batch) at the preset's batch per GPU."""
    cfg = make_config(preset)
    with torch.device(device):
        refiner, disc = build_models(cfg, IMAGE[preset][0])
        x = torch.rand(cfg.schedule.batch_size, *IMAGE[preset]) * 2 - 1  # (B, C, H, W)
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        # meta tensors have no storages to tell apart: the tensor itself
        key = (id(t), 0) if t.device.type == "meta" else (t.untyped_storage().data_ptr(), 0)
        seen[key] = (
            t.untyped_storage().nbytes()
            if t.device.type != "meta"
            else (t.numel() * t.element_size())
        )
        return t

    params = {id(p) for m in (refiner, disc) for p in m.parameters()}

    def pack_no_params(t: torch.Tensor) -> torch.Tensor:
        return t if id(t) in params else pack(t)

    with torch.autograd.graph.saved_tensors_hooks(pack_no_params, lambda t: t):
        refined = refiner(x)  # (B, C, H, W)
        logits = disc(refined)  # (B, 2, h, w)
        loss = torch.nn.functional.cross_entropy(
            logits, torch.zeros(logits.shape[0], *logits.shape[2:], dtype=torch.long,
                                device=logits.device),
        ) + (refined - x).abs().mean()  # fmt: skip
    del loss
    return sum(seen.values()), cfg.schedule.batch_size


def model_state(preset: str, gpus: int) -> dict[str, Any]:
    cfg = make_config(preset)
    refiner, disc = build_models(cfg, IMAGE[preset][0])
    counts = {
        name: sum(p.numel() for p in m.parameters()) for name, m in (("R", refiner), ("D", disc))
    }
    total = sum(counts.values())
    shard = 1 - 1 / gpus
    state = 16 * total  # float32 params 4 + grads 4 + Adam m 4 + v 4
    return {
        "parameters": counts,
        "parameters_total": total,
        "params_grads_adam_bytes": state,
        "zero_saves_per_gpu_bytes": {
            "zero1": 8 * total * shard,
            "zero2": 12 * total * shard,
            "zero3": 16 * total * shard,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--check", action="store_true", help="also count the eye step on CPU")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {"gpus": args.gpus}
    for preset in ("eyes", "hands"):
        row = model_state(preset, args.gpus)
        act, batch = saved_activation_bytes(preset, "meta")
        row["batch_per_gpu"] = batch
        row["image"] = list(IMAGE[preset])
        row["activation_bytes_r_step"] = act
        if args.check and preset == "eyes":
            row["activation_bytes_r_step_cpu"] = saved_activation_bytes(preset, "cpu")[0]
        results[preset] = row
        z = row["zero_saves_per_gpu_bytes"]
        print(
            f"{preset}: R {row['parameters']['R']:,} + D {row['parameters']['D']:,} params; "
            f"params+grads+Adam {row['params_grads_adam_bytes'] / MIB:.2f} MiB; ZeRO-1/2/3 "
            f"save {z['zero1'] / MIB:.2f}/{z['zero2'] / MIB:.2f}/{z['zero3'] / MIB:.2f} MiB per "
            f"GPU at {args.gpus}; activations of R's step at batch {batch}: "
            f"{act / MIB:,.0f} MiB"
            + (
                f" (CPU: {row['activation_bytes_r_step_cpu'] / MIB:,.0f})"
                if args.check and preset == "eyes"
                else ""
            )  # fmt: skip
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
