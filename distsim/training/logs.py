"""What a run shows a person: TensorBoard scalars, image grids, loss curves, warnings and the
summary at the end. Only the main process writes; every rank takes part in the reductions.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distsim.checkpoints.store import best_checkpoint, latest_checkpoint, read_json
from distsim.config import Config
from distsim.gan.step import D_STATS_HISTORY, R_STATS
from distsim.training.board import Board
from distsim.training.pictures import depth_grid, grid, plot_curves, save_png, titled
from distsim.training.runtime import Runtime
from shards.cliutil import written

# Warn when more than this fraction of refined pixels sits at tanh's limits over a log
# interval. Eyes have almost none there (0.02% of real ones); a collapsed refiner has all.
SATURATION_WARNING = 0.5


@dataclasses.dataclass
class Since:
    """Updates and time at the previous log step: what images/s is measured over."""

    r_steps: int
    d_steps: int
    clock: float


class RunLog:
    """The run directory's config.json, TensorBoard log, grids and curves."""

    def __init__(self, cfg: Config, runtime: Runtime, run_dir: Path) -> None:
        self.cfg, self.runtime, self.run_dir = cfg, runtime, run_dir
        self.writer: Board | None = None
        self.warned_saturation = False
        self.since = Since(0, 0, time.perf_counter())
        if runtime.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            resolved = cfg.replace(mixed_precision=runtime.precision)
            with written(run_dir / "config.json"):
                (run_dir / "config.json").write_text(resolved.to_json())
            self.writer = Board(run_dir / "tensorboard")

    def say(self, text: str) -> None:
        if self.runtime.main:
            print(text, flush=True)

    def scalars(self, step: int, phase: str, stats: dict[str, float], *, r_steps: int,
                d_steps: int, extra: dict[str, float]) -> None:  # fmt: skip
        """Write one log step: the step's statistics (prefixed by the pretraining phase they
        come from), images/s since the last call, and `extra` as they are."""
        self._warn_if_saturated(step, stats)
        now = time.perf_counter()
        seconds, since = now - self.since.clock, self.since
        self.since = Since(r_steps, d_steps, now)
        if self.writer is None:
            return
        for k, v in stats.items():
            tag = k if phase == "adversarial" or k.startswith("data/") else f"{phase}/{k}"
            self.writer.scalar(tag, v, step)
        # Synthetic images through R per second, all ranks: the refiner's throughput.
        updates = (r_steps - since.r_steps) + (d_steps - since.d_steps)
        images = updates * self.cfg.schedule.batch_size * self.runtime.world
        self.writer.scalar("images_per_second", images / seconds, step)
        for k, v in extra.items():
            self.writer.scalar(k, v, step)

    def comm_scalars(self, step: int, sent: dict[str, int], *, r_steps: int,
                     d_steps: int) -> None:  # fmt: skip
        """Bytes this (main) rank handed to collectives, per R or D step since the last log
        (`r_steps`, `d_steps`: the updates in that interval)."""
        if self.writer is None:
            return
        for label, nbytes in sent.items():
            per = r_steps if label.startswith("r_") else d_steps
            if per:
                self.writer.scalar(f"comm/{label}_bytes_per_step", nbytes / per, step)

    def _warn_if_saturated(self, step: int, stats: dict[str, float]) -> None:
        fraction = stats.get("r_saturated", 0.0)
        if fraction <= SATURATION_WARNING or self.warned_saturation:
            return
        self.warned_saturation = True  # once: a collapsed run stays collapsed
        if not self.runtime.main:
            return
        # A local-range refiner's clamp passes gradients through, so what is wrong there is
        # the picture (pixels pushed to a plane: a depth hand erased), not the gradients.
        if self.cfg.refiner.output == "tanh":
            why = "so the refiner's tanh has saturated and its gradients vanish; it seldom"
            why += " recovers"
        else:
            why = "pushed to the output's limits (with depth: hands erased to the far plane)"
        print(
            f"distsim.train: warning: step {step}: {100 * fraction:.0f}% of refined pixels "
            f"are at -1 or 1, {why} (see {self.run_dir / 'images'}). A lower --lr-d or "
            "--lr-r, or a larger --lambda-reg, may help.",
            file=sys.stderr, flush=True,
        )  # fmt: skip

    def grid(self, step: int, columns: list[torch.Tensor], *, averaged: bool,
             real_valid: torch.Tensor | None) -> None:  # fmt: skip
        """images/step-N.png and TensorBoard: synthetic | refined | real, one image per row;
        depth through a colour map, a real crop's invalid pixels (`real_valid` False) marked."""
        which = "refined (weight average)" if averaged else "refined"
        if real_valid is not None:
            picture = depth_grid(columns, [None, None, real_valid])
            caption = f"step {step}  depth: near dark, far yellow; magenta: no measurement"
        else:
            picture = grid(columns)
            caption = f"step {step}"
        picture = titled(picture, ["synthetic", which, "real"], caption)
        path = self.run_dir / "images" / f"step-{step:08d}.png"
        with written(path):
            save_png(picture, path)
        assert self.writer is not None
        self.writer.image("synthetic|refined|real", picture, step)

    def realism(self, step: int, scores: dict[str, float], seconds_total: float) -> None:
        if self.writer is None:
            return
        for k, v in scores.items():
            self.writer.scalar(f"realism/{k}", v, step)
        self.writer.scalar("realism/seconds_total", seconds_total, step)

    def curves(self) -> Path | None:
        """images/losses.png from everything this run directory's TensorBoard logs hold
        (resumed runs included)."""
        assert self.writer is not None
        self.writer.flush()
        events = EventAccumulator(str(self.run_dir / "tensorboard"), size_guidance={"scalars": 0})
        events.Reload()
        wanted = (*R_STATS, *D_STATS_HISTORY)
        series: dict[str, dict[int, float]] = {}
        for tag in events.Tags()["scalars"]:
            name = tag.split("/")[-1]
            if name in wanted:
                for e in events.Scalars(tag):
                    series.setdefault(name, {})[e.step] = e.value
        if not series:
            return None
        cfg = self.cfg
        boundaries = [
            cfg.schedule.pretrain_r_steps,
            cfg.schedule.pretrain_r_steps + cfg.schedule.pretrain_d_steps,
        ]
        path = self.run_dir / "images" / "losses.png"
        with written(path):
            return plot_curves({k: sorted(v.items()) for k, v in series.items()}, path,
                               phases=boundaries)  # fmt: skip

    def summary(self, stats: dict[str, float], first_step: int, seconds: float,
                realism_seconds: float) -> None:  # fmt: skip
        """What a person wants to know when the run ends, in a few lines."""
        total = (
            self.cfg.schedule.pretrain_r_steps
            + self.cfg.schedule.pretrain_d_steps
            + self.cfg.schedule.steps
        )
        lines = [f"done: steps {first_step}-{total} in {seconds:.1f}s; run directory "
                 f"{self.run_dir}"]  # fmt: skip
        shown = ("r_adv", "r_reg", "d_loss")
        if any(k in stats for k in shown):
            lines.append("  last losses: " + ", ".join(
                f"{k} {stats[k]:.3f}" for k in shown if k in stats))  # fmt: skip
        if "d_acc" in stats:
            lines.append(
                f"  D tells current refined images from real ones {100 * stats['d_acc']:.0f}% of "
                f"the time (50%: chance; real {100 * stats['d_acc_real']:.0f}%, refined "
                f"{100 * stats['d_acc_refined']:.0f}%)"
            )
        best = best_checkpoint(self.run_dir)
        if best is not None:
            score: dict[str, Any] = read_json(best / "meta.json")["realism"]
            lines.append(
                f"  realism: a fresh classifier tells refined from real "
                f"{100 * score['c2st_refined']:.0f}% of the time at {best.name}, the best "
                f"checkpoint (unrefined synthetic: {100 * score['c2st_synthetic']:.0f}%; 50%: "
                f"indistinguishable); scoring took {realism_seconds:.0f}s"
            )
        grids = sorted((self.run_dir / "images").glob("step-*.png"))
        if grids:
            lines.append(f"  newest grid: {grids[-1]}")
        curves = self.curves()
        if curves is not None:
            lines.append(f"  curves: {curves}")
        newest = latest_checkpoint(self.run_dir)
        if newest is not None:
            lines.append(f"  newest checkpoint: {newest}")
        lines.append(f"  TensorBoard: tensorboard --logdir {self.run_dir / 'tensorboard'}")
        print("\n".join(lines), flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
