"""Plots of a compile: every candidate's score against the round (or step) it was proposed in.

Example:
    >>> from cuecard.plots import plot_search  # doctest: +SKIP
    >>> plot_search(compiled.cuecard_report, "search.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def plot_search(report: Any, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Write a PNG of ``report``'s candidates: dev score against round, pruned ones marked, the best so far as a line.

    Args:
        report: a :class:`~cuecard.teleprompters.CompileReport`.
        path: where the PNG goes (its folder is created).
        title: the plot title (default: the teleprompter and run name).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = [c for c in report.candidates if not c.pruned]
    pruned = [c for c in report.candidates if c.pruned]
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    try:
        axes.scatter([c.round for c in kept], [c.dev_score for c in kept], s=22, alpha=0.7, label="candidate")
        if pruned:
            axes.scatter([c.round for c in pruned], [c.dev_score for c in pruned], s=22, marker="x", color="grey", label="pruned")
        rounds = sorted({c.round for c in report.candidates})
        best, line = float("-inf"), []
        for round_ in rounds:
            best = max([best] + [c.dev_score for c in kept if c.round == round_])
            line.append(best)
        axes.plot(rounds, line, color="black", linewidth=1.2, label="best so far")
        axes.scatter([report.best.round], [report.best.dev_score], s=80, facecolors="none", edgecolors="red", label="winner")
        axes.set_xlabel("round / step")
        axes.set_ylabel("dev score")
        axes.set_ylim(-0.03, 1.03)
        axes.set_title(title or f"{report.teleprompter}: {report.run_name}")
        axes.legend(loc="lower right", fontsize=8)
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path
