"""The behavioural metric check: a run's stored scores are reused only if the metric still gives them.

A run's identity fingerprints the metric's code, which cannot see what the code reads (module
globals, files, libraries). So when a compile opens a run that already holds scores, a sample of
stored predictions (up to :data:`SAMPLE`, spread over the candidates) is scored again with the
metric it was given, with no LM call; a score that differs means the metric's behaviour changed,
and the run is refused with :class:`~cuecard.errors.RunConfigMismatch` naming the metric and one
example. ``metric_version=`` names the metric in the identity; the check runs all the same.

A metric that calls a model (a judge, as BPO's) cannot be re-scored without spending: it is not
checked (its model is part of the identity).

Example:
    >>> sample_stored([{0: "a", 1: "b"}, {3: "c"}], 2)
    [(0, 0), (1, 3)]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import dspy

from ..clients.usage import Block, activate
from ..errors import RunConfigMismatch
from ..metrics import score_to_float

logger = logging.getLogger(__name__)

SAMPLE = 8
"""Stored predictions scored again when a run that holds scores is opened."""


class _ModelCalled(Exception):
    """The metric asked a model for something: it cannot be checked without spending."""


class _NoCalls(Block):
    """An open block that refuses every LM call made through cuecard's LMs."""

    def check(self, upcoming: int = 1) -> None:
        raise _ModelCalled


class _NoModel:
    """Stands for ``dspy.settings.lm`` during the check: a metric that runs a DSPy module is not checked."""

    model = "none"
    kwargs: dict[str, Any] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _ModelCalled

    acall = forward = aforward = __call__


def sample_stored(per_candidate: Sequence[Mapping[int, Any]], limit: int = SAMPLE) -> list[tuple[int, int]]:
    """``(candidate position, example index)`` pairs, round-robin over the candidates in order, each
    walked by example index: the first ``limit``."""
    queues = [sorted(stored) for stored in per_candidate]
    chosen: list[tuple[int, int]] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(queue) for queue in queues):
        for position, queue in enumerate(queues):
            if depth < len(queue) and len(chosen) < limit:
                chosen.append((position, queue[depth]))
        depth += 1
    return chosen


def metric_calls_a_model(engine: Any) -> bool:
    """Whether the engine's metric is known to call a model: one evaluation takes more LM requests than
    the program has predictors (a method declared its judge), or the metric holds an LM."""
    from ..identity import _describe
    from ..program import predictors

    program = engine.scorer.program
    if program is not None and engine.calls_per_example > len(predictors(program)):
        return True
    return _holds_lm(_describe(engine.scorer.metric))


def _holds_lm(described: Any) -> bool:
    if isinstance(described, dict):
        return "lm" in described or any(_holds_lm(value) for value in described.values())
    if isinstance(described, list):
        return any(_holds_lm(value) for value in described)
    return False


def check_stored_scores(engine: Any, limit: int = SAMPLE) -> None:
    """Score again up to ``limit`` stored predictions of the engine's run with its metric; refuse the run
    when one differs. Costs no LM call; a metric that needs one is not checked."""
    from .study import CANDIDATE, DETAIL, SCORE, StoredScore

    metric = engine.scorer.metric
    if metric is None or engine.scorer.objective != "metric":
        return
    trials = sorted((t for t in engine._trials.values() if CANDIDATE in t.attrs), key=lambda t: t.number)
    per_candidate: list[dict[int, StoredScore]] = []
    for trial in trials:
        found: dict[int, StoredScore] = {}
        for name, value in trial.attrs.items():
            if name.startswith(SCORE) and DETAIL + name[len(SCORE):] in trial.attrs:
                index = int(name[len(SCORE):])
                stored = StoredScore(score=float(value), **trial.attrs[DETAIL + str(index)])
                if stored.rebuilt() is not None and index < len(engine.examples):
                    found[index] = stored
        per_candidate.append(found)
    chosen = sample_stored(per_candidate, limit)
    if not chosen or metric_calls_a_model(engine):
        return
    for position, index in chosen:
        stored = per_candidate[position][index]
        try:
            now: float | str = _score_again(metric, engine.examples[index], stored.rebuilt() or {})
        except _ModelCalled:
            logger.info("run %s: the metric calls a model; its stored scores are not re-scored", engine.name)
            return
        except Exception as exc:
            now = f"raises {type(exc).__name__}: {str(exc)[:80]}"
        if isinstance(now, float) and abs(now - stored.score) <= 1e-9:
            continue
        name = getattr(metric, "__qualname__", None) or getattr(metric, "__name__", None) or type(metric).__name__
        shown = f"{now:g}" if isinstance(now, float) else now
        raise RunConfigMismatch(
            f"Run {engine.name!r}: the metric {name!r} no longer gives the scores stored in it (dev example {index}, "
            f"candidate {trials[position].number}: stored {stored.score:g}, now {shown}); its behaviour changed, so "
            "no stored score is reused. Start a new run: --new-run (Python: fresh=True) or another --run-name"
        )


def _score_again(metric: Any, example: dspy.Example, fields: dict[str, Any]) -> float:
    with activate(_NoCalls("metric check")), dspy.context(lm=_NoModel()):
        return score_to_float(metric(example, dspy.Prediction(**fields), None))
