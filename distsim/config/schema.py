"""The training configuration: one dataclass per component, each field's help and check
beside it (``options.option``), and ``Config`` holding them all.

Batch sizes are per rank: W ranks at `batch_size` b train the same algorithm as one rank at
W * b (the history buffer is global, see ``distsim.gan.history``). The defaults are our method
at the `cpu` preset's sizes; presets (``distsim.config.presets``) say what differs from them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from distsim.config.options import (
    finite,
    finite_non_negative,
    finite_positive,
    four_widths,
    in_range,
    non_negative,
    odd_kernel,
    odd_window,
    one_of,
    option,
    positive,
    seed_range,
)

# The built-in simulators' real domains (shards.sim.eyes.REAL_DOMAINS and
# shards.sim.hands.REAL_DOMAINS, checked by a test): spelled out so that reading a config
# never imports a simulator.
REAL_DOMAINS = ("real", "real-lit", "real-ir")
HAND_REAL_DOMAINS = ("real",)
BUILTIN_REAL_DOMAINS = {"eyes": REAL_DOMAINS, "hands": HAND_REAL_DOMAINS}
PSIS = ("identity", "channel_mean", "standardized", "smooth")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class DataConfig:
    synthetic: str = option("", "synthetic shard directory (default: the built-in simulator, "
                            "--builtin-sim)", flag="synthetic")  # fmt: skip
    real: str = option("", "unlabelled real shard directory (default: the built-in simulator's "
                       "real domain)", flag="real")  # fmt: skip
    # Also the kind of data the settings are for: training refuses depth with eye settings.
    builtin_sim: str = option("eyes", "built-in simulator when no shards are given, and the kind "
                              "of data the settings are for: eyes (8-bit images) or hands "
                              "(depth)", flag="builtin-sim",
                              check=one_of(*BUILTIN_REAL_DOMAINS))  # fmt: skip
    builtin_size: int = option(224, "built-in hand crop side in pixels (hands only)",
                               flag="builtin-size", check=positive)  # fmt: skip
    builtin_count: int = option(20_000, "images per domain of the built-in shards",
                                flag="builtin-count", check=positive)  # fmt: skip
    builtin_seed: int = option(0, "seed of the built-in shards", flag="builtin-seed",
                               check=seed_range)  # fmt: skip
    builtin_real: str = option("real", "built-in real domain: eyes real, real-lit or real-ir "
                               "(shards/sim/eyes.py); hands real",
                               flag="builtin-real")  # fmt: skip
    cache_dir: str = option("", "where built-in shards are cached (default: $DISTSIM_CACHE or "
                            "~/.cache/distsim)", flag="cache-dir")  # fmt: skip
    num_workers: int = option(1, "data-loader processes per rank", flag="num-workers",
                              check=non_negative)  # fmt: skip
    # Skip: drop the shard, warn, and count what was skipped in TensorBoard (data/skipped_*).
    on_bad_shard: str = option("raise", "corrupt or truncated shard: raise (stop, naming it) or "
                               "skip (and count it)", flag="on-bad-shard",
                               check=one_of("raise", "skip"))  # fmt: skip

    def check(self) -> str | None:
        if self.builtin_real not in BUILTIN_REAL_DOMAINS.get(self.builtin_sim, REAL_DOMAINS):
            allowed = BUILTIN_REAL_DOMAINS.get(self.builtin_sim, REAL_DOMAINS)
            return f"--builtin-real must be one of {allowed}, got {self.builtin_real!r}"
        if self.builtin_sim == "hands" and self.builtin_size < 8:
            return f"--builtin-size must be >= 8, got {self.builtin_size}"
        if bool(self.synthetic) != bool(self.real):
            return "give both --synthetic and --real shard directories, or neither"
        return None


@dataclass
class RefinerConfig:
    # The paper's eye refiner: 3x3 kernels, 4 ResNet blocks, width 64.
    width: int = option(64, "refiner channels (paper: 64)", flag="refiner-width",
                        check=positive, architecture=True)  # fmt: skip
    blocks: int = option(4, "refiner ResNet blocks (paper: 4 eyes, 10 hands)",
                         flag="refiner-blocks", check=positive, architecture=True)  # fmt: skip
    kernel: int = option(3, "refiner kernel size (paper: 3 eyes, 7 hands)",
                         flag="refiner-kernel", check=odd_kernel, architecture=True)  # fmt: skip
    # 1, not the paper's 0: a refiner is otherwise a deterministic function of its input and
    # cannot make per-image random sensor noise (distsim.gan.refiner.Refiner).
    noise: int = option(1, "channels of per-pixel noise fed to the refiner (0: none, the "
                        "paper)", flag="refiner-noise", check=non_negative,
                        architecture=True)  # fmt: skip
    # local_range: for depth, so R can make a sensor's artifacts but cannot draw a surface
    # nearer than any around it or erase a hand (distsim.gan.refiner.LocalRange).
    output: str = option("tanh", "refiner output: tanh (the paper) or local_range (input + a "
                         "zero-initialised correction, each pixel kept within the range of the "
                         "input around it)", flag="refiner-output",
                         check=one_of("tanh", "local_range"), architecture=True)  # fmt: skip
    window: int = option(3, "window, in pixels, of the local_range output (odd)",
                         flag="refiner-window", check=odd_window, architecture=True)  # fmt: skip
    # 0.02 of the [-1, 1] range is 3 mm of the 300 mm cube, about twice a Kinect's noise at
    # 700 mm: room for the sensor's noise, not for moving a forearm in depth (0.05 let R do so).
    slack: float = option(0.02, "how far (in [-1, 1] units) the local_range output may leave "
                          "the range of the input around a pixel", flag="refiner-slack",
                          check=in_range(0.0, 2.0))  # fmt: skip
    dropout: bool = option(False, "the refiner also learns a per-pixel rate of random "
                           "drop-outs to the farthest depth around (local_range and a noise "
                           "input only)", flag="refiner-dropout",
                           architecture=True)  # fmt: skip

    def check(self) -> str | None:
        if self.dropout and not (self.output == "local_range" and self.noise):
            return ("--refiner-dropout needs --refiner-output local_range, --refiner-noise 1 or "
                    "more and --psi identity")  # fmt: skip
        return None


@dataclass
class DiscriminatorConfig:
    arch: str = option("eyes", "discriminator geometry: eyes or hands", flag="disc-arch",
                       check=one_of("eyes", "hands"), architecture=True)  # fmt: skip
    widths: tuple[int, ...] = option((96, 64, 32, 32), "discriminator widths of its four "
                                     "convolutions (paper: 96,64,32,32)", flag="disc-widths",
                                     check=four_widths, architecture=True)  # fmt: skip
    # global: the paper's ablation, one decision per image from the same layers.
    adversarial: str = option("local", "local (a decision per patch, the paper) or global (one "
                              "per image, ablation)", flag="adversarial",
                              check=one_of("local", "global"))  # fmt: skip


@dataclass
class OptimConfig:
    # Both terms of L_R = adversarial + lambda * mean |psi(R(x)) - psi(x)| are means (per
    # patch, per pixel), so lambda does not change with image or patch-map size. 2, not the
    # 0.5 peers used: on three differently made real eye domains at once it kept pupils closer
    # and trained a better estimator.
    lambda_reg: float = option(2.0, "weight of the mean-L1 self-regularisation in the refiner "
                               "loss", flag="lambda-reg",
                               check=finite_non_negative)  # fmt: skip
    # smooth, not the paper's identity: pixel L1 let R match darker real eyes by moving pupils
    # instead of darkening them; standardising makes tone free, the 1 px blur pixel noise.
    psi: str = option("smooth", "self-regularisation feature transform: identity, channel_mean "
                      "(colour), standardized (per-image zero mean, unit std: tone changes are "
                      "free) or smooth (standardized after a 1 px blur: pixel noise is free "
                      "too)", flag="psi", check=one_of(*PSIS))  # fmt: skip
    optimizer: str = option("adam", "adam or sgd", flag="optimizer", check=one_of("adam", "sgd"))
    lr_r: float = option(1e-4, "refiner learning rate", flag="lr-r", check=finite_positive)
    # Pretraining to the identity is a plain regression: at 1e-4 a width-16 refiner was still
    # 0.03 from its input after 200 steps, at 1e-3 0.011.
    lr_r_pretrain: float = option(1e-3, "refiner learning rate while it is pretrained to the "
                                  "identity", flag="lr-r-pretrain",
                                  check=finite_positive)  # fmt: skip
    # 10x R's: at 1e-4 D never caught up with R, so R drifted unchecked.
    lr_d: float = option(1e-3, "discriminator learning rate", flag="lr-d",
                         check=finite_positive)  # fmt: skip
    # 0.5 (DCGAN's): a long momentum keeps pushing along a gradient the other player has
    # already made stale.
    adam_beta1: float = option(0.5, "Adam's beta1 for both optimizers (GANs often use 0.5)",
                               flag="adam-beta1",
                               check=lambda v: finite(v) or in_range(0.0, 1.0)(v))  # fmt: skip
    # Half-life in refined images of an average of R's weights, which refine and the grids
    # use (distsim.gan.ema); it beat the last weights in 5 of 6 validation runs.
    ema_halflife: float = option(3000.0, "half-life in images of the refiner's weight average "
                                 "(0: none)", flag="ema-halflife",
                                 check=finite_non_negative)  # fmt: skip


@dataclass
class ScheduleConfig:
    seed: int = option(0, "seed for weights, data order and the history buffer", flag="seed",
                       check=seed_range)  # fmt: skip
    batch_size: int = option(32, "images per rank per step (even with the history buffer)",
                             flag="batch-size", check=positive)  # fmt: skip
    pretrain_r_steps: int = option(1000, "refiner steps on self-regularisation only",
                                   flag="pretrain-r-steps", check=non_negative)  # fmt: skip
    pretrain_d_steps: int = option(200, "discriminator steps against the pretrained refiner",
                                   flag="pretrain-d-steps", check=non_negative)  # fmt: skip
    steps: int = option(2000, "adversarial iterations (K_g refiner steps + K_d discriminator "
                        "steps each)", flag="steps", check=non_negative)  # fmt: skip
    k_g: int = option(2, "refiner steps per iteration", flag="k-g", check=positive)
    k_d: int = option(1, "discriminator steps per iteration", flag="k-d", check=positive)

    def check(self) -> str | None:
        if self.pretrain_r_steps + self.pretrain_d_steps + self.steps == 0:
            return "nothing to train: --pretrain-r-steps, --pretrain-d-steps and --steps are all 0"
        return None


@dataclass
class HistoryConfig:
    enabled: bool = option(True, "show D half history-buffer images (--no-history: the paper's "
                           "ablation)", flag="history")  # fmt: skip
    size: int = option(6400, "history buffer slots, global across ranks", flag="history-size",
                       check=non_negative)  # fmt: skip
    # replicated: every rank holds all B slots and each D step all-gathers the new images
    # (exactly world-size invariant); sharded: B/W slots per rank, nothing exchanged.
    mode: str = option("auto", "replicated (all-gathered, exact), sharded (B/W slots per rank, "
                       "no exchange) or auto (replicated up to 8 ranks)", flag="history-mode",
                       check=one_of("auto", "replicated", "sharded"))  # fmt: skip


@dataclass
class RuntimeConfig:
    channels_last: bool = option(False, "channels-last (NHWC) activations", flag="channels-last")
    compile: bool = option(False, "torch.compile the two updates (falls back to eager, saying "
                           "why)", flag="compile")  # fmt: skip
    compile_mode: str = option("default", "torch.compile mode: default, reduce-overhead (CUDA "
                               "graphs), max-autotune", flag="compile-mode",
                               check=one_of(*COMPILE_MODES))  # fmt: skip
    deterministic: bool = option(False, "bitwise-reproducible GPU kernels instead of the fastest "
                                 "(cudnn.benchmark)", flag="deterministic")  # fmt: skip
    # Empty: what `accelerate launch` says.
    mixed_precision: str = option("", "no, bf16 or fp16 (default: what accelerate launch says)",
                                  flag="mixed-precision",
                                  check=one_of("", "no", "bf16", "fp16"))  # fmt: skip
    resume: str = option("", "auto (newest checkpoint in --run-dir, if any) or a checkpoint or "
                         "run directory", flag="resume")  # fmt: skip
    # skip costs one host sync per step to look at the gradients.
    on_nonfinite: str = option("stop", "non-finite loss: stop (naming step and loss) or skip the "
                               "update", flag="on-nonfinite",
                               check=one_of("stop", "skip"))  # fmt: skip
    check_every: int = option(0, "steps between rank-consistency checks (0: only before "
                              "checkpoints)", flag="check-every", check=non_negative)  # fmt: skip
    dist_timeout: int = option(600, "seconds a collective waits for a lost rank before the "
                               "others fail", flag="dist-timeout", check=positive)  # fmt: skip


@dataclass
class OutputsConfig:
    run_dir: str = option("", "run directory (default: runs/<preset>-<date>-<time>)",
                          flag="run-dir")  # fmt: skip
    realism_images: int = option(1024, "images per set for the realism score at each "
                                 "checkpoint (0: none)", flag="realism-images",
                                 check=non_negative)  # fmt: skip
    log_every: int = option(10, "steps between TensorBoard scalars and progress-bar losses",
                            flag="log-every", check=positive)  # fmt: skip
    image_every: int = option(200, "steps between PNG grids (synthetic | refined | real)",
                              flag="image-every", check=positive)  # fmt: skip
    ckpt_every: int = option(500, "steps between checkpoints", flag="ckpt-every",
                             check=positive)  # fmt: skip
    keep_checkpoints: int = option(3, "newest checkpoints kept (0: all)",
                                   flag="keep-checkpoints", check=non_negative)  # fmt: skip
    grid_rows: int = option(8, "images per grid", flag="grid-rows", check=positive)
    progress: bool = option(True, "show a progress bar", flag="progress")


GROUPS: dict[str, type] = {
    "data": DataConfig,
    "refiner": RefinerConfig,
    "discriminator": DiscriminatorConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "history": HistoryConfig,
    "runtime": RuntimeConfig,
    "outputs": OutputsConfig,
}


@dataclass(frozen=True)
class Field:
    """One setting seen flat: its group, field and dataclass field."""

    group: str
    name: str
    spec: dataclasses.Field

    @property
    def flag(self) -> str:
        return self.spec.metadata["flag"]

    @property
    def help(self) -> str:
        return self.spec.metadata["help"]


# Every setting by its flat name (the flag in underscores), in groups' order.
FIELDS: dict[str, Field] = {
    f.metadata["flag"].replace("-", "_"): Field(group, f.name, f)
    for group, cls in GROUPS.items()
    for f in dataclasses.fields(cls)
}
ARCHITECTURE = tuple(k for k, f in FIELDS.items() if f.spec.metadata["architecture"])


@dataclass
class Config:
    preset: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)

    FIELDS: ClassVar[dict[str, Field]] = FIELDS

    @classmethod
    def from_flat(cls, preset: str = "cpu", **values: Any) -> Config:
        """A config from flat settings (``FIELDS``' names); the rest are the defaults."""
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown config fields: {unknown}")
        groups: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
        for key, value in values.items():
            f = FIELDS[key]
            groups[f.group][f.name] = value
        return cls(preset, **{g: GROUPS[g](**kw) for g, kw in groups.items()})

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name."""
        return {key: getattr(getattr(self, f.group), f.name) for key, f in FIELDS.items()}

    def get(self, key: str) -> Any:
        f = FIELDS[key]
        return getattr(getattr(self, f.group), f.name)

    def replace(self, **values: Any) -> Config:
        """A copy with flat settings changed (``preset`` too)."""
        preset = values.pop("preset", self.preset)
        return Config.from_flat(preset, **(self.flat() | values))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def validate(self) -> None:
        """Raise ValueError naming the first setting whose value cannot work."""
        for key, f in FIELDS.items():
            check = f.spec.metadata["check"]
            problem = check(self.get(key)) if check is not None else None
            if problem is not None:
                raise ValueError(f"--{f.flag} {problem}")
        for group in GROUPS:
            check = getattr(getattr(self, group), "check", None)
            problem = check() if check is not None else None
            if problem is not None:
                raise ValueError(problem)
        if self.refiner.dropout and self.optim.psi != "identity":
            raise ValueError("--refiner-dropout needs --refiner-output local_range, "
                             "--refiner-noise 1 or more and --psi identity")  # fmt: skip
        b, history = self.schedule.batch_size, self.history
        if history.enabled and b % 2:
            raise ValueError(f"--batch-size must be even with the history buffer (half current, "
                             f"half history), got {b}")  # fmt: skip
        if history.enabled and history.size < b:
            raise ValueError(f"--history-size {history.size} is smaller than --batch-size {b}; "
                             "make it larger or pass --no-history")  # fmt: skip
