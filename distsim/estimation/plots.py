"""Figures 7 and 9's plots: % of test images within each error, one curve per run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path


def plot_cumulative(
    curves: dict[str, list[float]],
    path: str | Path,
    thresholds: Sequence[float],
    title: str,
    *,
    xlabel: str,
    ylabel: str,
) -> Path:
    """% of test images within each error (`thresholds`, the x axis), one curve per run.

    ``curves`` maps a run's name to its ``within_pct`` (one value per threshold). Figure 9's
    hand curves too, with their labels (``distsim.hands.task.plot_within_pixels``).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    for name, values in curves.items():
        if len(values) != len(thresholds):
            raise ValueError(
                f"curve {name!r} has {len(values)} values for {len(thresholds)} thresholds"
            )
    xs = list(map(float, thresholds))
    if xs[0] > 0:  # nothing is within 0 of a continuous error: start the curve at (0, 0)
        xs, curves = [0.0, *xs], {name: [0.0, *values] for name, values in curves.items()}
    fig, ax = plt.subplots(figsize=(5.0, 4.0), dpi=120)
    try:
        for name, values in curves.items():
            ax.plot(xs, values, marker="o", markersize=3, label=name)
        ax.set_xlim(0, max(xs))
        ax.set_xticks(range(0, math.ceil(max(xs)) + 1, 2))
        ax.set_ylim(0, 100)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")  # hand curves start late and low, gaze ones early and high
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
