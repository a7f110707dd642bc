"""DSPy's GEPA under the harness cap (see ``dspy_common.py``)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import cuecard  # noqa: F401  (the doctests use it)
import dspy
from cuecard.clients.usage import Block

from ..results import one_line
from .common import MethodRun
from .dspy_common import (
    adapter_note,
    bind,
    changed_note,
    check_inputs,
    instructions_of,
    log_notes,
    quote,
    quote_note,
    session,
    unbind,
    usage_note,
)

_GEPA_MINIBATCH = 3  # GEPA's default reflection_minibatch_size
_GEPA_MERGE_SUBSAMPLE = 5  # gepa/proposer/merge.py num_subsample_ids


def _gepa_iteration_cost(*, n_train: int, n_dev: int, predictors: int) -> int:
    """Worst-case LM requests of one GEPA iteration: ``P*(max(2b, min(5, V)) + V) + 2`` (see :func:`_gepa_cost`)."""
    b = min(_GEPA_MINIBATCH, n_train)
    return predictors * (max(2 * b, min(_GEPA_MERGE_SUBSAMPLE, n_dev)) + n_dev) + 2


def _gepa_cost(
    max_metric_calls: int, *, n_train: int, n_dev: int, predictors: int, reflections: int = 2
) -> int:
    """LM requests of ``GEPA(max_metric_calls=M)`` (gepa 0.1.4 under dspy 3.4), with ``reflections``
    prompt-model calls per reflective iteration (2 is the worst case, 1 the usual one).

    A metric call is one program run on one example (P task calls). GEPA counts them
    (``state.total_num_evals``) and checks the budget only before each iteration
    (gepa/core/engine.py ``_should_stop``, ``MaxMetricCallsStopper``), so the last iteration may pass M:

    - the seed program on all of dev: V metric calls;
    - a reflective iteration: the parent on b=min(3, N) train examples, one reflection call (the
      ``round_robin`` selector updates one predictor per iteration), the child on the same b, and the
      child on all of dev if it improved: ``<= 2b + V`` metric calls; a failed reflection is retried
      once (reflective_mutation.py ``_propose_texts_batch_safe``): ``<= 2`` reflection calls;
    - a merge iteration: ``<= min(5, V) + V`` metric calls, no prompt-model call.

    Every reflective iteration spends at least b metric calls, so at most ``ceil((M-V)/b)`` of them.
    Total: ``P*(M - 1 + max(2b, min(5, V)) + V) + reflections*ceil((M-V)/b)`` (``P*V`` if M <= V).

    Example:
        >>> _gepa_cost(31, n_train=10, n_dev=8, predictors=1), _gepa_cost(31, n_train=10, n_dev=8, predictors=1, reflections=1)
        (60, 52)
    """
    b = min(_GEPA_MINIBATCH, n_train)
    if max_metric_calls <= n_dev:
        return predictors * n_dev
    metric_calls = max_metric_calls - 1 + max(2 * b, min(_GEPA_MERGE_SUBSAMPLE, n_dev)) + n_dev
    iterations = math.ceil((max_metric_calls - n_dev) / b)
    return predictors * metric_calls + reflections * iterations


def _plan_gepa(cap: int, n_train: int, n_dev: int, predictors: int) -> tuple[int, int]:
    """(max_metric_calls, planned calls).

    M is the largest budget that fits the cap when each reflection succeeds at once (1 prompt-model
    call per iteration); the rare retry is covered by the call-budget stopper that :func:`run_gepa`
    adds, which starts no iteration whose worst case would pass the cap. Planned is therefore
    ``min(cap, worst case of M)``. The seed evaluation and one worst-case iteration must fit.

    Example:
        >>> _plan_gepa(60, n_train=10, n_dev=8, predictors=1), _plan_gepa(150, n_train=10, n_dev=8, predictors=1)
        ((37, 60), (104, 150))
    """
    sizes = dict(n_train=n_train, n_dev=n_dev, predictors=predictors)
    need = predictors * n_dev + _gepa_iteration_cost(**sizes)
    if need > cap:
        raise ValueError(
            f"GEPA: cap of {cap} LM calls is too small; the seed evaluation on {n_dev} dev examples and one "
            f"reflective iteration may need {need}"
        )
    budget = n_dev + 1
    while _gepa_cost(budget + 1, reflections=1, **sizes) <= cap:
        budget += 1
    return budget, min(cap, _gepa_cost(budget, **sizes))


class _CallBudgetStopper:
    """A GEPA stop condition (gepa's ``StopperProtocol``): stop before an iteration whose worst case
    (:func:`_gepa_iteration_cost`) would pass the cap, counting the LM requests really made."""

    def __init__(self, block: Block, cap: int, reserve: int) -> None:
        self.block, self.cap, self.reserve = block, cap, reserve
        self.fired = False

    def __call__(self, gepa_state: Any) -> bool:
        if self.cap - self.block.usage.calls < self.reserve:
            self.fired = True
        return self.fired


def _field_text(value: Any, limit: int = 160) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def feedback_metric(metric: Callable[..., bool | float]) -> Callable[..., dspy.Prediction]:
    """Wrap a plain metric into GEPA's feedback metric: the score plus a line naming gold and answer.

    Example:
        >>> m = feedback_metric(cuecard.metrics.exact_match("sentiment"))
        >>> gold = dspy.Example(review="Great.", sentiment="positive").with_inputs("review")
        >>> m(gold, dspy.Prediction(sentiment="The review is negative.")).feedback
        "Wrong (score 0): the expected sentiment is 'positive', but the answer was 'The review is negative.'."
    """

    def gepa_metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> dspy.Prediction:
        raw = metric(gold, pred, trace)
        try:
            score = float(raw)
        except (TypeError, ValueError):
            score = 0.0
        labels = list(gold.labels().keys()) if hasattr(gold, "labels") else []
        expected = ", ".join(f"the expected {k} is {_field_text(gold.get(k))!r}" for k in labels)
        getter = getattr(pred, "get", None)
        got = ", ".join(
            f"{_field_text(getter(k) if callable(getter) else getattr(pred, k, None))!r}" for k in labels
        )
        if score >= 1.0:
            feedback = f"Correct: {expected}, and the answer was {got}."
        else:
            feedback = f"Wrong (score {score:g}): {expected}, but the answer was {got}."
        return dspy.Prediction(score=score, feedback=feedback)

    gepa_metric.__name__ = f"gepa_feedback_{getattr(metric, '__name__', 'metric')}"
    return gepa_metric


def run_gepa(
    program: dspy.Module,
    *,
    train: Sequence[dspy.Example],
    dev: Sequence[dspy.Example],
    metric: Callable[..., bool | float],
    task_lm: dspy.LM,
    prompt_lm: dspy.LM,
    cap: int,
    seed: int,
) -> tuple[dspy.Module, MethodRun]:
    """Run ``dspy.GEPA`` with ``max_metric_calls`` from the cap and ``prompt_lm`` as ``reflection_lm``.

    Reflection minibatches come from ``train``, Pareto scores from ``dev``. The metric is wrapped by
    :func:`feedback_metric`. GEPA's reflection runs as GEPA's users run it (its default proposer and
    adapters); only the program runs under cuecard's adapter (see ``dspy_common.py``).

    Raises:
        ValueError: the cap is too small for one reflective iteration.
        DSPyMethodError: the run failed or hit the cap (one-line message).

    Example:
        >>> compiled, run = run_gepa(program, train=train, dev=dev, metric=metric,
        ...                          task_lm=lm, prompt_lm=lm, cap=60, seed=0)  # doctest: +SKIP
        >>> run.knobs["max_metric_calls"]  # doctest: +SKIP
        37
    """
    predictors = check_inputs("GEPA", program, train, dev, cap)
    max_metric_calls, planned = _plan_gepa(cap, len(train), len(dev), predictors)
    minibatch = min(_GEPA_MINIBATCH, len(train))
    reserve = _gepa_iteration_cost(n_train=len(train), n_dev=len(dev), predictors=predictors)
    knobs = {
        "max_metric_calls": max_metric_calls,
        "reflection_minibatch_size": minibatch,
        "candidate_selection_strategy": "pareto",
        "component_selector": "round_robin",
        "use_merge": True,
        "max_merge_invocations": 5,
        "skip_perfect_score": True,
        "instruction_proposer": "GEPA's default",
        "stop_callbacks": f"call budget: no iteration starts with fewer than {reserve} of the {cap} calls left",
        "num_threads": 1,
        "seed": seed,
    }
    notes = [
        f"cost: P*(M-1+max(2b,min(5,V))+V) + r*ceil((M-V)/b) with M={max_metric_calls}, b={minibatch}, "
        f"V={len(dev)}: M fits the cap with r=1 reflection call per iteration; the worst case (r=2, a retried "
        f"reflection) is cut by a stop callback on the calls really made, so planned = {planned}",
        "metric wrapped with textual feedback (gold vs answer) for GEPA's reflection",
    ]
    if minibatch < _GEPA_MINIBATCH:
        notes.append(f"reflection_minibatch_size clamped to {minibatch} (train has {len(train)} examples)")
    notes += adapter_note(task_lm, prompt_lm, "GEPA")
    before = instructions_of(program)
    gepa_args: dict[str, Any] = dict(
        metric=feedback_metric(metric),
        max_metric_calls=max_metric_calls,
        reflection_minibatch_size=minibatch,
        candidate_selection_strategy="pareto",
        reflection_lm=prompt_lm,
        skip_perfect_score=True,
        component_selector="round_robin",
        use_merge=True,
        max_merge_invocations=5,
        num_threads=1,
        track_stats=True,
        seed=seed,
    )
    with session("GEPA", cap, planned, task_lm) as (guard, log):
        stopper = _CallBudgetStopper(guard, cap, reserve)
        optimizer = dspy.GEPA(**gepa_args, gepa_kwargs={"stop_callbacks": [stopper]})
        compiled = unbind(optimizer.compile(bind(program.deepcopy(), task_lm), trainset=list(train), valset=list(dev)))
    captured = log.getvalue()
    notes.append(usage_note(guard.usage))
    results = getattr(compiled, "detailed_results", None)
    if results is not None:
        scores = ", ".join(f"{s:.2f}" for s in results.val_aggregate_scores)
        notes.append(
            f"GEPA used {results.total_metric_calls} metric calls of {max_metric_calls}; "
            f"{len(results.candidates)} candidate(s) kept, dev scores [{scores}], best #{results.best_idx}"
        )
    failed, retried = captured.count("Batched reflection failed"), captured.count("Per-task reflection failed")
    if failed:
        notes.append(f"{failed} reflection(s) raised and were retried once; {retried} retry(ies) failed too (iteration skipped)")
    if stopper.fired:
        notes.append(f"GEPA stopped by the call-budget stop callback at {guard.usage.calls} of {cap} calls")
    iterations = len(re.findall(r"Iteration \d+: Selected program", captured))
    if iterations:
        proposals = re.findall(r"Iteration \d+: Proposed new text for [^:]+: (.*)", captured)
        accepted = len(re.findall(r"Iteration \d+: Accepted candidate", captured))
        line = f"GEPA ran {iterations} reflective iteration(s): {len(proposals)} proposal(s), {accepted} accepted"
        if proposals:
            line += "; proposals begin: " + "; ".join(repr(one_line(p, 70)) for p in proposals[:3])
        notes.append(line)
    if "All subsample scores perfect" in captured:
        notes.append("GEPA skipped reflection on minibatches the parent already solved (skip_perfect_score)")
    quoted = quote(re.findall(r"Iteration \d+: Proposed new text for [^:]+: (.*)", captured), before)
    notes.append(quote_note(quoted))
    notes += changed_note(before, instructions_of(compiled))
    notes += log_notes(captured, "GEPA")
    return compiled, MethodRun(knobs=knobs, planned_calls=planned, notes=notes, proposals=quoted)
