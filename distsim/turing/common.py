"""What every part of the Turing test shares: its program name, the kinds of image and the
conditions that pair them, and its error type."""

from __future__ import annotations

PROG = "distsim.turing"
REAL = "real"
CONDITIONS = ("refined", "synthetic")  # the non-real set of each condition, in the order run
TITLES = {"refined": "real vs refined", "synthetic": "real vs synthetic"}


class TuringError(ValueError):
    """Bad input (shard sets, settings, DIR, answer log). The message is one line."""
