"""``python -m distsim.turing``: see distsim.turing.cli."""

import sys

from distsim.turing.cli import main

if __name__ == "__main__":
    sys.exit(main())
