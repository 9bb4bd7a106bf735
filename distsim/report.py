"""The paper's tables on the built-in benchmarks, each in one command.

    python -m distsim.report gaze --out reports/gaze    # Table 2 (distsim.gaze.report)
    python -m distsim.report hands --out reports/hands  # Table 4 (distsim.hands.report)

Each renders its own labelled streams, trains SimGAN per seed, refines, trains the paper's
estimator on every row's data and tests it on held-out labelled real data; run again into the
same OUT with the same settings, it reuses every finished row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distsim.gaze import report as gaze_report
from distsim.hands import report as hands_report
from distsim.tables.rows import PROG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    tasks = parser.add_subparsers(dest="task", required=True)
    gaze_report.add_parser(tasks)
    hands_report.add_parser(tasks)
    args = parser.parse_args(argv)
    return (gaze_report if args.task == "gaze" else hands_report).run_report(args)


if __name__ == "__main__":
    sys.exit(main())
