"""A compile report a person can look at: a PNG of the search and a self-contained HTML page.

Example:
    >>> from cuecard.reporting.report import write_report  # doctest: +SKIP
    >>> write_report(compiled.cuecard_report, "report/")  # doctest: +SKIP
    (PosixPath('report/report.png'), PosixPath('report/report.html'))
"""

from __future__ import annotations

import base64
import difflib
import html
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, model_validator

from ..clients.usage import Usage
from ..engine.acceptance import Acceptance
from ..stopping import StopKind, StopReason
from .plots import plot_search

if TYPE_CHECKING:
    import jinja2


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
    task_model_spec: str | None = Field(None, description="the model string the task LM was built from")
    prompt_model: str | None = None
    data_fingerprint: str | None = Field(None, description="hash of the train and dev examples")
    best: CandidateSummary
    acceptance: Acceptance | None = Field(None, description="why the best candidate replaced the seed, or why the seed was kept")
    search_best: CandidateSummary | None = Field(None, description="the search's own winner, when the seed was kept instead")
    candidates: list[CandidateSummary]
    dropped: dict[str, int] = Field(default_factory=dict)
    failures: dict[str, int] = Field(default_factory=dict, description="failed evaluations and proposals by reason")
    parse_failure_example: str | None = Field(
        None, description="one task-model answer the adapter could not read as the output fields (usage.parse_failures counts them)"
    )
    proposal_token_caps: list[int] = Field(
        default_factory=list, description="the token caps at which prompt-model replies were cut (prompt_usage.truncated counts them)"
    )
    capped: StopReason | None = Field(
        None, description="the cap reached, if one was (the run stays open: a larger cap continues it); the stop reason "
        "made where the cap was met"
    )
    task_token_caps: list[int] = Field(
        default_factory=list, description="the token caps at which task-model answers were cut (task_usage.truncated counts them)"
    )
    stop_reason: StopReason = Field(default_factory=StopReason, description="why the search stopped, said once")
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

    @model_validator(mode="before")
    @classmethod
    def _reason_of_older_reports(cls, data: Any) -> Any:
        """A report saved when the cap was a line of text (``stopped``): that line is the cap's detail, and
        the stop reason of a report saved before ``stop_reason`` existed."""
        if isinstance(data, dict) and "stopped" in data:
            data = dict(data)
            stopped = data.pop("stopped")
            if stopped and data.get("capped") is None:
                data["capped"] = StopReason(kind=StopKind.CAP, detail=stopped)
            if stopped and data.get("stop_reason") is None:
                data["stop_reason"] = data["capped"]
        return data

    @property
    def improved(self) -> bool:
        return self.seed_dev_score is None or self.best.dev_score > self.seed_dev_score

    def outcome(self) -> dict[str, Any]:
        """The report without what depends on the process or the clock (usage, timings): two runs of
        the same compile, one of them killed and resumed, have equal outcomes. The token caps at which
        replies were cut go with the usage: a rerun that replays the replies sees none cut."""
        return self.model_dump(
            mode="json", exclude={"storage", "usage", "task_usage", "prompt_usage", "process", "proposal_token_caps",
                                  "task_token_caps"}
        )




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




def lineage(report: Any, start: Any = None) -> list[Any]:
    """The winner (or ``start``) and its ancestors, winner first (each a candidate summary).

    Example:
        >>> [c.origin for c in lineage(report)]  # doctest: +SKIP
        ['edit', 'program']
    """
    by_key = {candidate.key: candidate for candidate in report.candidates}
    chain, node, seen = [], start if start is not None else report.best, set()
    while node is not None and node.key not in seen:
        chain.append(node)
        seen.add(node.key)
        node = by_key.get(node.parent) if node.parent else None
    return chain


def _why(candidate: Any) -> str:
    """How the method came to ``candidate``, in its own words ("" when it says nothing)."""
    return str(getattr(candidate, "why", "") or "")


def _instructions(candidate: Any) -> list[tuple[str | None, str]]:
    """A candidate's instructions as (predictor name, text) pairs; the name is None for one predictor."""
    items = candidate.instructions
    if len(items) == 1:
        return [(None, next(iter(items.values())))]
    return list(items.items())


def word_diff(old: str, new: str) -> list[tuple[str, str]]:
    """A word-level diff of two texts as ``(op, text)`` pieces, ``op`` one of ``equal``, ``delete`` and
    ``insert``: the ``equal`` and ``delete`` pieces spell ``old``, the ``equal`` and ``insert`` ones ``new``.

    Example:
        >>> word_diff("Classify the sentiment.", "Classify the review's sentiment.")
        [('equal', 'Classify the '), ('insert', "review's "), ('equal', 'sentiment.')]
    """
    a, b = re.findall(r"\S+\s*|\s+", old), re.findall(r"\S+\s*|\s+", new)
    pieces: list[tuple[str, str]] = []

    def add(op: str, text: str) -> None:
        if not text:
            return
        if pieces and pieces[-1][0] == op:
            pieces[-1] = (op, pieces[-1][1] + text)
        else:
            pieces.append((op, text))

    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            add("equal", "".join(a[i1:i2]))
        else:
            add("delete", "".join(a[i1:i2]))
            add("insert", "".join(b[j1:j2]))
    return pieces


def _seed_candidate(report: Any) -> Any:
    """The program as written among the candidates (None when it was never scored as one)."""
    found = [c for c in report.candidates if c.instructions == report.seed_instructions]
    return next(iter(found), None) or next((c for c in report.candidates if c.origin == "program"), None)


def _overlap(a: Any, b: Any) -> bool:
    """Whether two candidates' 95% intervals overlap (True when either has none)."""
    if a is None or b is None or a.dev_interval is None or b.dev_interval is None:
        return True
    return a.dev_interval[0] <= b.dev_interval[1] and b.dev_interval[0] <= a.dev_interval[1]


def _outcome(report: Any) -> dict[str, Any]:
    """What the headline says: which instructions won, against what, and in plain words why."""
    seed, acceptance = _seed_candidate(report), report.acceptance
    searched = report.search_best or report.best  # the search's own winner
    kept = seed is not None and (searched.key == seed.key or report.best.key == seed.key)
    if kept and searched.key == seed.key:
        verdict = "No candidate did better than the program as written: its instructions are kept."
        distinguishable = False
    elif kept:
        verdict = ("The program's own instructions are kept: the search's winner did not do clearly better "
                   "on the same dev examples, so it is not distinguishable from them.")
        distinguishable = False
    elif seed is None:
        verdict = "The winner replaced the program's instructions (the program as written was not scored)."
        distinguishable = False
    elif acceptance is not None and acceptance.accepted and acceptance.rule != "always":
        verdict = "The winner replaced the program's instructions: it did better on the same dev examples."
        distinguishable = True
    else:
        distinguishable = not _overlap(report.best, seed)
        verdict = "The winner replaced the program's instructions without a check against them" + (
            "." if distinguishable else "; their 95% intervals overlap: it is not distinguishable from them."
        )
    others = [c for c in report.candidates if c.dev_examples and c.key not in {searched.key, report.best.key}]
    return {
        "replaced": not kept,
        "kept_seed": kept,
        "runner_up": others[0] if others and kept and searched.key == report.best.key else None,
        "distinguishable": distinguishable,
        "verdict": verdict,
        "reason": acceptance.reason if acceptance is not None else None,
        "winner": report.best,
        "seed": seed,
        "searched": searched,
        "acceptance": acceptance,
    }


def _diffs(report: Any, candidate: Any) -> dict[str, Any]:
    """``candidate``'s instructions against its parent's (or the program's, when it has no parent), and
    against the program's when its parent is another candidate."""
    by_key = {c.key: c for c in report.candidates}
    parent = by_key.get(candidate.parent) if candidate.parent else None
    seed = report.seed_instructions

    def against(old: dict[str, str]) -> list[dict[str, Any]]:
        names = list(dict.fromkeys([*candidate.instructions, *old]))
        pairs = [(name, old.get(name, ""), candidate.instructions.get(name, "")) for name in names]
        return [{"name": n, "changed": was != now, "pieces": word_diff(was, now)} for n, was, now in pairs]

    base = parent.instructions if parent is not None else seed
    return {
        "candidate": candidate,
        "parent": parent,
        "unchanged": candidate.instructions == seed and parent is None,
        "predictors": against(base),
        "against_seed": against(seed) if parent is not None and parent.instructions != seed else None,
    }


def _score(candidate: Any) -> str:
    """A candidate's dev score, or "not scored" (never 0.000 for a candidate no example was scored on)."""
    if candidate is None or not candidate.dev_examples:
        return "not scored"
    return f"{candidate.dev_score:.3f}"


def _ci(candidate: Any) -> str:
    """A candidate's 95% interval as "0.219-0.613" ("" when it has none)."""
    if candidate is None or not candidate.dev_examples or candidate.dev_interval is None:
        return ""
    low, high = candidate.dev_interval
    return f"{low:.3f}\u2013{high:.3f}"


def _fields(values: dict[str, Any] | None) -> str:
    """An example's fields as text: the value alone for one field, ``name: value`` lines for several."""
    if values is None:
        return ""
    if len(values) == 1:
        return str(next(iter(values.values())))
    return "\n".join(f"{name}: {value}" for name, value in values.items())


def _escape(value: Any) -> Any:
    """Plain strings escaped with :func:`html.escape` (``'`` as ``&#x27;``, as the page always had)."""
    from markupsafe import Markup

    if isinstance(value, str) and not isinstance(value, Markup):
        return Markup(html.escape(value))
    return value


def _environment(search_path: Path) -> jinja2.Environment:
    """A Jinja2 environment loading templates from ``search_path``, autoescaping, with the report filters."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(search_path)),
        autoescape=True,
        finalize=_escape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(score=_score, ci=_ci, fields=_fields, instructions=_instructions, why=_why)
    return environment


TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_TEMPLATE = TEMPLATES / "report.html.j2"


def render_html(
    report: Any, png: bytes, *, top: int = 15, template: str | os.PathLike[str] | None = None
) -> str:
    """The report as one HTML page with the plot embedded and no external resources.

    ``template`` is a Jinja2 template file of your own (default ``cuecard/reporting/templates/report.html.j2``);
    it is rendered with autoescaping on and gets: ``report`` (the :class:`CompileReport`), ``image``
    (the plot as base64 PNG), ``outcome`` (``verdict``, ``reason``, ``winner``, ``seed``, ``searched``,
    ``runner_up``, ``replaced``, ``kept_seed``, ``distinguishable``), ``evidence``, ``diff`` (the
    search's winner against its parent, word by word), ``chain`` (its lineage), ``candidates`` (the
    top ``top``), ``hidden`` (how many more), ``unscored``, ``usage_rows``, and the filters ``score``,
    ``ci``, ``fields``, ``instructions`` and ``why``.

    Example:
        >>> page = render_html(report, Path("report.png").read_bytes())  # doctest: +SKIP
        >>> page = render_html(report, png, template="my_report.html.j2")  # doctest: +SKIP
    """
    path = Path(template) if template is not None else DEFAULT_TEMPLATE
    if not path.is_file():
        raise FileNotFoundError(f"report template {path} does not exist")
    outcome = _outcome(report)
    searched = outcome["searched"]
    same_model = report.task_model == report.prompt_model
    context = {
        "report": report,
        "image": base64.b64encode(png).decode(),
        "outcome": outcome,
        "evidence": report.evidence,
        "diff": _diffs(report, searched),
        "chain": lineage(report, searched),
        "candidates": report.candidates[:top],
        "hidden": max(0, len(report.candidates) - top),
        "unscored": sum(1 for c in report.candidates if not c.dev_examples),
        "usage_rows": [
            ("whole run", "", report.usage),
            ("task model", report.task_model or "", report.task_usage),
            ("prompt model", (report.prompt_model or "") + (" (the same model)" if same_model else ""),
             report.prompt_usage),
        ],
    }
    return _environment(path.parent).get_template(path.name).render(**context)


def write_report(
    report: Any, out_dir: str | os.PathLike[str], template: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """Write ``report.png`` and ``report.html`` into ``out_dir``; return both paths.

    ``template`` is your own Jinja2 template for the page (see :func:`render_html`).

    Example:
        >>> write_report(compiled.cuecard_report, "report/")  # doctest: +SKIP
        (PosixPath('report/report.png'), PosixPath('report/report.html'))
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_search(report, out / "report.png")
    page = out / "report.html"
    page.write_text(render_html(report, png.read_bytes(), template=template), encoding="utf-8")
    return png, page
