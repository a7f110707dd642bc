"""A compile report a person can look at: a PNG of the search and a self-contained HTML page.

Example:
    >>> from cuecard.report import write_report  # doctest: +SKIP
    >>> write_report(compiled.cuecard_report, "report/")  # doctest: +SKIP
    (PosixPath('report/report.png'), PosixPath('report/report.html'))
"""

from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .acceptance import Acceptance
from .plots import plot_search
from .usage import Usage


class CandidateSummary(BaseModel):
    """One candidate as the report shows it."""

    arm: int
    key: str
    instructions: dict[str, str]
    origin: str
    parent: str | None = None
    round: int = 0
    dev_score: float
    dev_examples: int
    dev_interval: tuple[float, float] | None = Field(None, description="95% interval of the dev score (Wilson)")
    pruned: bool = False
    why: str = Field("", description="how the method came to it (a gradient, an analysis...), in the method's words")
    meta: dict[str, Any] = Field(default_factory=dict)


class ExampleEvidence(BaseModel):
    """A dev example on which the search's winner and the seed scored differently, with both outputs."""

    index: int
    inputs: dict[str, str]
    gold: dict[str, str]
    seed_score: float
    seed_output: dict[str, str] | None = None
    winner_score: float
    winner_output: dict[str, str] | None = None


class ProcessStats(BaseModel):
    """What this process did (a resumed or repeated compile reads much back); not part of the outcome."""

    evaluations_computed: int = 0
    evaluations_read_back: int = 0
    lm_requests_replayed: int = 0
    model_calls: int = 0


class CompileReport(BaseModel):
    """What a compile did: candidates with scores and lineage, the winner, usage, and why it stopped.

    ``usage`` is what the whole run spent, over every process that worked on it (a resumed run
    includes what the killed one spent); ``process`` is what this process did.
    """

    teleprompter: str
    config: dict[str, Any]
    run_name: str
    storage: str
    identity: str | None = Field(None, description="digest of the run identity")
    seed: int
    train_size: int
    dev_size: int
    seed_instructions: dict[str, str]
    seed_dev_score: float | None = None
    task_model: str | None = None
    prompt_model: str | None = None
    data_fingerprint: str | None = Field(None, description="hash of the train and dev examples")
    best: CandidateSummary
    acceptance: Acceptance | None = Field(None, description="why the best candidate replaced the seed, or why the seed was kept")
    search_best: CandidateSummary | None = Field(None, description="the search's own winner, when the seed was kept instead")
    candidates: list[CandidateSummary]
    dropped: dict[str, int] = Field(default_factory=dict)
    failures: dict[str, int] = Field(default_factory=dict, description="failed evaluations and proposals by reason")
    stopped: str | None = Field(None, description="the cap that stopped the search, if one did")
    evaluations: int = 0
    usage: Usage = Field(default_factory=Usage)
    task_usage: Usage = Field(default_factory=Usage)
    prompt_usage: Usage = Field(default_factory=Usage)
    notes: list[str] = Field(default_factory=list)
    history: list[dict[str, Any]] = Field(default_factory=list, description="per round/step, what the method did")
    evidence: list[ExampleEvidence] = Field(
        default_factory=list, description="dev examples where the search's winner and the seed differ"
    )
    process: ProcessStats = Field(default_factory=ProcessStats)

    @property
    def improved(self) -> bool:
        return self.seed_dev_score is None or self.best.dev_score > self.seed_dev_score

    def outcome(self) -> dict[str, Any]:
        """The report without what depends on the process or the clock (usage, timings): two runs of
        the same compile, one of them killed and resumed, have equal outcomes."""
        return self.model_dump(mode="json", exclude={"storage", "usage", "task_usage", "prompt_usage", "process"})




def interval(scores: list[float], z: float = 1.96) -> tuple[float, float] | None:
    """A 95% interval for the mean of scores in [0, 1] (Wilson's, exact for 0/1 scores).

    >>> interval([1.0, 1.0, 0.0, 1.0])
    (0.3006, 0.9544)
    """
    n = len(scores)
    if n == 0:
        return None
    p = sum(scores) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)




def lineage(report: Any) -> list[Any]:
    """The winner and its ancestors, winner first (each a candidate summary)."""
    by_key = {candidate.key: candidate for candidate in report.candidates}
    chain, node, seen = [], report.best, set()
    while node is not None and node.key not in seen:
        chain.append(node)
        seen.add(node.key)
        node = by_key.get(node.parent) if node.parent else None
    return chain


def _why(candidate: Any) -> str:
    return str(getattr(candidate, "why", "") or "")


def _instructions(candidate: Any) -> str:
    items = candidate.instructions
    if len(items) == 1:
        return html.escape(next(iter(items.values())))
    return "<br>".join(f"<b>{html.escape(name)}</b>: {html.escape(text)}" for name, text in items.items())


def render_html(report: Any, png: bytes, *, top: int = 15) -> str:
    """The report as one HTML page (the plot embedded), with no external resources."""
    usage = report.usage
    rows = "\n".join(
        f"<tr><td>{i}</td><td>{c.dev_score:.3f}</td><td>{c.dev_examples}</td><td>{html.escape(c.origin)}</td>"
        f"<td>{c.round}</td><td>{'yes' if c.pruned else ''}</td><td>{_instructions(c)}</td></tr>"
        for i, c in enumerate(report.candidates[:top], start=1)
    )
    chain = "\n".join(
        f"<li><b>{html.escape(c.origin)}</b> (round {c.round}, dev {c.dev_score:.3f}): {_instructions(c)}"
        + (f"<div class='why'>{html.escape(_why(c))}</div>" if _why(c) else "")
        + "</li>"
        for c in lineage(report)
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) or "<li>none</li>"
    dropped = ", ".join(f"{html.escape(k)}: {v}" for k, v in report.dropped.items()) or "none"
    image = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cuecard report: {html.escape(report.run_name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; text-align: left; }}
.why {{ color: #555; font-size: 0.85em; margin: 0.2em 0 0.6em 0; white-space: pre-wrap; }}
code {{ background: #f4f4f4; padding: 0 3px; }}
</style></head><body>
<h1>{html.escape(report.teleprompter)} &middot; {html.escape(report.run_name)}</h1>
<p>Winner dev score <b>{report.best.dev_score:.3f}</b> on {report.best.dev_examples} examples
(seed {'' if report.seed_dev_score is None else f'{report.seed_dev_score:.3f}'}); train {report.train_size}, dev {report.dev_size};
{len(report.candidates)} candidates, {report.evaluations} example evaluations.</p>
<p>Task model <code>{html.escape(str(report.task_model))}</code>, prompt model <code>{html.escape(str(report.prompt_model))}</code>.</p>
<h2>Search</h2>
<img alt="dev score of every candidate against the round it was proposed in" src="data:image/png;base64,{image}" style="max-width:100%">
<h2>How the winner came about</h2>
<ol>{chain}</ol>
<h2>Top candidates</h2>
<table><tr><th>#</th><th>dev score</th><th>examples</th><th>origin</th><th>round</th><th>pruned</th><th>instructions</th></tr>
{rows}</table>
<h2>Cost</h2>
<p>{usage.calls} LM calls ({usage.model_calls} reached a model, {usage.cache_hits} from cache);
task model {report.task_usage.model_calls} calls, prompt model {report.prompt_usage.model_calls} calls;
{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens; ${usage.cost:.4f}; {usage.lm_seconds:.1f} s in LM calls.</p>
<h2>Notes</h2><ul>{notes}</ul>
<p>Dropped proposals: {dropped}</p>
</body></html>
"""


def write_report(report: Any, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``report.png`` and ``report.html`` into ``out_dir``; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_search(report, out / "report.png")
    page = out / "report.html"
    page.write_text(render_html(report, png.read_bytes()), encoding="utf-8")
    return png, page
