"""Named presets: only what differs from the defaults (``distsim.config.schema``), one line
of why each, by the settings' flat names (the flags in underscores).

CPU sizes: ``cpu`` (the default: eyes on 2 cores), ``hands-cpu`` (64 px depth crops) and
``smoke`` (tests). GPU sizes, the paper's: ``eyes``, ``eyes-paper`` and ``hands``.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {}

# Our method on 2 CPU cores: the paper's eye architecture at a quarter of its width.
PRESETS["cpu"] = {
    "refiner_width": 16,  # 2.6x faster per iteration here than width 32, and as good
    "channels_last": True,  # NHWC is oneDNN's fast layout on CPUs
    "batch_size": 32,  # per rank
    "pretrain_r_steps": 200,  # ends within 0.011 of the identity at lr 1e-3
    "pretrain_d_steps": 100,  # D catches up with the pretrained R
    "steps": 800,  # the main job in about five minutes
    "image_every": 100,  # a grid every eighth of the run
    "ckpt_every": 250,  # four realism-scored checkpoints to choose from
}

# Seconds, for tests: tiny models, a handful of steps of every phase.
PRESETS["smoke"] = {
    "refiner_width": 8,  # tiny
    "refiner_blocks": 1,  # tiny
    "disc_widths": (8, 8, 8, 8),  # tiny
    "batch_size": 8,  # tiny
    "builtin_count": 512,  # renders in a second
    "pretrain_r_steps": 2,  # every phase, briefly
    "pretrain_d_steps": 2,  # every phase, briefly
    "steps": 3,  # a few adversarial steps, with a full buffer by then
    "history_size": 64,  # fills within the run
    "lr_r": 1e-3,  # visible change in three steps
    "lr_d": 1e-3,  # as R's
    "log_every": 1,  # every step is looked at
    "image_every": 2,  # grids of two steps
    "ckpt_every": 3,  # a checkpoint within the run
    "grid_rows": 4,  # small grids
    "num_workers": 0,  # no loader processes to start
    "realism_images": 0,  # tests that need the score turn it on
    "refiner_noise": 0,  # R callable on images alone; the noise input has tests of its own
    "ema_halflife": 0.0,  # the last weights; the average has tests of its own
}

# Our method at the paper's eye sizes (its section 4.1 and appendix), for GPUs.
PRESETS["eyes"] = {
    "builtin_count": 200_000,  # enough eyes for 20,000 steps without repeats dominating
    "batch_size": 64,  # per rank; the paper is silent
    "history_size": 25_600,  # the upper end peers used: 50 global batches at 8 ranks
    "pretrain_r_steps": 1000,  # the paper's
    "pretrain_d_steps": 200,  # the paper's
    "steps": 20_000,  # the paper gives no length
    "num_workers": 2,  # keeps a GPU fed with 35x55 eyes
    "log_every": 50,  # logs of a long run
    "image_every": 1000,  # a grid every 1,000 steps
    "ckpt_every": 2000,  # ten checkpoints to choose from
}

# The paper's eye method exactly, at the eyes preset's sizes.
PRESETS["eyes-paper"] = PRESETS["eyes"] | {
    "refiner_noise": 0,  # the paper's R has no noise input
    "psi": "identity",  # the paper's self-regularisation for grey images
    "ema_halflife": 0.0,  # the paper uses R's last weights
    "adam_beta1": 0.9,  # Adam's usual momentum
    "lambda_reg": 0.5,  # the paper gives none; 0.5 is what peers used with mean L1
}

# The paper's hand settings on the built-in depth hands at 224x224, for GPUs.
PRESETS["hands"] = {
    "builtin_sim": "hands",  # the built-in depth hands when no shards are given
    "builtin_size": 224,  # the paper's crops
    "builtin_count": 10_000,  # 1 GB of uint16 crops per domain
    "refiner_kernel": 7,  # the paper's
    "refiner_blocks": 10,  # the paper's
    "refiner_output": "local_range",  # tanh never reaches the far plane most pixels are at
    "refiner_window": 7,  # hands-cpu's +-1 px at 64 px, scaled to 224 px
    "disc_arch": "hands",  # the paper's: its 71 px patches are 32 % of a 224 px crop
    "psi": "identity",  # a pixel's value is a depth, and the joints' d labels depend on it
    "batch_size": 16,  # per rank; the paper is silent
    "history_size": 4096,  # 256 batches of refined crops
    "pretrain_r_steps": 500,  # the paper's
    "pretrain_d_steps": 200,  # the paper's
    "steps": 20_000,  # as the eyes preset
    "num_workers": 4,  # rendering-free, but 224 px crops are 100 KB each
    "realism_images": 512,  # 224 px crops score slower than eyes
    "log_every": 50,  # logs of a long run
    "image_every": 1000,  # a grid every 1,000 steps
    "ckpt_every": 2000,  # ten checkpoints to choose from
}

# The hand job at CPU size: 64x64 crops and small widths, the paper's schedule shape.
PRESETS["hands-cpu"] = {
    "builtin_sim": "hands",  # the built-in depth hands when no shards are given
    "builtin_size": 64,  # the paper's 224 px refiner costs hundreds of GFLOP per crop
    "builtin_count": 4096,  # 4,096 crops a domain render in under a minute
    "refiner_width": 16,  # a quarter of the paper's width, as the cpu preset
    "refiner_blocks": 4,  # of the paper's 10: what 2 cores train in minutes
    "refiner_kernel": 5,  # the paper's 7 cut to the crop's scale
    "refiner_output": "local_range",  # R may add a sensor's artifacts, not move the hand
    "refiner_window": 3,  # +-1 px at 64 px
    "refiner_dropout": True,  # random drop-outs, not whole silhouettes eroded
    "disc_arch": "eyes",  # 23 px patches: the paper's hand D share of a 224 px crop
    "disc_widths": (32, 32, 16, 16),  # a third of the paper's
    "psi": "identity",  # a pixel's value is a depth, and the joints' d labels depend on it
    "batch_size": 16,  # as hands, per rank
    "history_size": 1600,  # 100 batches of refined crops
    "pretrain_r_steps": 200,  # R to the identity
    "pretrain_d_steps": 100,  # D catches up
    "steps": 1000,  # the job in minutes on 2 cores
    "realism_images": 256,  # quarter of eyes' 1,024: 64 px crops score slower
    "image_every": 100,  # a grid every tenth of the run
    "ckpt_every": 250,  # four realism-scored checkpoints
}
