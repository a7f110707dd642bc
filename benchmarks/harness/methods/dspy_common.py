"""What DSPy's optimizers share in the harness: the capped session, captured output, notes.

The harness compares cuecard's teleprompters with the optimizers that ship with DSPy (``copro.py``,
``miprov2.py``, ``gepa.py`` next to this file). Those run DSPy's code itself; they only choose their
knobs so that a run stays under ``cap`` LM requests, and wrap the run:

- the program under optimization is the one thing shared with cuecard's methods: it is wrapped
  (:class:`WithAdapter`) so that its own calls run on the task model under cuecard's adapter
  (``cuecard.adapter_for(task_lm)``, the plain adapter for a local model), and unwrapped afterwards;
  nothing sets an adapter for the whole run, so every call an optimizer makes itself (proposals,
  reflection, data summaries) goes through DSPy's own default adapters, as its users run it; one thread
  (the machine's cores are shared);
- the prompt model goes in through each optimizer's own parameter (COPRO ``prompt_model``, MIPROv2
  ``prompt_model``/``task_model``, GEPA ``reflection_lm``); every knob the cap does not fix keeps the
  optimizer's default;
- the knobs come from a cost formula read off the optimizer's source (each ``*_cost`` docstring);
  the formula is a worst case, so the run stays under it (GEPA: with a stop callback on the calls
  really made), and a cap too small for the smallest sensible setting raises ``ValueError`` before
  any call;
- a guard block (``Limits(max_calls=cap)``) counts every request, cached or not, and refuses the one
  that would pass ``cap``; a refused request (by this guard or an enclosing block) voids the run
  with :class:`DSPyMethodError`, so a wrong formula can never silently exceed the cap;
- the optimizers' prints, progress bars and logs are captured; warnings worth knowing end up in
  the run's notes; any failure is re-raised as :class:`DSPyMethodError` with a one-line message.

Every candidate is scored on ``dev`` by all three (COPRO's ``trainset``, MIPROv2's and GEPA's
``valset``), as cuecard's teleprompters do; ``train`` feeds MIPROv2's bootstrapping and data summary
and GEPA's reflection minibatches.

Costs count one request per generated completion: a DSPy call with ``n=k`` runs ``k`` engine requests
(dspy/clients/execution.py ``execute``), and cuecard's meter counts it as ``k`` calls too.
"Calls per example" is the number of predictors (each predictor runs once per example).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator, Sequence
from typing import Any

import cuecard
import dspy
from cuecard.clients.usage import Block, Limits, Usage, activate
from cuecard.errors import BudgetExhausted
from dspy.utils.callback import BaseCallback

from ..results import one_line


class DSPyMethodError(RuntimeError):
    """An optimizer run that failed or was stopped; the message is one line, fit for a table row.

    Example:
        >>> str(DSPyMethodError("GEPA failed: boom"))
        'GEPA failed: boom'
    """


_NOTABLE = re.compile(r"\b(ERROR|WARNING|Error|Exception|failed|Failed|cancelled)\b")
_NOISE = re.compile(r"ExperimentalWarning|warnings\.warn|Traceback|^File |^\s*$")
_PROGRESS = re.compile(r"^.*\|\s*\d+/\d+ \[[^\]]*\]")  # a tqdm bar written before the message
_TIMESTAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ")


def log_notes(log: str, name: str, limit: int = 3) -> list[str]:
    """The most frequent distinct error and warning lines (errors first) from a run's captured output."""
    seen: dict[str, int] = {}
    for raw in log.replace("\r", "\n").splitlines():
        line = _TIMESTAMP.sub("", _PROGRESS.sub("", raw).strip())
        if not _NOTABLE.search(line) or _NOISE.search(line):
            continue
        key = one_line(line, 200)
        seen[key] = seen.get(key, 0) + 1
    ranked = sorted(seen.items(), key=lambda item: (not item[0].startswith("ERROR"), -item[1]))
    notes = [f"{name} log ({count}x): {key}" for key, count in ranked[:limit]]
    if len(ranked) > limit:
        notes.append(f"{name} log: {len(ranked) - limit} more distinct warning/error line(s)")
    return notes


def usage_note(usage: Usage) -> str:
    return (
        f"measured: {usage.calls} LM calls ({usage.model_calls} reached a model, {usage.cache_hits} cached, "
        f"{usage.errors} errors, {usage.parse_failures} unparsed answers)"
    )


class _LMObserver(BaseCallback):
    """Sees every LM request that raised, where it raised: the optimizers swallow most exceptions
    (a failed evaluation scores 0), so a refused or failing request must be counted at the LM."""

    def __init__(self) -> None:
        self.refused = 0
        self.failed = 0
        self.first_refusal = ""
        self.first_failure = ""

    def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        if isinstance(exception, BudgetExhausted):
            self.refused += 1
            self.first_refusal = self.first_refusal or str(exception)
        elif exception is not None:
            self.failed += 1
            self.first_failure = self.first_failure or f"{type(exception).__name__}: {exception}"


@contextlib.contextmanager
def session(name: str, cap: int, planned: int, task_lm: dspy.LM) -> Iterator[tuple[Block, io.StringIO]]:
    """Run an optimizer: task model and its adapter in context, the cap enforced, output captured.

    The guard is a cuecard usage block with ``Limits(max_calls=cap)``: every request (cached or not,
    n completions counting n) is counted, and the one that would pass ``cap`` is refused before it
    reaches a model. Raises DSPyMethodError (one line) when the body raises, when any usage cap
    (ours or an enclosing one) refused a request, or when no LM request succeeded.
    """
    guard = Block(f"{name} cap", Limits(max_calls=cap))
    observer = _LMObserver()
    log = io.StringIO()
    failure: BaseException | None = None
    callbacks = [*(dspy.settings.get("callbacks") or []), observer]
    try:
        with (
            activate(guard),
            dspy.context(lm=task_lm, callbacks=callbacks),
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            yield guard, log
    except Exception as exc:  # every optimizer failure becomes one table-row line
        failure = exc
    usage = guard.usage
    if observer.refused:
        raise DSPyMethodError(
            f"{name}: stopped by a usage cap ({one_line(observer.first_refusal, 120)}) after {usage.calls} "
            f"LM calls, {planned} planned; {observer.refused} request(s) refused, the run is void"
        ) from failure
    if failure is not None:
        raise DSPyMethodError(f"{name} failed: {one_line(failure, 300)}") from failure
    if observer.failed and observer.failed >= usage.calls - usage.errors:
        raise DSPyMethodError(
            f"{name}: {observer.failed} LM request(s) raised and only {usage.calls - usage.errors} succeeded "
            f"(first: {one_line(observer.first_failure, 150)}); the optimizer swallowed them, the run is void"
        )


def check_inputs(name: str, program: dspy.Module, train: Sequence[Any], dev: Sequence[Any], cap: int) -> int:
    if not isinstance(program, dspy.Module):
        raise TypeError(f"{name}: program must be a dspy.Module, got {type(program).__name__}")
    predictors = len(program.predictors())
    if predictors == 0:
        raise ValueError(f"{name}: the program has no predictor to optimize")
    if not train or not dev:
        raise ValueError(f"{name}: train and dev must both be non-empty (got {len(train)} and {len(dev)})")
    if cap < 1:
        raise ValueError(f"{name}: cap must be a positive number of LM calls, got {cap}")
    return predictors


def tried(pairs: list[tuple[str, float]], limit: int = 4) -> str:
    """``'instruction…' (score)`` for the distinct instructions of a run, best first."""
    best: dict[str, float] = {}
    for text, score in pairs:
        best[text] = max(score, best.get(text, score))
    ranked = sorted(best.items(), key=lambda item: -item[1])
    shown = "; ".join(f"{one_line(text, 90)!r} ({score:.2f})" for text, score in ranked[:limit])
    return shown + (f"; {len(ranked) - limit} more" if len(ranked) > limit else "")


def instructions_of(program: dspy.Module) -> dict[str, str]:
    return {name: pred.signature.instructions for name, pred in program.named_predictors()}


def changed_note(before: dict[str, str], after: dict[str, str]) -> list[str]:
    if before == after:
        return ["the returned program keeps the seed instruction(s): no candidate scored higher"]
    return []


def adapter_note(task_lm: dspy.LM, prompt_lm: dspy.LM, optimizer: str) -> list[str]:
    """What runs under which adapter (the program under cuecard's, the optimizer's own calls under DSPy's)."""
    return [f"the program runs under {type(cuecard.adapter_for(task_lm)).__name__} (its own adapter); "
            f"{optimizer}'s own prompt-model calls run under DSPy's default adapters"]


class WithAdapter(dspy.Module):
    """A program whose calls run on its task model under its adapter, whatever the run's settings say: an
    optimizer sees the wrapped program's predictors as usual, and its own calls keep DSPy's defaults.

    Example:
        >>> wrapped = WithAdapter(dspy.Predict("question -> answer"), lm=None, adapter=None)
        >>> [name for name, _ in wrapped.named_predictors()]
        ['program']
    """

    def __init__(self, program: dspy.Module, *, lm: dspy.LM | None, adapter: dspy.Adapter | None) -> None:
        super().__init__()
        self.program = program
        self._bound = {key: value for key, value in (("lm", lm), ("adapter", adapter)) if value is not None}

    def forward(self, **inputs: Any) -> Any:
        with dspy.context(**self._bound):
            return self.program(**inputs)


def bind(program: dspy.Module, task_lm: dspy.LM) -> WithAdapter:
    """``program`` wrapped to run on ``task_lm`` under cuecard's adapter for it (see :class:`WithAdapter`)."""
    return WithAdapter(program, lm=task_lm, adapter=cuecard.adapter_for(task_lm))


def unbind(compiled: dspy.Module) -> dspy.Module:
    """The optimized program out of its :class:`WithAdapter` (attributes the optimizer set on the wrapper kept)."""
    if not isinstance(compiled, WithAdapter):
        return compiled
    inner = compiled.program
    for key in ("candidate_programs", "trial_logs", "score", "total_calls", "detailed_results", "results_best", "results_latest"):
        if hasattr(compiled, key) and not hasattr(inner, key):
            setattr(inner, key, getattr(compiled, key))
    return inner


def quote(proposals: Sequence[str], seed: dict[str, str], count: int = 3) -> list[str]:
    """Up to ``count`` distinct proposals other than the seed's instructions, in the order made."""
    seen = {text.strip() for text in seed.values()}
    out: list[str] = []
    for text in proposals:
        text = text.strip()
        if text and text not in seen:
            seen.add(text)
            out.append(text)
    return out[:count]


def quote_note(proposals: Sequence[str]) -> str:
    return "proposals quoted: " + ("; ".join(repr(one_line(p, 90)) for p in proposals) if proposals else "none besides the seed")
