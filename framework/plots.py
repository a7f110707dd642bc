"""Plots of a compile: every candidate's dev score in the order proposed, coloured by round or step.

Example:
    >>> from cuecard.plots import plot_search  # doctest: +SKIP
    >>> plot_search(compiled.cuecard_report, "search.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def plot_search(report: Any, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Write a PNG of ``report``'s candidates: dev score against the order they were proposed in,
    coloured by round (or step), pruned ones marked, the best so far as a line, the winner circled.

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
    candidates = sorted((c for c in report.candidates if c.dev_examples > 0), key=lambda c: c.arm)  # scored ones
    rounds = sorted({c.round for c in candidates})
    colours = plt.get_cmap("viridis")(list(range(len(rounds))) if len(rounds) == 1 else [i / (len(rounds) - 1) for i in range(len(rounds))])
    figure, axes = plt.subplots(figsize=(9.5, 4.5), dpi=110)
    try:
        for round_, colour in zip(rounds, colours, strict=True):
            kept = [c for c in candidates if c.round == round_ and not c.pruned]
            pruned = [c for c in candidates if c.round == round_ and c.pruned]
            label = f"round {round_}" if len(rounds) > 1 else "candidate"
            axes.scatter([c.arm for c in kept], [c.dev_score for c in kept], s=26, color=colour, alpha=0.85, label=label)
            axes.scatter([c.arm for c in pruned], [c.dev_score for c in pruned], s=30, marker="x", color=colour, alpha=0.85)
        if any(c.pruned for c in candidates):
            axes.scatter([], [], marker="x", color="grey", label="pruned (score on the examples it got)")
        best, line = float("-inf"), []
        for candidate in candidates:
            best = max(best, candidate.dev_score)
            line.append(best)
        axes.step([c.arm for c in candidates], line, where="post", color="black", linewidth=1.1, label="best so far")
        axes.scatter([report.best.arm], [report.best.dev_score], s=110, facecolors="none", edgecolors="red", linewidths=1.5, label="winner")
        axes.set_xlabel("candidate, in the order proposed")
        axes.set_ylabel(f"dev score ({report.dev_size} examples)")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_ylim(-0.03, 1.03)
        axes.set_title(title or f"{report.teleprompter}: {report.run_name}")
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)  # outside: hides no point
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path
