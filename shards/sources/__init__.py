"""One module per source dataset; each has ``add_parser(subparsers)`` and a ``convert_*``.

Adding a source: write ``shards/sources/<name>.py`` with a ``convert_<name>(input, output)``
that cuts the input into tasks and calls ``common.write_tasks``, plus an ``add_parser`` whose
subparser calls ``common.add_output_args`` and sets ``run=``; then list the module below.
"""

from __future__ import annotations

from shards.sources import kaggle_h5, mpiigaze, nyu, sim_eyes, sim_hands, unityeyes

SOURCES = (kaggle_h5, unityeyes, mpiigaze, nyu, sim_eyes, sim_hands)
