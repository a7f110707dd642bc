"""Results of a harness run: one JSON file per (task, method, seed) cell, the summary table and the plot."""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cuecard.clients.usage import Usage
from cuecard.stopping import StopKind, StopReason
from pydantic import BaseModel, Field


def one_line(value: object, limit: int = 240) -> str:
    """``value`` as one line of at most ``limit`` characters; an exception is named by its type first."""
    text = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else str(value)
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class CellResult(BaseModel):
    """One method on one task with one seed.

    ``usage`` counts every LM request the method asked for, cached or not (``usage.calls``: the cost
    as if its cache had been cold) and, beside it, the ones that reached a model (``usage.model_calls``).
    """

    task: str
    method: str
    seed: int | None
    fingerprint: str = Field(description="hash of the settings the cell ran with; a rerun with others recomputes it")
    test_accuracy: float | None = None
    dev_accuracy: float | None = None
    test_size: int = 0
    instructions: dict[str, str] = Field(default_factory=dict)
    usage: Usage = Field(default_factory=Usage)
    task_usage: Usage = Field(default_factory=Usage)
    prompt_usage: Usage = Field(default_factory=Usage)
    seconds: float = 0.0
    knobs: dict[str, Any] = Field(default_factory=dict)
    planned_calls: int | None = None
    notes: list[str] = Field(default_factory=list)
    error: str | None = Field(None, description="why the method gave no program (one line)")
    human_accuracies: list[float] = Field(default_factory=list, description="human baseline: each annotation's test accuracy")
    winner_source: str | None = Field(None, description="where the returned program's instructions came from: "
                                      "'seed', 'reading' (a task reading), 'user seed' or 'own step: <origin>', followed by "
                                      "' + answer form' when the answer-form check appended its sentence to it, and ' + demos' when "
                                      "a DSPy optimizer returned it with demos")
    search_best_source: str | None = Field(None, description="the same for the search's own best (before the do-no-harm check)")
    search_best_test_accuracy: float | None = Field(None, description="the search's best on test, when the check kept the seed")
    best_reading_test_accuracy: float | None = Field(
        None, description="when the method's own step won: its best task reading (the one scored on most dev examples, "
        "then the best scored) on test, what the loop is measured against")
    acceptance: dict[str, Any] | None = Field(None, description="the do-no-harm decision with its paired differences")
    proposals: list[str] = Field(default_factory=list, description="a few of the method's own proposals, quoted")


WITH_ANSWER_FORM = " + answer form"
"""How a source reads when the engine's answer-form check appended its sentence to that candidate."""
WITH_DEMOS = " + demos"
"""How a DSPy optimizer's source reads when it returned the program with demos of its choosing."""


def provenance(origin: str | None, round_: int = 0) -> str | None:
    """A candidate's origin as the table names it: the seed, a task reading, a user's seed, or the method's own step."""
    if origin is None:
        return None
    named = {"program": "seed", "task-reading": "reading", "user-seed": "user seed"}
    if origin in named:
        return named[origin]
    return f"own step: {origin}" + (f", round {round_}" if round_ else "")


def source_kind(source: str) -> tuple[str, bool]:
    """A winner source's kind without its step's origin (nor the demos a DSPy optimizer chose), and whether the
    answer-form check made it.

    Example:
        >>> source_kind("own step: opro, round 2 + answer form"), source_kind("reading")
        (('own step', True), ('reading', False))
    """
    source = source.removesuffix(WITH_DEMOS)
    with_form = source.endswith(WITH_ANSWER_FORM) or source.startswith("own step: answer-form")  # the latter: cells stored before the parent was named
    return source.split(":", 1)[0].removesuffix(WITH_ANSWER_FORM), with_form


def provenance_counts(group: Sequence[CellResult]) -> str:
    """How often each source gave a group's winner, e.g. ``"own step 1, seed + answer form 1"`` (the step's origin
    left out)."""
    counts: dict[str, int] = {}
    for cell in group:
        if cell.winner_source is not None:
            kind, with_form = source_kind(cell.winner_source)
            kind += WITH_ANSWER_FORM if with_form else ""
            kind += WITH_DEMOS if cell.winner_source.endswith(WITH_DEMOS) else ""
            counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items()))


class SummaryRow(BaseModel):
    """One table row: a method on a task, over seeds."""

    task: str
    method: str
    seeds: int
    test_mean: float | None
    test_sd: float | None
    dev_mean: float | None
    calls: float
    task_calls: float
    prompt_calls: float
    model_calls: float
    tokens: float
    seconds: float
    winner: str = Field("", description="where the winners came from, over seeds (see provenance)")
    note: str = ""


class CellStore:
    """Cells as JSON files under ``root/cells``; written atomically, so a killed run loses at most the cell it was in."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.dir = Path(root) / "cells"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, task: str, method: str, seed: int | None) -> Path:
        return self.dir / f"{task}__{method}__{'all' if seed is None else f'seed{seed}'}.json"

    def get(self, task: str, method: str, seed: int | None, fingerprint: str) -> CellResult | None:
        path = self.path(task, method, seed)
        if not path.is_file():
            return None
        try:
            cell = CellResult.model_validate_json(path.read_text(encoding="utf-8"))
        except ValueError:
            return None  # a file from an older harness or cut short: recompute the cell
        return cell if cell.fingerprint == fingerprint else None

    def put(self, cell: CellResult) -> None:
        path = self.path(cell.task, cell.method, cell.seed)
        handle, temp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(cell.model_dump_json(indent=1))
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


_CELL_LABEL = re.compile(r"\S+/\S+/seed\d+: ")  # the usage block's name, which differs between seeds


def _shared_notes(group: Sequence[CellResult]) -> list[str]:
    """The notes worth a table row (stops, the cap, resumes, the majority row's answer), each once, with how many seeds had it."""
    counts: dict[str, int] = {}
    for cell in group:
        notes = {_CELL_LABEL.sub("", n) for n in cell.notes if n.startswith(("stopped", "search stopped", "reached", "resumed", "always answers"))}
        for note in {n for n in notes if not any(n != other and n in other for other in notes)}:  # each stop once
            counts[note] = counts.get(note, 0) + 1
    return [note if count == len(group) else f"{note} ({count} of {len(group)} seeds)" for note, count in sorted(counts.items())]


def _quoted(group: Sequence[CellResult]) -> str:
    """Three proposals of the group's first cell that kept some, quoted (DSPy's rows)."""
    quoted = next((c.proposals for c in group if c.proposals), [])
    return "; proposals: " + " / ".join(repr(one_line(p, 80)) for p in quoted[:3]) if quoted else ""


def summarize(cells: Sequence[CellResult]) -> list[SummaryRow]:
    """Table rows in the order cells came; the human baseline gives two rows (mean and best annotation)."""
    groups: dict[tuple[str, str], list[CellResult]] = {}
    for cell in cells:
        groups.setdefault((cell.task, cell.method), []).append(cell)
    rows = []
    for (task, method), group in groups.items():
        if method == "human":
            accuracies = group[0].human_accuracies
            for label, value in (("human (mean)", _mean(accuracies)), ("human (best on test)", max(accuracies, default=None))):
                rows.append(SummaryRow(task=task, method=label, seeds=0, test_mean=value, test_sd=None, dev_mean=None,
                                       calls=0, task_calls=0, prompt_calls=0, model_calls=0, tokens=0, seconds=0,
                                       note=f"{len(accuracies)} annotations" if accuracies else "no annotations"))
            continue
        scored = [c for c in group if c.test_accuracy is not None]
        tests = [c.test_accuracy for c in scored]
        devs = [c.dev_accuracy for c in scored if c.dev_accuracy is not None]
        errors = sorted({c.error for c in group if c.error})
        notes = _shared_notes(group)
        rows.append(
            SummaryRow(
                task=task,
                method=method,
                seeds=len(scored),
                test_mean=_mean(tests),
                test_sd=statistics.stdev(tests) if len(tests) > 1 else (0.0 if tests else None),
                dev_mean=_mean(devs),
                calls=statistics.fmean(c.usage.calls for c in group),
                task_calls=statistics.fmean(c.usage.calls - c.prompt_usage.calls for c in group),
                prompt_calls=statistics.fmean(c.prompt_usage.calls for c in group),
                model_calls=statistics.fmean(c.usage.model_calls for c in group),
                tokens=statistics.fmean(c.usage.total_tokens for c in group),
                seconds=statistics.fmean(c.seconds for c in group),
                winner=provenance_counts(scored),
                note=("; ".join([*(f"failed: {e}" for e in errors), *notes])[:300] + _quoted(group)).strip("; "),
            )
        )
    return rows


MEAN_GAIN_TARGET = 0.15
"""The quality round's target for a method's mean test gain over the seed on the report half (15 points)."""


class TargetRow(BaseModel):
    """One method against the quality targets, over every task and seed of a run.

    * ``gap_closed``: (method - seed) / (mean human instruction - seed), with both sums over the tasks
      that have human annotations and room above the seed (the share of the human gap closed).
    * ``mean_test`` against ``best_baseline_mean``: the method's mean test accuracy over the tasks
      against the best of DSPy's optimizers over the same tasks.
    * ``worst_vs_seed``: the lowest (method - seed) mean test accuracy over the tasks (do no harm).
    * ``mean_gain``: the mean over the tasks of (method - seed) mean test accuracy, against
      :data:`MEAN_GAIN_TARGET`.
    * ``unspent_early``: cells that stopped with more than 10% of the cap unspent for another reason than
      having nothing left to score within it: the cap left no room for one more step, or nothing new to
      try (a stop for no improvement, or no stop note at all, counts).
    """

    method: str
    gap_closed: float | None
    gap_tasks: int
    mean_test: float | None
    tasks: int
    best_baseline: str | None
    best_baseline_mean: float | None
    worst_vs_seed: float | None
    worst_task: str | None
    mean_gain: float | None = None
    unspent: int
    unspent_early: int
    cells: int


NOTHING_LEFT_TO_SCORE = (StopKind.NO_ROOM, StopKind.NOTHING_NEW)
"""The stops that leave part of the cap unspent because nothing is left to score within it."""


def _unspent(cell: CellResult, cap: int) -> tuple[bool, bool]:
    """(stopped with more than 10% of the cap unspent, and for another reason than nothing left to score)."""
    if cell.error is not None or cell.test_accuracy is None or cap - cell.usage.calls <= 0.1 * cap:
        return False, False
    kinds = {StopReason.kind_of(note.split(" unspent: ", 1)[1] if " unspent: " in note else note.split(": ", 1)[-1])
             for note in cell.notes if note.startswith(("stopped", "search stopped"))}
    return True, not kinds & set(NOTHING_LEFT_TO_SCORE)


def target_rows(rows: Sequence[SummaryRow], cells: Sequence[CellResult], methods: Sequence[str],
                baselines: Sequence[str], cap: int) -> list[TargetRow]:
    """``methods`` measured against the targets (see :class:`TargetRow`); ``baselines`` are the
    optimizers they are compared with. Tasks without a seed row are left out."""
    by_key = {(r.task, r.method): r for r in rows}
    tasks = [t for t in dict.fromkeys(r.task for r in rows) if (t, "seed") in by_key and by_key[t, "seed"].test_mean is not None]

    def means(method: str) -> dict[str, float]:
        return {t: by_key[t, method].test_mean for t in tasks if (t, method) in by_key and by_key[t, method].test_mean is not None}

    seed = means("seed")
    human = means("human (mean)")
    baseline_means = {b: means(b) for b in baselines}
    out = []
    for method in methods:
        mine = means(method)
        if not mine:
            continue
        gap_tasks = [t for t in mine if t in human and human[t] > seed[t]]
        gap = sum(human[t] - seed[t] for t in gap_tasks)
        gain = sum(mine[t] - seed[t] for t in gap_tasks)
        comparable = {b: m for b, m in baseline_means.items() if set(mine) <= set(m)}
        best = max(comparable, key=lambda b: _mean([comparable[b][t] for t in mine]), default=None)
        drops = {t: mine[t] - seed[t] for t in mine}
        worst = min(drops, key=drops.get)
        flags = [_unspent(c, cap) for c in cells if c.method == method and c.task in mine]
        out.append(TargetRow(
            method=method,
            gap_closed=gain / gap if gap_tasks else None,
            gap_tasks=len(gap_tasks),
            mean_test=_mean(list(mine.values())),
            tasks=len(mine),
            best_baseline=best,
            best_baseline_mean=_mean([comparable[best][t] for t in mine]) if best else None,
            worst_vs_seed=drops[worst],
            worst_task=worst,
            mean_gain=_mean(list(drops.values())),
            unspent=sum(a for a, _ in flags),
            unspent_early=sum(b for _, b in flags),
            cells=len(flags),
        ))
    return out


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "not met")


def targets_table(targets: Sequence[TargetRow]) -> str:
    """The targets as a Markdown table: half the human gap closed, at least the best DSPy optimizer,
    no task more than 5 points below the seed, a mean gain over the seed of at least
    :data:`MEAN_GAIN_TARGET`, no cell stopped more than 10% under the cap with something left to score in it."""
    lines = [
        "| method | human gap closed (tasks) | ≥ 50% | mean test % (tasks) | best DSPy optimizer, mean test % | ≥ best | "
        f"worst task vs seed (points) | ≥ −5 | mean gain over the seed (points) | ≥ +{100 * MEAN_GAIN_TARGET:.0f} | "
        "cells >10% under the cap (not for lack of room) | cap spent |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        gap = "—" if t.gap_closed is None else f"{100 * t.gap_closed:.0f}% ({t.gap_tasks})"
        best = "—" if t.best_baseline is None else f"{t.best_baseline} {_pct(t.best_baseline_mean)}"
        beats = None if t.best_baseline_mean is None or t.mean_test is None else t.mean_test >= t.best_baseline_mean
        worst = "—" if t.worst_vs_seed is None else f"{100 * t.worst_vs_seed:+.1f} ({t.worst_task})"
        gain = "—" if t.mean_gain is None else f"{100 * t.mean_gain:+.1f}"
        gain_met = None if t.mean_gain is None else t.mean_gain >= MEAN_GAIN_TARGET - 1e-9
        lines.append(
            f"| {t.method} | {gap} | {_verdict(None if t.gap_closed is None else t.gap_closed >= 0.5)} | "
            f"{_pct(t.mean_test)} ({t.tasks}) | {best} | {_verdict(beats)} | {worst} | "
            f"{_verdict(None if t.worst_vs_seed is None else t.worst_vs_seed >= -0.05 - 1e-9)} | {gain} | {_verdict(gain_met)} | "
            f"{t.unspent} of {t.cells} ({t.unspent_early}) | {_verdict(t.unspent_early == 0)} |"
        )
    return "\n".join(lines)


def provenance_table(cells: Sequence[CellResult], seed_tests: dict[str, float]) -> str:
    """Per method: in how many cells the winner was the seed, a task reading or one of the method's own
    steps (as is, or with the answer-form check's sentence appended), and the mean test change of the cells
    its own steps won over the seed (``seed_tests``: the seed's test accuracy per task) and, for the own-step
    winners without the engine's sentence, over the method's best task reading in the same cell (the
    reading as it is, so a winner with the sentence would be measured against the bare reading)."""
    lines = ["| method | cells | winner: seed | winner: reading | winner: own step | of these, with the answer form "
             "| own-step winners, mean test vs seed (points) | own-step winners as proposed, mean test vs the best reading (points) |",
             "|---|---|---|---|---|---|---|---|"]
    methods = list(dict.fromkeys(c.method for c in cells if c.winner_source is not None and c.method != "seed"))
    for method in methods:
        group = [c for c in cells if c.method == method and c.winner_source is not None and c.test_accuracy is not None]
        kinds = [source_kind(c.winner_source) for c in group]
        own = [(c, with_form) for c, (kind, with_form) in zip(group, kinds, strict=True) if kind == "own step"]
        over_seed = [c.test_accuracy - seed_tests[c.task] for c, _ in own if c.task in seed_tests]
        over_reading = [c.test_accuracy - c.best_reading_test_accuracy for c, with_form in own
                        if not with_form and c.best_reading_test_accuracy is not None]
        gain = f"{100 * statistics.fmean(over_seed):+.1f} ({len(over_seed)})" if over_seed else "—"
        beyond = f"{100 * statistics.fmean(over_reading):+.1f} ({len(over_reading)})" if over_reading else "—"
        counted = [kind for kind, _ in kinds]
        lines.append(f"| {method} | {len(group)} | {counted.count('seed')} | {counted.count('reading')} | {counted.count('own step')} "
                     f"| {sum(with_form for _, with_form in kinds)} | {gain} | {beyond} |")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def markdown_table(rows: Sequence[SummaryRow]) -> str:
    """The summary as a Markdown table (accuracies in %, costs averaged over seeds)."""
    lines = [
        "| task | method | test % (mean ± sd) | seeds | dev % | winner from | LM calls, cold (task / prompt) | reached a model | tokens | wall s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        test = _pct(r.test_mean) if r.test_sd is None else f"{_pct(r.test_mean)} ± {_pct(r.test_sd)}"
        lines.append(
            f"| {r.task} | {r.method} | {test} | {r.seeds if r.seeds else '—'} | {_pct(r.dev_mean)} | {r.winner or '—'} | "
            f"{r.calls:.0f} ({r.task_calls:.0f} / {r.prompt_calls:.0f}) | {r.model_calls:.0f} | {r.tokens:.0f} | "
            f"{r.seconds:.0f} | {r.note.replace('|', '/')} |"
        )
    return "\n".join(lines)


def plot_accuracy_vs_calls(rows: Sequence[SummaryRow], path: str | os.PathLike[str]) -> Path:
    """One panel per task: test accuracy (mean, sd bars) against LM calls as if cold; baselines as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in rows))
    figure, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.5), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        baselines: dict[float, list[str]] = {}  # one line per level, naming every baseline at it
        for row in (r for r in rows if r.task == task and r.test_mean is not None):
            if row.calls == 0:
                baselines.setdefault(round(100 * row.test_mean, 1), []).append(row.method)
                continue
            axis.errorbar(row.calls, 100 * row.test_mean, yerr=100 * (row.test_sd or 0), fmt="o", capsize=3, label=row.method)
        for level, names in baselines.items():
            axis.axhline(level, linestyle="--", linewidth=1, color="grey")
            axis.annotate(", ".join(names), (0, level), fontsize=7, color="grey", va="bottom")
        axis.set_title(task)
        axis.set_xlabel("LM calls per compile (as if the cache were cold)")
        axis.set_ylabel("test accuracy %")
        axis.set_ylim(-5, 105)
        axis.set_xlim(left=-5)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_outputs(root: str | os.PathLike[str], config: dict[str, Any], cells: Sequence[CellResult]) -> dict[str, Path]:
    """``results.json`` (config, cells, summary, targets), ``results.md`` and ``accuracy_vs_calls.png`` under ``root``.

    The targets are computed over every task, then over each half of the visible tasks
    (:func:`~benchmarks.harness.tasks.task_halves`) that the run has tasks of.
    """
    from .methods import BASELINES, DSPY_METHOD_NAMES, DSPY_REFERENCES
    from .tasks import HALVES_RULE, half_of, task_halves

    root = Path(root)
    rows = summarize(cells)
    present = list(dict.fromkeys(c.method for c in cells))
    mine = [m for m in present if m not in (*DSPY_METHOD_NAMES, *DSPY_REFERENCES, *BASELINES)]
    baselines = [m for m in DSPY_METHOD_NAMES if m in present]
    cap = int(config.get("cap", 0))
    targets = target_rows(rows, cells, mine, baselines, cap)
    halves = task_halves(config["data"]) if config.get("data") and Path(config["data"]).is_dir() else {}
    by_half: dict[str, list[TargetRow]] = {}
    for half in halves:
        names = {r.task for r in rows if half_of(r.task, halves) == half}
        if names:
            by_half[half] = target_rows([r for r in rows if r.task in names], [c for c in cells if c.task in names], mine, baselines, cap)
    seed_tests = {r.task: r.test_mean for r in rows if r.method == "seed" and r.test_mean is not None}
    payload = {
        "config": config,
        "summary": [r.model_dump() for r in rows],
        "targets": [t.model_dump() for t in targets],
        "targets_by_half": {half: [t.model_dump() for t in found] for half, found in by_half.items()},
        "halves": halves,
        "cells": [c.model_dump() for c in cells],
    }
    json_path, md_path = root / "results.json", root / "results.md"
    json_path.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    marked = [r.model_copy(update={"task": f"{r.task} ({half[0].upper()})"}) if (half := half_of(r.task, halves)) else r for r in rows]
    text = markdown_table(marked) + "\n"
    if halves:
        text += f"\nHalves (T: tuning, R: report): {HALVES_RULE}.\n"
    if targets:
        text += "\n## Targets, over every task and seed\n\n" + targets_table(targets) + "\n"
    for half, found in by_half.items():
        if found:
            text += f"\n## Targets, {half} half\n\n" + targets_table(found) + "\n"
    if any(c.winner_source for c in cells):
        text += "\n## Where the winners came from\n\n" + provenance_table(cells, seed_tests) + "\n"
    md_path.write_text(text, encoding="utf-8")
    return {"json": json_path, "markdown": md_path, "plot": plot_accuracy_vs_calls(rows, root / "accuracy_vs_calls.png")}
