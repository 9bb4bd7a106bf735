"""Train a SimGAN refiner: `accelerate launch distsim/train.py [--preset eyes] [flags]`.

Parses the command line (``distsim.config``), takes a resumed run's settings from its
checkpoint, runs Algorithm 1 (``distsim.training.loop``) and turns the outcome into an exit
status: 0 done, 2 a bad input or a broken run (one line on stderr), 3 stopped by a signal
after saving (resume with --resume auto), 130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from distsim.config import resolve_given
from distsim.gaze.pupil import pupil_scores
from distsim.training.loop import training_loop
from distsim.training.resume import settings_for_resume
from distsim.training.signals import Preempted
from shards.cliutil import one_line

# Exit status of a run stopped by SIGTERM/SIGUSR1 after saving: not 0 (the run is not done),
# and distinct from errors (1, 2), so scripts can tell "resume me" from "broken".
EXIT_PREEMPTED = 3


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, given = resolve_given(argv)
        cfg, found = settings_for_resume(cfg, given)
        training_loop(cfg, resume=found, label_shift=pupil_scores)
    except Preempted as stopped:
        print(f"distsim.train: {stopped}", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("distsim.train: interrupted; no checkpoint was saved for the steps since the last "
              "one", file=sys.stderr)  # fmt: skip
        return 130
    except (ValueError, OSError, FloatingPointError) as err:
        print(f"distsim.train: error: {one_line(err)}", file=sys.stderr)
        return 2
    finally:
        # Left to interpreter shutdown, gloo's threads can abort the process at exit
        # ("terminate called without an active exception").
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except KeyboardInterrupt:  # a second Ctrl-C after the checkpoint, while shutting down
        code = 130
    sys.exit(code)
