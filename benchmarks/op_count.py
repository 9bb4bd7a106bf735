"""How many operator calls does one SimGAN iteration issue? The plain loop against our step.

    python benchmarks/op_count.py [--configs eyes,eyes-cpu] [--batch 8] [--out JSON]

On a GPU the 35x55 eye step is launch-bound: its time is the number of kernels it launches,
not their FLOPs. This counts, on the CPU (the dispatcher sees the same operators on any
device), every ATen operator one adversarial iteration (K_g = 2 R steps + K_d = 1 D step, the
buffer full enough to mix) calls, in fp32 and under bf16 autocast, for the plain loop of
``step_throughput.py`` and for ``distsim.gan.step.SimGANStep`` eager, and of them: dtype casts
(``_to_copy``), reflection pads, operators that are not mere views (on a GPU each of those
launches a kernel), and host syncs (``_local_scalar_dense``: ``.item()``, a
Python ``if`` on a tensor). A compiled step fuses most of what remains into a few kernels;
its kernel count is reported by the GPU check (CUDA graphs replay it as one launch).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.step_throughput import CONFIGS, K_D, K_G, PlainLoop
from distsim.checkpoints.models import build_models
from distsim.config import make_config
from distsim.gan.history import HistoryBuffer
from distsim.gan.losses import PSI
from distsim.gan.step import SimGANStep

# Operators that only make a new view of existing memory: no kernel runs on a GPU.
VIEWS = {"detach", "view", "_unsafe_view", "expand", "unsqueeze", "squeeze", "slice", "select",
         "permute", "t", "transpose", "alias", "as_strided", "unbind", "split"}  # fmt: skip


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def count(config: str, batch: int, precision: str, mode: str) -> dict[str, Any]:
    preset, shape = CONFIGS[config]
    cfg = make_config(preset)
    torch.manual_seed(0)
    refiner, disc = build_models(cfg, shape[0])
    syn = torch.rand(batch, *shape) * 2 - 1
    real = torch.rand(batch, *shape) * 2 - 1
    bf16 = precision == "bf16"
    if mode == "plain":
        loop: Any = PlainLoop(
            refiner, disc, 100 * batch, cfg.optim.lambda_reg, bf16, torch.device("cpu")
        )
    else:
        loop = SimGANStep(
            refiner, disc,
            # Fused, as the trainer runs Adam on CUDA (torch has a fused CPU Adam too).
            torch.optim.Adam(refiner.parameters(), 1e-4, fused=True),
            torch.optim.Adam(disc.parameters(), 1e-3, fused=True),
            psi=PSI[cfg.optim.psi], lambda_reg=cfg.optim.lambda_reg,
            history=HistoryBuffer(100 * batch, shape, seed=0,
                                  dtype=torch.bfloat16 if bf16 else torch.float32),
            precision="bf16" if bf16 else "no",
        )  # fmt: skip

    def iteration() -> None:
        for _ in range(K_G):
            loop.refiner_step(syn)
        for _ in range(K_D):
            loop.discriminator_step(syn, real)

    for _ in range(2):  # the buffer then holds enough to mix, as in steady state
        iteration()
    r_counter, it_counter = OpCounter(), OpCounter()
    with r_counter:
        loop.refiner_step(syn)
    with it_counter:
        iteration()

    def summary(ops: Counter[str]) -> dict[str, int]:
        return {
            "ops": sum(ops.values()),
            "kernels": sum(n for op, n in ops.items() if op not in VIEWS),
            "casts": ops["_to_copy"],
            "reflection_pads": ops["reflection_pad2d"],
            "host_syncs": ops["_local_scalar_dense"],
        }

    return {"config": config, "batch": batch, "precision": precision, "mode": mode,
            "r_step": summary(r_counter.ops), "iteration": summary(it_counter.ops),
            "iteration_ops": dict(it_counter.ops.most_common())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="eyes")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/op_count.json"))
    args = parser.parse_args()
    rows = []
    for config in args.configs.split(","):
        for precision in ("fp32", "bf16"):
            for mode in ("plain", "eager"):
                row = count(config, args.batch, precision, mode)
                rows.append(row)
                r, it = row["r_step"], row["iteration"]
                print(
                    f"{config:8s} {precision:4s} {mode:6s} R step {r['ops']:5d} ops "
                    f"{r['kernels']:5d} non-view "
                    f"({r['casts']} casts, {r['reflection_pads']} pads, {r['host_syncs']} syncs)"
                    f"  iteration {it['ops']:5d} ops {it['kernels']:5d} non-view "
                    f"({it['casts']} casts, {it['host_syncs']} host syncs)",
                    flush=True,
                )
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "torch": torch.__version__, "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
