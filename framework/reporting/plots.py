"""Plots of a compile: every candidate's dev score in the order proposed, coloured by round or step.

Example:
    >>> from cuecard.reporting.plots import plot_search  # doctest: +SKIP
    >>> plot_search(compiled.cuecard_report, "search.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def plot_search(report: Any, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Write a PNG of ``report``'s scored candidates: each one's dev score (the mean over the dev examples
    it was scored on, with its 95% interval as a faint bar) against its number (``arm``, the ``#`` of the
    report's table, in the order proposed), coloured by round (or step), pruned ones marked, the best so
    far as a line, the seed squared, the winner circled (and the search's own winner, when the seed was
    kept). Candidates never scored are left out.

    Args:
        report: a :class:`~cuecard.reporting.report.CompileReport`.
        path: where the PNG goes (its folder is created).
        title: the plot title (default: the teleprompter and run name).

    Example:
        >>> plot_search(compiled.cuecard_report, "search.png", title="APE on sentiment")  # doctest: +SKIP
        PosixPath('search.png')
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    candidates = sorted((c for c in report.candidates if c.dev_examples > 0), key=lambda c: c.arm)  # scored
    rounds = sorted({c.round for c in candidates})
    shades = [0.0] if len(rounds) == 1 else [i / (len(rounds) - 1) for i in range(len(rounds))]
    colours = plt.get_cmap("viridis")(shades)
    figure, axes = plt.subplots(figsize=(9.5, 4.5), dpi=110)
    try:
        for candidate in candidates:  # the 95% interval of each score, behind the points
            if candidate.dev_interval is not None:
                axes.vlines(candidate.arm, *candidate.dev_interval, color="grey", alpha=0.25, linewidth=2.5,
                            zorder=0)
        if any(c.dev_interval is not None for c in candidates):
            axes.plot([], [], color="grey", alpha=0.4, linewidth=2.5, label="95% interval")
        for round_, colour in zip(rounds, colours, strict=True):
            alive = [c for c in candidates if c.round == round_ and not c.pruned]
            pruned = [c for c in candidates if c.round == round_ and c.pruned]
            label = f"round {round_}" if len(rounds) > 1 else "candidate"
            axes.scatter([c.arm for c in alive], [c.dev_score for c in alive], s=26, color=colour, alpha=0.85,
                         label=label)
            axes.scatter([c.arm for c in pruned], [c.dev_score for c in pruned], s=30, marker="x",
                         color=colour, alpha=0.85)
        if any(c.pruned for c in candidates):
            axes.scatter([], [], marker="x", color="grey", label="pruned (score on the examples it got)")
        best, line = float("-inf"), []
        for candidate in candidates:
            best = max(best, candidate.dev_score)
            line.append(best)
        axes.step([c.arm for c in candidates], line, where="post", color="black", linewidth=1.1,
                  label="best so far")
        seed = next((c for c in candidates if c.instructions == report.seed_instructions), None)
        if seed is not None:
            axes.scatter([seed.arm], [seed.dev_score], s=120, marker="s", facecolors="none",
                         edgecolors="royalblue", linewidths=1.3, label="seed (the program as written)")
        search_best = getattr(report, "search_best", None)
        seed_kept = search_best is not None and search_best.key != report.best.key
        if report.best.dev_examples > 0:
            axes.scatter([report.best.arm], [report.best.dev_score], s=170, facecolors="none",
                         edgecolors="red", linewidths=1.6,
                         label="winner (the seed, kept)" if seed_kept else "winner")
        if seed_kept and search_best.dev_examples > 0:
            axes.scatter([search_best.arm], [search_best.dev_score], s=170, facecolors="none",
                         edgecolors="red", linewidths=1.3, linestyles="--",
                         label="the search's winner (not used)")
        axes.set_xlabel("candidate # (as in the report's table), in the order proposed")
        axes.set_ylabel("dev score (mean over the examples\neach candidate got)")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_ylim(-0.03, 1.03)
        axes.set_title(title or f"{report.teleprompter}: {report.run_name}")
        # the legend outside the axes: it hides no point
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path
