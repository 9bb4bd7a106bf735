"""Training configuration: one dataclass, named presets, command-line overrides.

Every field is a command-line flag (`batch_size` -> `--batch-size`). A preset fills the fields
first, then flags override them, and the resolved config is written as `config.json` next to
the run's checkpoints, so a run can always be reproduced from its directory.

Batch sizes are per rank: W ranks at `batch_size` b train the same algorithm as one rank at
W * b (the history buffer is global, see history.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The built-in simulators' real domains (shards.sim.eyes.REAL_DOMAINS and
# shards.sim.hands.REAL_DOMAINS, checked by a test): spelled out so that reading a config
# never imports a simulator.
REAL_DOMAINS = ("real", "real-lit", "real-ir")
HAND_REAL_DOMAINS = ("real",)
BUILTIN_REAL_DOMAINS = {"eyes": REAL_DOMAINS, "hands": HAND_REAL_DOMAINS}


@dataclass
class Config:
    preset: str = "cpu"
    # Where the run's config, checkpoints, TensorBoard logs and image grids go. Empty: a new
    # timestamped directory under runs/.
    run_dir: str = ""

    # Data. Empty: the built-in simulator's shards, created on first use in the cache.
    synthetic: str = ""
    real: str = ""
    # Which built-in simulator: eyes (shards.sim.eyes, 35x55 grey) or hands
    # (shards.sim.hands, builtin_size x builtin_size uint16 depth crops).
    builtin_sim: str = "eyes"
    builtin_size: int = 224  # hand crop side in pixels (hands only; eyes are always 35x55)
    builtin_count: int = 20_000  # images per built-in domain
    builtin_seed: int = 0
    # The built-in "real" domain trained against (that simulator's REAL_DOMAINS).
    builtin_real: str = "real"
    cache_dir: str = ""  # empty: $DISTSIM_CACHE or ~/.cache/distsim
    num_workers: int = 1  # loader processes per rank
    # A corrupt or truncated shard: "raise" stops with its name; "skip" drops it, warns, and
    # counts what was skipped in TensorBoard (data/skipped_*).
    on_bad_shard: str = "raise"

    # Models (the paper's appendix). The eye refiner is 3x3 kernels with 4 ResNet blocks.
    refiner_width: int = 64
    refiner_blocks: int = 4
    refiner_kernel: int = 3
    # Channels of per-pixel Gaussian noise fed to R beside the image (0: none, the paper). A
    # refiner is otherwise a deterministic function of its input and cannot make per-image
    # random sensor noise; see refiner.Refiner. Ours: 1 (BENCHMARKS.md, issue 10: with the
    # rest of the defaults it beat synthetic eyes on three differently made real domains).
    refiner_noise: int = 1
    # R's output head (refiner.OUTPUTS): tanh (the paper) or local_range (ours, for depth: the
    # input plus a correction, each pixel kept within the range of the input around it, so R
    # can make a sensor's artifacts but cannot draw a surface nearer than any around it or
    # erase a hand; see refiner.LocalRange).
    refiner_output: str = "tanh"
    refiner_window: int = 3  # local_range: the window, in pixels (odd)
    # local_range: how far beyond that range (in [-1, 1] units; 0.05 is 7.5 mm of the 300 mm
    # cube) R may move a pixel: room for the sensor's noise, and no more.
    refiner_slack: float = 0.05
    # local_range: R also learns a per-pixel rate at which a pixel shows the farthest depth
    # around it, drawn from its noise input (refiner.LocalRangeDropout).
    refiner_dropout: bool = False
    disc_arch: str = "eyes"  # "eyes" or "hands": the paper's two discriminators
    disc_widths: tuple[int, ...] = (96, 64, 32, 32)
    # Feature transform for self-regularisation: identity (the paper, grey) | channel_mean (the
    # paper, colour) | standardized (per-image zero mean and unit std, so a tone change is free
    # and moving a pupil is not; see losses.psi_standardized) | smooth (ours, the default:
    # standardized after a 1 px blur, so pixel noise is free too, which R needs to imitate a
    # noisy sensor with its noise input). Identity let R match darker real eyes by moving
    # pupils instead of darkening them (BENCHMARKS.md, "Table 2 on the built-in benchmark").
    psi: str = "smooth"

    # Algorithm 1.
    seed: int = 0
    batch_size: int = 32  # per rank
    pretrain_r_steps: int = 1000  # refiner on self-regularisation only
    pretrain_d_steps: int = 200  # discriminator against the pretrained refiner
    steps: int = 2000  # adversarial iterations, each K_g refiner steps then K_d D steps
    k_g: int = 2
    k_d: int = 1
    # L_R = adversarial + lambda * mean |psi(R(x)) - psi(x)|. Both terms are means (per patch,
    # per pixel), so lambda does not change with image or patch-map size. 2, not the 0.5 peers
    # used: on all three built-in real domains at once it kept pupils closer (0.18-0.56 px
    # against 0.43-1.10) and the estimator better (BENCHMARKS.md, issue 10).
    lambda_reg: float = 2.0
    optimizer: str = "adam"  # adam | sgd
    lr_r: float = 1e-4
    # R's rate while it is pretrained to the identity (self-regularisation only, a plain
    # regression with nothing to destabilise): at 1e-4 a width-16 refiner was still 0.03 from
    # its input after the cpu preset's 200 steps, at 1e-3 0.011 (BENCHMARKS.md, issue 10).
    lr_r_pretrain: float = 1e-3
    # D learns 10x faster than R: at 1e-4 D never caught up with R (a fresh D at 1e-3 tells
    # that R's eyes from real ones at 98% in 150 steps, the run's own D at 72%), so R drifted
    # unchecked (BENCHMARKS.md, "Why the refiner did not help").
    lr_d: float = 1e-3
    # Adam's first-moment decay for both players. GANs usually train with 0.5 (DCGAN): a
    # long momentum keeps pushing along a gradient the other player has already made stale.
    adam_beta1: float = 0.5
    history: bool = True  # False: D sees only current refined images (paper's ablation)
    # "local": a real/refined decision per patch (the paper); "global": one per image (ablation).
    adversarial: str = "local"
    history_size: int = 6400  # B slots, global across ranks
    # replicated: every rank holds all B slots, and each D step all-gathers the new images
    # (exactly world-size invariant). sharded: each rank holds B/W slots of its own images and
    # nothing is exchanged (see history.py). auto: replicated up to 8 ranks, sharded above.
    history_mode: str = "auto"
    # Half-life, in refined images, of an exponential moving average of R's weights, which
    # refine and the grids then use (0: none). See ema.py.
    ema_halflife: float = 3000.0

    # Speed. channels_last: NHWC activations (faster convolutions on GPUs and oneDNN CPUs).
    # compile: torch.compile the two updates' forward-and-loss (compile_mode: default,
    # reduce-overhead for CUDA graphs, max-autotune, max-autotune-no-cudagraphs).
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    # Bitwise-reproducible GPU runs: deterministic cuDNN and cuBLAS kernels instead of the
    # fastest ones (cudnn.benchmark), at some cost in speed. CPU runs are always reproducible.
    deterministic: bool = False

    # Precision: empty takes what `accelerate launch` says; otherwise no | bf16 | fp16.
    mixed_precision: str = ""

    # Faults and resume. "auto": the newest complete checkpoint in --run-dir, or a fresh start
    # if it has none; a path: that checkpoint (or that run's newest).
    resume: str = ""
    # A non-finite loss: "stop" (name the step and loss; the last checkpoint stays good) or
    # "skip" the update (costs one host sync per step to look at the gradients).
    on_nonfinite: str = "stop"
    # Steps between rank-consistency checks (every rank holds the same R and D, and an R step
    # left D untouched); 0: only before each checkpoint, where it always runs.
    check_every: int = 0
    # Seconds a collective may wait for a lost rank before the survivors fail (not hang).
    dist_timeout: int = 600

    # Outputs.
    # Images per set scored by the label-free realism test (realism.py) at every checkpoint,
    # real vs refined and real vs synthetic; 0: none.
    realism_images: int = 1024
    log_every: int = 10
    image_every: int = 200
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    grid_rows: int = 8
    progress: bool = True

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value cannot work."""
        positive = (
            "batch_size",
            "k_g",
            "k_d",
            "refiner_width",
            "refiner_kernel",
            "log_every",
            "image_every",
            "ckpt_every",
            "builtin_count",
            "builtin_size",
            "grid_rows",
            "dist_timeout",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{_flag(name)} must be positive, got {getattr(self, name)}")
        nonneg = (
            "pretrain_r_steps",
            "pretrain_d_steps",
            "steps",
            "refiner_blocks",
            "num_workers",
            "keep_checkpoints",
            "lambda_reg",
            "history_size",
            "check_every",
            "refiner_noise",
            "ema_halflife",
            "realism_images",
        )
        for name in nonneg:
            if getattr(self, name) < 0:
                raise ValueError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.refiner_kernel % 2 == 0:
            raise ValueError(
                f"--refiner-kernel must be odd (same padding), got {self.refiner_kernel}"
            )
        if self.refiner_window < 1 or self.refiner_window % 2 == 0:
            raise ValueError(f"--refiner-window must be odd and >= 1, got {self.refiner_window}")
        if not 0.0 <= self.refiner_slack < 2.0:
            raise ValueError(f"--refiner-slack must be in [0, 2), got {self.refiner_slack}")
        local = self.refiner_output == "local_range"
        if self.refiner_dropout and not (local and self.refiner_noise and self.psi == "identity"):
            raise ValueError("--refiner-dropout needs --refiner-output local_range, "
                             "--refiner-noise 1 or more and --psi identity")  # fmt: skip
        choices = {
            "disc_arch": ("eyes", "hands"),
            "refiner_output": ("tanh", "local_range"),
            "psi": ("identity", "channel_mean", "standardized", "smooth"),
            "optimizer": ("adam", "sgd"),
            "on_bad_shard": ("raise", "skip"),
            "adversarial": ("local", "global"),
            "mixed_precision": ("", "no", "bf16", "fp16"),
            "on_nonfinite": ("stop", "skip"),
            "builtin_sim": tuple(BUILTIN_REAL_DOMAINS),
            "builtin_real": BUILTIN_REAL_DOMAINS.get(self.builtin_sim, REAL_DOMAINS),
            "history_mode": ("auto", "replicated", "sharded"),
            "compile_mode": (
                "default",
                "reduce-overhead",
                "max-autotune",
                "max-autotune-no-cudagraphs",
            ),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"--{_flag(name)} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        for name in ("lambda_reg", "lr_r", "lr_r_pretrain", "lr_d", "ema_halflife", "adam_beta1"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(
                    f"--{_flag(name)} must be a finite number, got {getattr(self, name)}"
                )
        for name in ("lr_r", "lr_r_pretrain", "lr_d"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{_flag(name)} must be positive, got {getattr(self, name)}")
        if any(w <= 0 for w in self.disc_widths):
            raise ValueError(f"--disc-widths must all be positive, got {self.disc_widths}")
        if self.pretrain_r_steps + self.pretrain_d_steps + self.steps == 0:
            raise ValueError(
                "nothing to train: --pretrain-r-steps, --pretrain-d-steps and --steps are all 0"
            )
        if not 0.0 <= self.adam_beta1 < 1.0:
            raise ValueError(f"--adam-beta1 must be in [0, 1), got {self.adam_beta1}")
        if len(self.disc_widths) != 4:
            raise ValueError(f"--disc-widths needs 4 widths, got {self.disc_widths}")
        if self.history and self.batch_size % 2:
            raise ValueError(
                f"--batch-size must be even with the history buffer (half current, half "
                f"history), got {self.batch_size}"
            )
        if self.history and self.history_size < self.batch_size:
            raise ValueError(
                f"--history-size {self.history_size} is smaller than --batch-size "
                f"{self.batch_size}; make it larger or pass --no-history"
            )
        if self.builtin_sim == "hands" and self.builtin_size < 8:
            raise ValueError(f"--builtin-size must be >= 8, got {self.builtin_size}")
        if bool(self.synthetic) != bool(self.real):
            raise ValueError("give both --synthetic and --real shard directories, or neither")


# Presets set only the fields that differ from the defaults above. `cpu` is the defaults: the
# paper's eye architecture at a size a laptop CPU trains visibly in about ten minutes.
PRESETS: dict[str, dict[str, Any]] = {
    # Our method sized for 2 CPU cores: the paper's architecture at a quarter of the refiner's
    # width (a width-16 refiner in NHWC is 2.6x faster per iteration here than width 32 in
    # NCHW, and with the defaults above beat synthetic eyes on every built-in domain).
    "cpu": {
        "refiner_width": 16,
        "channels_last": True,
        "batch_size": 32,
        "pretrain_r_steps": 200,
        "pretrain_d_steps": 100,
        "steps": 800,
        "image_every": 100,
        "ckpt_every": 250,
    },
    # Seconds, for tests: tiny models, a handful of steps of every phase.
    "smoke": {
        "refiner_width": 8,
        "refiner_blocks": 1,
        "disc_widths": (8, 8, 8, 8),
        "batch_size": 8,
        "builtin_count": 512,
        "pretrain_r_steps": 2,
        "pretrain_d_steps": 2,
        "steps": 3,
        "history_size": 64,
        "lr_r": 1e-3,
        "lr_d": 1e-3,
        "log_every": 1,
        "image_every": 2,
        "ckpt_every": 3,
        "grid_rows": 4,
        "num_workers": 0,
        "realism_images": 0,  # tests that need the score turn it on
        # Plain R (no noise input, last weights), so tests can call it on images alone;
        # the noise input and the weight average have tests of their own.
        "refiner_noise": 0,
        "ema_halflife": 0.0,
    },
    # Our method at the paper's eye sizes (its section 4.1 and appendix), for GPUs: full-width
    # refiner and D, 1000 + 200 pretraining steps, K_g = 2, K_d = 1. Batch and buffer are ours
    # (the paper is silent): 64 per rank, and a buffer of 25,600 images (the upper end peers
    # used), which holds 50 global batches at 8 ranks. eyes-paper is the paper's method.
    "eyes": {
        "builtin_count": 200_000,
        "batch_size": 64,
        "history_size": 25_600,
        "pretrain_r_steps": 1000,
        "pretrain_d_steps": 200,
        "steps": 20_000,
        "num_workers": 2,
        "log_every": 50,
        "image_every": 1000,
        "ckpt_every": 2000,
    },
    # The paper's hand settings: 7x7 kernels, 10 ResNet blocks, the hand discriminator, 500 R
    # and 200 D pretraining steps, K_g 2, K_d 1, on the built-in depth hands at 224x224 (a GPU
    # job). psi identity in both hand presets: depth crops share one code map (shards.depth),
    # so a pixel's value is a depth and the joints' d labels depend on it; standardising per
    # image (the eye default) would let R shift or stretch the hand's depth for free, and
    # synthetic crops, the input psi compares against, have no invalid pixels to exclude.
    "hands": {
        "builtin_sim": "hands",
        "builtin_size": 224,
        "builtin_count": 10_000,  # 1 GB of uint16 crops per domain
        "refiner_kernel": 7,
        "refiner_blocks": 10,
        # local_range at +-3 px, the +-1 px of hands-cpu's 64 px crops at this size; the paper's
        # hand D sees 71 px here, 32 % of the crop, as the eye geometry does at 64 px.
        "refiner_output": "local_range",
        "refiner_window": 7,
        "refiner_slack": 0.02,  # as hands-cpu: depth units, so the same at any crop size
        "disc_arch": "hands",
        "psi": "identity",
        "lambda_reg": 2.0,  # as hands-cpu; not validated at this size (no GPU yet)
        "batch_size": 16,
        "history_size": 4096,
        "pretrain_r_steps": 500,
        "pretrain_d_steps": 200,
        "steps": 20_000,
        "num_workers": 4,
        "realism_images": 512,
        "log_every": 50,
        "image_every": 1000,
        "ckpt_every": 2000,
    },
    # The hand job at CPU size (ours): 64x64 crops, a width-16 refiner of 4 blocks of 5x5
    # kernels, D at a third of the paper's widths with the eye D's geometry, batch 16; the
    # paper's schedule shape (R pretrained, then D, then K_g 2, K_d 1). Measured
    # (benchmarks/hand_step_cpu.py, one thread): 0.19 CPU s per R update, 0.04 per D update,
    # so the schedule is ~460 CPU s, about 8 min on one idle core and 4-6 min on two, plus
    # rendering the 2 x 4096 crops once (under a minute) and the realism scores (~1 min).
    "hands-cpu": {
        "builtin_sim": "hands",
        "builtin_size": 64,
        "builtin_count": 4096,
        "refiner_width": 16,
        "refiner_blocks": 4,
        "refiner_kernel": 5,
        # Validation streams 50 and 51 (BENCHMARKS.md, issue 12): "residual" with the hand D
        # cost the estimator 2-3.5 px (a rim nearer than the hand, bands); local_range with
        # the eye D, at lambda 0.5 or 2, tied synthetic (and on Table 4's test seeds still
        # lost 0.7-1.3 px: not yet a refiner to use). The paper's hand D at 64 px sees 71
        # px, the whole crop (2x2 patch map), and with it R moved the hand's depth (14.5 px,
        # against 10.4 for synthetic); the eye D's 23 px are the paper's hand D's share of a
        # 224 px crop. Lambda 2 over 0.5: as good, and R sent fewer hand pixels to the far
        # plane (11-16 % against 22-25 %; a perfect refiner 4 %).
        "refiner_output": "local_range",
        "refiner_window": 3,
        # Slack 0.02 (3 mm, about twice the sensor's noise at 700 mm), not 0.05: with 0.05 R
        # moved whole forearms and fingers in depth (validation seeds 50 / 51: refined 10.27
        # / 11.57 px against synthetic 10.35 / 11.67); with 0.02, 10.20 / 10.46 / 10.64 on
        # seeds 50-52 against 10.35 / 11.67 / 10.10 (BENCHMARKS.md, "Depth hands").
        "refiner_slack": 0.02,
        # Random drop-outs: without them R eroded every silhouette deterministically and the
        # estimator lost 0.34 px to synthetic on Table 4's test seeds (3 estimators a row);
        # with them it gained 0.51 on the validation streams and, with five estimators a row,
        # 0.46 on the test seeds, on every seed (BENCHMARKS.md, "Depth hands").
        "refiner_dropout": True,
        "disc_arch": "eyes",
        "disc_widths": (32, 32, 16, 16),
        "psi": "identity",
        "lambda_reg": 2.0,
        "batch_size": 16,
        "history_size": 1600,
        "pretrain_r_steps": 200,
        "pretrain_d_steps": 100,
        "steps": 1000,
        "realism_images": 256,
        "image_every": 100,
        "ckpt_every": 250,
    },
}
# The paper's eye method exactly, at the eyes preset's sizes: no noise input, pixel L1
# self-regularisation, no weight average, Adam's usual momentum.
PRESETS["eyes-paper"] = PRESETS["eyes"] | {
    "refiner_noise": 0,
    "psi": "identity",
    "ema_halflife": 0.0,
    "adam_beta1": 0.9,
    "lambda_reg": 0.5,  # the paper gives none; 0.5 is what peers used with mean L1
}


HELP: dict[str, str] = {
    "run_dir": "run directory (default: runs/<preset>-<date>-<time>)",
    "synthetic": "synthetic shard directory (default: the built-in simulator, --builtin-sim)",
    "real": "unlabelled real shard directory (default: the built-in simulator's real domain)",
    "builtin_count": "images per domain of the built-in shards",
    "builtin_seed": "seed of the built-in shards",
    "builtin_sim": "built-in simulator when no shards are given: eyes or hands (depth)",
    "builtin_size": "built-in hand crop side in pixels (hands only)",
    "builtin_real": "built-in real domain: eyes real, real-lit or real-ir (shards/sim/eyes.py); "
    "hands real",
    "cache_dir": "where built-in shards are cached (default: $DISTSIM_CACHE or ~/.cache/distsim)",
    "num_workers": "data-loader processes per rank",
    "on_bad_shard": "corrupt or truncated shard: raise (stop, naming it) or skip (and count it)",
    "refiner_width": "refiner channels (paper: 64)",
    "refiner_blocks": "refiner ResNet blocks (paper: 4 eyes, 10 hands)",
    "refiner_kernel": "refiner kernel size (paper: 3 eyes, 7 hands)",
    "refiner_noise": "channels of per-pixel noise fed to the refiner (0: none, the paper)",
    "refiner_output": "refiner output: tanh (the paper) or local_range (input + a "
    "zero-initialised correction, each pixel kept within the range of the input around it)",
    "refiner_window": "window, in pixels, of the local_range output (odd)",
    "refiner_slack": "how far (in [-1, 1] units) the local_range output may leave the range "
    "of the input around a pixel",
    "refiner_dropout": "the refiner also learns a per-pixel rate of random drop-outs to the "
    "farthest depth around (local_range and a noise input only)",
    "disc_arch": "discriminator geometry: eyes or hands",
    "disc_widths": "discriminator widths of its four convolutions (paper: 96,64,32,32)",
    "psi": "self-regularisation feature transform: identity, channel_mean (colour), "
    "standardized (per-image zero mean, unit std: tone changes are free) or smooth "
    "(standardized after a 1 px blur: pixel noise is free too)",
    "seed": "seed for weights, data order and the history buffer",
    "batch_size": "images per rank per step (even with the history buffer)",
    "pretrain_r_steps": "refiner steps on self-regularisation only",
    "pretrain_d_steps": "discriminator steps against the pretrained refiner",
    "steps": "adversarial iterations (K_g refiner steps + K_d discriminator steps each)",
    "k_g": "refiner steps per iteration",
    "k_d": "discriminator steps per iteration",
    "lambda_reg": "weight of the mean-L1 self-regularisation in the refiner loss",
    "optimizer": "adam or sgd",
    "lr_r": "refiner learning rate",
    "lr_r_pretrain": "refiner learning rate while it is pretrained to the identity",
    "lr_d": "discriminator learning rate",
    "adam_beta1": "Adam's beta1 for both optimizers (GANs often use 0.5)",
    "history": "show D half history-buffer images (--no-history: the paper's ablation)",
    "history_size": "history buffer slots, global across ranks",
    "history_mode": "replicated (all-gathered, exact), sharded (B/W slots per rank, no "
    "exchange) or auto (replicated up to 8 ranks)",
    "ema_halflife": "half-life in images of the refiner's weight average (0: none)",
    "channels_last": "channels-last (NHWC) activations",
    "compile": "torch.compile the two updates (falls back to eager, saying why)",
    "compile_mode": "torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune",
    "deterministic": "bitwise-reproducible GPU kernels instead of the fastest (cudnn.benchmark)",
    "adversarial": "local (a decision per patch, the paper) or global (one per image, ablation)",
    "mixed_precision": "no, bf16 or fp16 (default: what accelerate launch says)",
    "resume": "auto (newest checkpoint in --run-dir, if any) or a checkpoint or run directory",
    "on_nonfinite": "non-finite loss: stop (naming step and loss) or skip the update",
    "check_every": "steps between rank-consistency checks (0: only before checkpoints)",
    "dist_timeout": "seconds a collective waits for a lost rank before the others fail",
    "realism_images": "images per set for the realism score at each checkpoint (0: none)",
    "log_every": "steps between TensorBoard scalars and progress-bar losses",
    "image_every": "steps between PNG grids (synthetic | refined | real)",
    "ckpt_every": "steps between checkpoints",
    "keep_checkpoints": "newest checkpoints kept (0: all)",
    "grid_rows": "images per grid",
    "progress": "show a progress bar",
}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _field_type(f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(Config)
    return hints[f.name]


def _parse_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def build_parser(preset: str = "cpu") -> argparse.ArgumentParser:
    """The train.py command line; each flag's help shows `preset`'s value (the preset a
    bare `train.py` runs with, or the one given by --preset)."""
    parser = argparse.ArgumentParser(
        prog="distsim.train",
        description="Train a SimGAN refiner (Shrivastava et al. 2017, Algorithm 1).",
    )
    defaults = Config(preset=preset, **PRESETS[preset])
    for f in dataclasses.fields(Config):
        flag = "--" + _flag(f.name)
        typ = _field_type(f)
        default = getattr(defaults, f.name)
        if f.name == "preset":
            parser.add_argument(
                flag,
                choices=sorted(PRESETS),
                default=None,
                help="named preset; other flags override it (default: cpu)",
            )
        elif typ is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{HELP[f.name]} ({preset}: {default})",
            )
        elif typing.get_origin(typ) is tuple:
            parser.add_argument(
                flag,
                type=_parse_tuple,
                default=None,
                metavar="N,N,...",
                help=f"{HELP[f.name]} ({preset}: {','.join(map(str, default))})",
            )
        else:
            assert isinstance(typ, type) and not isinstance(typ, types.GenericAlias), typ
            parser.add_argument(
                flag,
                type=typ,
                default=None,
                help=HELP[f.name] + (f" ({preset}: {default})" if default != "" else ""),
            )
    return parser


def _preset_in(argv: list[str] | None) -> str:
    """The --preset an argument list names (cpu if none or an unknown one: the full parser
    then reports the error)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--preset", default="cpu")
    known, _ = early.parse_known_args(argv)
    return known.preset if known.preset in PRESETS else "cpu"


def resolve(argv: list[str] | None = None) -> Config:
    """Preset first, then explicit flags. SystemExit on bad flags, ValueError on bad values."""
    return resolve_given(argv)[0]


def resolve_given(argv: list[str] | None = None) -> tuple[Config, set[str]]:
    """``resolve``, and the names of the fields the command line set explicitly (a resume
    takes every other setting from the checkpoint it resumes)."""
    args = build_parser(_preset_in(argv)).parse_args(argv)
    given = {k for k, v in vars(args).items() if v is not None}
    preset = args.preset if args.preset is not None else "cpu"
    return make_config(preset, **{k: getattr(args, k) for k in given - {"preset"}}), given


def make_config(preset: str = "cpu", **overrides: Any) -> Config:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown config fields: {sorted(unknown)}")
    cfg = Config(preset=preset, **{**PRESETS[preset], **overrides})
    cfg.validate()
    return cfg


# Values that reproduce what runs did before a field existed, for config.json files that
# lack it (a default may change later; what an old run did may not).
LEGACY: dict[str, Any] = {
    "refiner_output": "tanh",
    "refiner_window": 3,
    "refiner_slack": 0.05,
    "refiner_dropout": False,
    "builtin_sim": "eyes",
    "builtin_size": 224,
    "builtin_real": "real",
    "refiner_noise": 0,
    "ema_halflife": 0.0,
    "channels_last": False,
    "compile": False,
    "compile_mode": "default",
    "realism_images": 0,
    "deterministic": False,
    "history_mode": "replicated",
    "adam_beta1": 0.9,
}


# Settings distsim had and measured to gain nothing: the value that meant "off", and why
# they went. A run made with another value cannot be rebuilt.
REMOVED: dict[str, tuple[Any, str]] = {
    "refiner_highpass": (0.0, "a blur taken off the refiner's change gained the estimator nothing"),
    "refiner_edge": (0.0, "drop-outs gated by a depth edge gained the estimator nothing"),
    "disc_blur": (0.0, "a blur on the discriminator's inputs gained nothing"),
    "disc_highpass": (0.0, "a high-pass on the discriminator's inputs gained nothing"),
}
REMOVED_CHOICES: dict[str, dict[Any, str]] = {
    "refiner_output": {
        "residual": "its unbounded correction ran away under the clamp",
        "bounded": "local_range replaced it for depth; no preset used it",
    },
}


def load_config(path: str | Path) -> Config:
    """Read a run's config.json back (tuples come back as lists in JSON). ValueError, one
    line naming the file, for a run made with a setting distsim no longer has."""
    data = LEGACY | json.loads(Path(path).read_text())
    data.setdefault("lr_r_pretrain", data.get("lr_r", Config.lr_r))  # one rate, before
    for name, (off, why) in REMOVED.items():
        value = data.pop(name, off)
        if value != off:
            raise ValueError(f"{path}: made with --{_flag(name)} {value}, which distsim no "
                             f"longer has ({why}); use distsim 0.1.0 for this run")  # fmt: skip
    for name, gone in REMOVED_CHOICES.items():
        if data.get(name) in gone:
            raise ValueError(f"{path}: made with --{_flag(name)} {data[name]}, which distsim no "
                             f"longer has ({gone[data[name]]}); use distsim 0.1.0 for this "
                             "run")  # fmt: skip
    for f in dataclasses.fields(Config):
        if typing.get_origin(_field_type(f)) is tuple and f.name in data:
            data[f.name] = tuple(data[f.name])
    return Config(**data)


__all__ = ["Config", "PRESETS", "build_parser", "load_config", "make_config", "resolve"]
