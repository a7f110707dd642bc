"""DSPy 3.4's own optimizers (COPRO, MIPROv2, GEPA) on a cuecard program, under a cap on LM calls.

The benchmark harness compares cuecard's teleprompters with the optimizers that ship with DSPy. This
module runs DSPy's code itself (``dspy.COPRO``, ``dspy.MIPROv2``, ``dspy.GEPA``); it only chooses
their knobs so that a run stays under ``cap`` LM requests, and wraps the run:

- the task model runs under cuecard's adapter (``cuecard.adapter_for(task_lm)``, the plain adapter
  for a local model), one thread;
- the prompt model goes in through each optimizer's own parameter (COPRO ``prompt_model``, MIPROv2
  ``prompt_model``/``task_model``, GEPA ``reflection_lm``);
- the knobs come from a cost formula read off the optimizer's source (each ``_*_cost`` docstring);
  the formula is a worst case, so the run stays under it (GEPA: with a stop callback on the calls
  really made), and a cap too small for the smallest sensible setting raises ``ValueError`` before
  any call;
- a guard block (``Limits(max_calls=cap)``) counts every request, cached or not, and refuses the one
  that would pass ``cap``; a refused request (by this guard or an enclosing block) voids the run
  with :class:`DSPyMethodError`, so a wrong formula can never silently exceed the cap;
- the optimizers' prints, progress bars and logs are captured; warnings worth knowing end up in
  ``DSPyRun.notes``; any failure is re-raised as :class:`DSPyMethodError` with a one-line message.

Every candidate is scored on ``dev`` by all three (COPRO's ``trainset``, MIPROv2's and GEPA's
``valset``), as cuecard's teleprompters do; ``train`` feeds MIPROv2's bootstrapping and data summary
and GEPA's reflection minibatches.

Costs count one request per generated completion: a DSPy call with ``n=k`` runs ``k`` engine requests
(dspy/clients/execution.py ``execute``), and cuecard's meter counts it as ``k`` calls too.
"Calls per example" is the number of predictors (each predictor runs once per example).

Example:
    >>> import dspy, cuecard
    >>> from cuecard.datasets import reviews
    >>> data = reviews()
    >>> program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify the sentiment."))
    >>> lm = cuecard.LM("local")
    >>> compiled, run = DSPY_METHODS["copro"](
    ...     program, train=data[:10], dev=data[10:18], metric=cuecard.metrics.exact_match("sentiment"),
    ...     task_lm=lm, prompt_lm=lm, cap=60, seed=0)  # doctest: +SKIP
    >>> run.knobs["breadth"], run.planned_calls <= 60  # doctest: +SKIP
    (6, True)
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cuecard
import dspy
import pydantic
from cuecard.adapter import DEFAULT_MULTILINE_FIELDS, PlainAdapter
from cuecard.errors import BudgetExhausted
from cuecard.usage import Block, Limits, Usage, activate
from dspy.utils.callback import BaseCallback

from .results import one_line

__all__ = ["DSPY_METHODS", "DSPyMethodError", "DSPyRun", "feedback_metric", "run_copro", "run_gepa", "run_mipro"]


class DSPyRun(pydantic.BaseModel):
    """What one optimizer run gives back (the optimized program is returned next to it).

    Example:
        >>> DSPyRun(knobs={"breadth": 5, "depth": 1}, planned_calls=54, notes=[]).planned_calls
        54
    """

    knobs: dict[str, Any]
    """The optimizer settings actually used."""
    planned_calls: int
    """The LM requests the knobs may cost at most (the cost formula), never more than the cap."""
    notes: list[str]
    """What a reader of the benchmark table must know: clamped knobs, worked-around bugs, warnings."""


class DSPyMethodError(RuntimeError):
    """An optimizer run that failed or was stopped; the message is one line, fit for a table row.

    Example:
        >>> str(DSPyMethodError("GEPA failed: boom"))
        'GEPA failed: boom'
    """


# ---------------------------------------------------------------------------------------------
# Helpers: the guard, captured output, notes
# ---------------------------------------------------------------------------------------------


_NOTABLE = re.compile(r"\b(ERROR|WARNING|Error|Exception|failed|Failed|cancelled)\b")
_NOISE = re.compile(r"ExperimentalWarning|warnings\.warn|Traceback|^File |^\s*$")
_PROGRESS = re.compile(r"^.*\|\s*\d+/\d+ \[[^\]]*\]")  # a tqdm bar written before the message
_TIMESTAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ")


def _log_notes(log: str, name: str, limit: int = 3) -> list[str]:
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


def _usage_note(usage: Usage) -> str:
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
def _session(name: str, cap: int, planned: int, task_lm: dspy.LM) -> Iterator[tuple[Block, io.StringIO]]:
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
            dspy.context(lm=task_lm, adapter=cuecard.adapter_for(task_lm), callbacks=callbacks),
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


def _check_inputs(name: str, program: dspy.Module, train: Sequence[Any], dev: Sequence[Any], cap: int) -> int:
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


def _tried(pairs: list[tuple[str, float]], limit: int = 4) -> str:
    """``'instruction…' (score)`` for the distinct instructions of a run, best first."""
    best: dict[str, float] = {}
    for text, score in pairs:
        best[text] = max(score, best.get(text, score))
    ranked = sorted(best.items(), key=lambda item: -item[1])
    shown = "; ".join(f"{one_line(text, 90)!r} ({score:.2f})" for text, score in ranked[:limit])
    return shown + (f"; {len(ranked) - limit} more" if len(ranked) > limit else "")


def _instructions(program: dspy.Module) -> dict[str, str]:
    return {name: pred.signature.instructions for name, pred in program.named_predictors()}


def _changed_note(before: dict[str, str], after: dict[str, str]) -> list[str]:
    if before == after:
        return ["the returned program keeps the seed instruction(s): no candidate scored higher"]
    return []


def _adapter_note(task_lm: dspy.LM, prompt_lm: dspy.LM, optimizer: str) -> list[str]:
    task, prompt = cuecard.adapter_for(task_lm), cuecard.adapter_for(prompt_lm)
    if type(task) is type(prompt):
        return []
    return [
        f"{optimizer} makes its prompt-model calls under the task model's adapter ({type(task).__name__}); "
        f"the prompt model would normally get {type(prompt).__name__}"
    ]


# ---------------------------------------------------------------------------------------------
# COPRO
# ---------------------------------------------------------------------------------------------

_COPRO_MAX_BREADTH = 10  # COPRO's default breadth
_COPRO_DEPTHS = ((3, 5), (2, 4), (1, 2))  # (depth, smallest breadth worth that depth); 3 is COPRO's default


def _copro_cost(breadth: int, depth: int, n_eval: int, predictors: int) -> int:
    """Worst-case LM requests of ``COPRO(breadth, depth).compile(program, trainset=<n_eval examples>)``.

    From dspy/teleprompt/copro_optimizer.py (``compile``), with B=breadth, D=depth, V=n_eval, P=predictors:

    - proposals: per predictor one ``Predict(BasicGenerateInstruction, n=B-1)`` call, then at each of
      the first D-1 depths one ``Predict(GenerateInstructionGivenAttempts, n=B)`` call:
      ``P*(B-1) + (D-1)*P*B`` completions (cuecard's meter sees ``P + (D-1)*P`` calls);
    - evaluations: one predictor: B candidates per depth (the seed instruction joins the first B-1),
      ``B*D`` evaluations; several predictors: at depth d every candidate proposed so far is
      re-evaluated, ``P*B*D*(D+1)/2`` evaluations; each evaluation runs the program on the V
      examples, P calls each.

    Example:
        >>> _copro_cost(breadth=5, depth=1, n_eval=8, predictors=1)
        44
    """
    prompt = predictors * (breadth - 1) + (depth - 1) * predictors * breadth
    evaluations = breadth * depth if predictors == 1 else predictors * breadth * depth * (depth + 1) // 2
    return prompt + evaluations * n_eval * predictors


def _plan_copro(cap: int, n_eval: int, predictors: int) -> tuple[int, int, int]:
    """(breadth, depth, planned calls): the deepest search whose breadth is worth it, then the widest.

    Depth 3 (COPRO's default) needs breadth >= 5, depth 2 breadth >= 4, else depth 1 (no refinement
    round, only the first batch of proposals) with breadth >= 2 (COPRO refuses breadth <= 1);
    breadth at most 10 (COPRO's default).

    Example:
        >>> _plan_copro(60, n_eval=8, predictors=1), _plan_copro(150, n_eval=8, predictors=1)
        ((6, 1, 53), (5, 3, 134))
    """
    for depth, min_breadth in _COPRO_DEPTHS:
        fits = [b for b in range(2, _COPRO_MAX_BREADTH + 1) if _copro_cost(b, depth, n_eval, predictors) <= cap]
        if fits and max(fits) >= min_breadth:
            breadth = max(fits)
            return breadth, depth, _copro_cost(breadth, depth, n_eval, predictors)
    smallest = _copro_cost(2, 1, n_eval, predictors)
    raise ValueError(
        f"COPRO: cap of {cap} LM calls is too small; breadth 2, depth 1 on {n_eval} dev examples needs {smallest}"
    )


def _prefixes(program: dspy.Module) -> dict[str, str]:
    """The prefix of each predictor's last field: the one COPRO rewrites along with the instruction."""
    out = {}
    for name, pred in program.named_predictors():
        *_, last = pred.signature.fields.values()
        out[name] = str((last.json_schema_extra or {}).get("prefix", ""))
    return out


def _copro_result_notes(compiled: dspy.Module, seed_instructions: dict[str, str], seed_prefixes: dict[str, str]) -> list[str]:
    notes = []
    candidates = getattr(compiled, "candidate_programs", None) or []
    if candidates:
        best = candidates[0]["score"]
        seed_scores = [
            c["score"] for c in candidates
            if c.get("depth") == 0 and c.get("instruction") in {s.strip('"').strip() for s in seed_instructions.values()}
        ]
        line = f"COPRO evaluated {getattr(compiled, 'total_calls', '?')} candidates; best score {best:.1f}"
        if seed_scores:
            line += f", seed {max(seed_scores):.1f}"
            if best <= max(seed_scores) and _instructions(compiled) != seed_instructions:
                line += (" (a proposal tied with the seed and won: COPRO sorts stably and appends the seed after"
                         " the proposals, copro_optimizer.py compile)")
        notes.append(line)
        notes.append(
            "COPRO candidates (dev score): " + _tried([(c["instruction"], c["score"]) for c in candidates])
        )
    if _prefixes(compiled) != seed_prefixes:
        changed = "; ".join(f"{k}: {one_line(v, 80)!r}" for k, v in _prefixes(compiled).items())
        notes.append(f"COPRO also rewrote the output field's prefix ({changed})")
    return notes


def run_copro(
    program: dspy.Module,
    *,
    train: Sequence[dspy.Example],
    dev: Sequence[dspy.Example],
    metric: Callable[..., bool | float],
    task_lm: dspy.LM,
    prompt_lm: dspy.LM,
    cap: int,
    seed: int,
) -> tuple[dspy.Module, DSPyRun]:
    """Run ``dspy.COPRO`` (breadth and depth from the cap), scoring every candidate on ``dev``.

    COPRO's proposer never sees examples, only instructions and scores, so ``train`` is not used.
    COPRO has no seed; ``seed`` is only recorded (its proposals are sampled at temperature 1.4).

    Raises:
        ValueError: the cap is too small for breadth 2, depth 1.
        DSPyMethodError: the run failed or hit the cap (one-line message).

    Example:
        >>> compiled, run = run_copro(program, train=train, dev=dev, metric=metric,
        ...                           task_lm=lm, prompt_lm=lm, cap=60, seed=0)  # doctest: +SKIP
        >>> run.knobs["depth"]  # doctest: +SKIP
        1
    """
    predictors = _check_inputs("COPRO", program, train, dev, cap)
    breadth, depth, planned = _plan_copro(cap, len(dev), predictors)
    knobs = {
        "breadth": breadth,
        "depth": depth,
        "init_temperature": 1.4,
        "scored_on": f"dev ({len(dev)} examples)",
        "num_threads": 1,
        "seed": seed,
    }
    notes = [
        f"cost: proposals P*(B-1)+(D-1)*P*B + evaluations {'B*D' if predictors == 1 else 'P*B*D(D+1)/2'} "
        f"x {len(dev)} dev x {predictors} call(s)/example = {planned} (n>1 proposals counted per completion)",
        "COPRO has no seed parameter: its proposals are sampled at temperature 1.4 from the prompt "
        "model's own random state (DSPy's cache answers repeats)",
    ]
    if depth < 3:
        notes.append(f"depth clamped to {depth} (COPRO default 3) and breadth to {breadth} (default 10) by the cap")
    notes += _adapter_note(task_lm, prompt_lm, "COPRO")
    before = _instructions(program)
    optimizer = dspy.COPRO(
        prompt_model=prompt_lm, metric=metric, breadth=breadth, depth=depth, init_temperature=1.4
    )
    with _session("COPRO", cap, planned, task_lm) as (guard, log):
        compiled = optimizer.compile(
            program.deepcopy(), trainset=list(dev), eval_kwargs={"num_threads": 1, "display_progress": False}
        )
    notes.append(_usage_note(guard.usage))
    notes += _copro_result_notes(compiled, before, _prefixes(program))
    notes += _changed_note(before, _instructions(compiled))
    notes += _log_notes(log.getvalue(), "COPRO")
    return compiled, DSPyRun(knobs=knobs, planned_calls=planned, notes=notes)


# ---------------------------------------------------------------------------------------------
# MIPROv2
# ---------------------------------------------------------------------------------------------

_MIPRO_MAX_CANDIDATES = 18  # MIPROv2's "heavy" auto setting
_MIPRO_MINIBATCH_SIZE = 35  # MIPROv2's default; minibatching only when dev is larger
_MIPRO_FULL_EVAL_STEPS = 5  # MIPROv2's default
_MIPRO_VIEW_DATA_BATCH = 10  # MIPROv2's default view_data_batch_size


def _mipro_trials(num_candidates: int, predictors: int) -> int:
    """MIPROv2's own rule for zero-shot runs (``_set_num_trials_from_num_candidates``)."""
    return int(max(2 * predictors * math.log2(num_candidates), 1.5 * num_candidates))


def _mipro_full_evals(num_trials: int, steps: int) -> int:
    """How many full evaluations the minibatch schedule of ``_optimize_prompt_parameters`` runs.

    Optuna numbers trials in order, and each full evaluation is added as a trial (``study.add_trial``)
    inside the objective, so the objective's ``trial_num`` skips a number after each one.
    """
    adjusted = num_trials + num_trials // steps + 1 + (1 if num_trials % steps else 0)
    number, full = 1, 0  # trial 0 is the default program, added before optimize()
    for _ in range(num_trials):
        trial_num = number + 1
        number += 1
        if trial_num % (steps + 1) == 0 or trial_num == adjusted - 1:
            full += 1
            number += 1
    return full


def _mipro_cost(
    num_candidates: int,
    num_trials: int,
    program_aware: bool,
    *,
    n_train: int,
    n_dev: int,
    predictors: int,
    minibatch: bool,
) -> int:
    """Worst-case LM requests of a zero-shot ``MIPROv2.compile`` (auto=None), read off dspy 3.4.

    With N=len(train), V=len(dev), P=predictors, C=num_candidates, T=num_trials:

    - step 1, bootstrapping (teleprompt/utils.py ``create_n_fewshot_demo_sets``): even with zero demos
      MIPROv2 builds C demo sets for the proposer: set 1 is zero-shot (free); the other C-1 each run
      ``BootstrapFewShot`` over the shuffled train set until 1-3 demos pass the metric, at most N
      examples: ``<= (C-1)*N*P`` (with labeled demos 0 the "labels only" set becomes another
      bootstrapped set: the ``seed == -2`` branch needs ``max_labeled_demos > 0``);
    - step 2, data summary (propose/dataset_summary_generator.py): 1 call on the first 10 examples,
      1 more per further batch of 10 (at most 9), 1 summary: ``2 + min(ceil(N/10)-1, 9)``;
    - step 2, proposals (propose/grounded_proposer.py): C per predictor, each 1 call, plus 2
      (``describe_program``, ``describe_module``) when program-aware: ``P*C*(3 or 1)``; the first is
      then overwritten by the seed instruction (mipro_optimizer_v2.py ``instruction_candidates[i][0] =``);
    - step 3: the default program on all of dev, then T trials; without minibatch each trial is a full
      dev evaluation: ``P*V*(T+1)``; with minibatch (dev > 35): ``P*(V + 35*T + F*V)``, F full
      evaluations (:func:`_mipro_full_evals`).

    Example:
        >>> _mipro_cost(2, 3, True, n_train=10, n_dev=8, predictors=1, minibatch=False)
        50
    """
    bootstrap = (num_candidates - 1) * n_train * predictors
    summary = 2 + min(max(math.ceil(n_train / _MIPRO_VIEW_DATA_BATCH) - 1, 0), 9)
    proposals = predictors * num_candidates * (3 if program_aware else 1)
    if minibatch:
        full = _mipro_full_evals(num_trials, _MIPRO_FULL_EVAL_STEPS)
        evaluations = predictors * (n_dev + _MIPRO_MINIBATCH_SIZE * num_trials + full * n_dev)
    else:
        evaluations = predictors * n_dev * (num_trials + 1)
    return bootstrap + summary + proposals + evaluations


def _plan_mipro(cap: int, n_train: int, n_dev: int, predictors: int) -> dict[str, Any]:
    """The most instruction candidates the cap affords, with MIPROv2's own trial count for them.

    For C from 18 (MIPROv2's "heavy") down to 2: T = MIPROv2's rule for C; program-aware proposer if
    it fits, else without. If even C=2 does not fit with its rule (3 trials for one predictor),
    fewer trials, down to 1. Minibatching only when dev has more than 35 examples (MIPROv2's
    minibatch size); otherwise every trial is a full dev evaluation.

    Example:
        >>> plan = _plan_mipro(150, n_train=10, n_dev=8, predictors=1)
        >>> plan["num_candidates"], plan["num_trials"], plan["planned"]
        (6, 9, 150)
    """
    minibatch = n_dev > _MIPRO_MINIBATCH_SIZE
    common = dict(n_train=n_train, n_dev=n_dev, predictors=predictors, minibatch=minibatch)

    def plan(candidates: int, trials: int, aware: bool, clamped: bool) -> dict[str, Any]:
        return dict(
            num_candidates=candidates, num_trials=trials, program_aware=aware, minibatch=minibatch,
            trials_clamped=clamped, planned=_mipro_cost(candidates, trials, aware, **common),
        )

    for candidates in range(_MIPRO_MAX_CANDIDATES, 1, -1):
        trials = _mipro_trials(candidates, predictors)
        for aware in (True, False):
            if _mipro_cost(candidates, trials, aware, **common) <= cap:
                return plan(candidates, trials, aware, False)
    for trials in range(_mipro_trials(2, predictors) - 1, 0, -1):
        for aware in (True, False):
            if _mipro_cost(2, trials, aware, **common) <= cap:
                return plan(2, trials, aware, True)
    smallest = _mipro_cost(2, 1, False, **common)
    raise ValueError(
        f"MIPROv2: cap of {cap} LM calls is too small; 2 candidates, 1 trial on {n_train} train / "
        f"{n_dev} dev examples may need {smallest}"
    )


def _mipro_result_notes(compiled: dspy.Module, seed_instructions: dict[str, str]) -> list[str]:
    notes = []
    logs = getattr(compiled, "trial_logs", None) or {}
    seed_score = logs.get(1, {}).get("full_eval_score")
    if seed_score is not None:
        notes.append(f"MIPROv2 dev score: seed {seed_score:.1f}, returned program {getattr(compiled, 'score', float('nan')):.1f}")
    pairs = []
    for entry in getattr(compiled, "candidate_programs", None) or []:
        text = " | ".join(p.signature.instructions for p in entry["program"].predictors())
        pairs.append((text, entry["score"]))
    if pairs:
        notes.append(f"MIPROv2 instructions fully evaluated (dev score): {_tried(pairs)}")
    return notes


def run_mipro(
    program: dspy.Module,
    *,
    train: Sequence[dspy.Example],
    dev: Sequence[dspy.Example],
    metric: Callable[..., bool | float],
    task_lm: dspy.LM,
    prompt_lm: dspy.LM,
    cap: int,
    seed: int,
) -> tuple[dspy.Module, DSPyRun]:
    """Run ``dspy.MIPROv2`` for instructions only (0 bootstrapped, 0 labeled demos, auto=None).

    ``train`` feeds bootstrapping (demos shown to the proposer) and the data summary; every trial is
    scored on ``dev``. ``seed`` goes to both ``MIPROv2(seed=)`` and ``compile(seed=)``: compile does
    ``seed = seed or self.seed`` (mipro_optimizer_v2.py), which alone would turn 0 into 9.

    Raises:
        ValueError: the cap is too small for 2 candidates and 1 trial.
        DSPyMethodError: the run failed or hit the cap (one-line message).

    Example:
        >>> compiled, run = run_mipro(program, train=train, dev=dev, metric=metric,
        ...                           task_lm=lm, prompt_lm=lm, cap=150, seed=0)  # doctest: +SKIP
        >>> run.knobs["num_candidates"], run.knobs["num_trials"]  # doctest: +SKIP
        (6, 9)
    """
    predictors = _check_inputs("MIPROv2", program, train, dev, cap)
    plan = _plan_mipro(cap, len(train), len(dev), predictors)
    planned = plan["planned"]
    knobs = {
        "auto": None,
        "num_candidates": plan["num_candidates"],
        "num_trials": plan["num_trials"],
        "max_bootstrapped_demos": 0,
        "max_labeled_demos": 0,
        "minibatch": plan["minibatch"],
        "minibatch_size": _MIPRO_MINIBATCH_SIZE if plan["minibatch"] else None,
        "minibatch_full_eval_steps": _MIPRO_FULL_EVAL_STEPS if plan["minibatch"] else None,
        "program_aware_proposer": plan["program_aware"],
        "data_aware_proposer": True,
        "tip_aware_proposer": True,
        "fewshot_aware_proposer": True,
        "view_data_batch_size": _MIPRO_VIEW_DATA_BATCH,
        "init_temperature": 1.0,
        "num_threads": 1,
        "seed": seed,
    }
    notes = [
        f"cost: bootstrap (C-1)*N*P + summary + proposals P*C*{3 if plan['program_aware'] else 1} + "
        f"evaluations = {planned} worst case (bootstrapping stops early once 1-3 demos pass)",
        f"num_trials = MIPROv2's own rule for {plan['num_candidates']} candidates"
        + (" (clamped lower by the cap)" if plan["trials_clamped"] else ""),
        f"{plan['num_candidates'] - 1} proposed instruction(s) + the seed: MIPROv2 generates "
        f"{plan['num_candidates']} per predictor and overwrites the first with the seed instruction",
        "even with 0 demos MIPROv2 bootstraps demo sets on train (task-model calls) to show the proposer",
        f"seed {seed} passed to MIPROv2(seed=) as well, since compile's `seed or self.seed` drops 0",
    ]
    if not plan["program_aware"]:
        notes.append("program-aware proposer off: its 2 extra calls per proposal did not fit the cap")
    if not plan["minibatch"]:
        notes.append(f"minibatch off: dev has {len(dev)} <= {_MIPRO_MINIBATCH_SIZE} examples; each trial is a full dev evaluation")
    notes += _adapter_note(task_lm, prompt_lm, "MIPROv2")
    before = _instructions(program)
    optimizer = dspy.MIPROv2(
        metric=metric,
        prompt_model=prompt_lm,
        task_model=task_lm,
        max_bootstrapped_demos=0,
        max_labeled_demos=0,
        auto=None,
        num_candidates=plan["num_candidates"],
        num_threads=1,
        seed=seed,
        init_temperature=1.0,
        verbose=False,
    )
    try:
        with _session("MIPROv2", cap, planned, task_lm) as (guard, log):
            compiled = optimizer.compile(
                program.deepcopy(),
                trainset=list(train),
                valset=list(dev),
                num_trials=plan["num_trials"],
                seed=seed,
                minibatch=plan["minibatch"],
                minibatch_size=_MIPRO_MINIBATCH_SIZE,
                minibatch_full_eval_steps=_MIPRO_FULL_EVAL_STEPS,
                program_aware_proposer=plan["program_aware"],
                data_aware_proposer=True,
                view_data_batch_size=_MIPRO_VIEW_DATA_BATCH,
                tip_aware_proposer=True,
                fewshot_aware_proposer=True,
            )
    except DSPyMethodError as exc:
        if "No valid program found in param_score_dict" in str(exc):
            raise DSPyMethodError(
                "MIPROv2 failed: a scheduled full evaluation found every tried instruction combination already "
                "fully evaluated (dspy teleprompt/utils.py get_program_with_highest_avg_score raises)"
            ) from exc.__cause__
        raise
    captured = log.getvalue()
    swallowed = captured.count("An exception occurred during evaluation")
    notes.append(_usage_note(guard.usage))
    if swallowed:
        notes.append(f"MIPROv2 swallowed {swallowed} evaluation exception(s) and scored them 0 (teleprompt/utils.py eval_candidate_program)")
    if "Error getting data summary" in captured:
        notes.append("MIPROv2's data summary failed; it proposed without it")
    notes += _mipro_result_notes(compiled, before)
    notes += _changed_note(before, _instructions(compiled))
    notes += _log_notes(captured, "MIPROv2")
    return compiled, DSPyRun(knobs=knobs, planned_calls=planned, notes=notes)


# ---------------------------------------------------------------------------------------------
# GEPA
# ---------------------------------------------------------------------------------------------

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
) -> tuple[dspy.Module, DSPyRun]:
    """Run ``dspy.GEPA`` with ``max_metric_calls`` from the cap and ``prompt_lm`` as ``reflection_lm``.

    Reflection minibatches come from ``train``, Pareto scores from ``dev``. The metric is wrapped by
    :func:`feedback_metric`. For a local prompt model, GEPA's own ``InstructionProposer`` gets
    cuecard's plain adapter (its default JSONAdapter asks for JSON a small model cannot write);
    a remote prompt model keeps GEPA's default.

    Raises:
        ValueError: the cap is too small for one reflective iteration.
        DSPyMethodError: the run failed or hit the cap (one-line message).

    Example:
        >>> compiled, run = run_gepa(program, train=train, dev=dev, metric=metric,
        ...                          task_lm=lm, prompt_lm=lm, cap=60, seed=0)  # doctest: +SKIP
        >>> run.knobs["max_metric_calls"]  # doctest: +SKIP
        37
    """
    from dspy.teleprompt.gepa.instruction_proposal import InstructionProposer

    predictors = _check_inputs("GEPA", program, train, dev, cap)
    max_metric_calls, planned = _plan_gepa(cap, len(train), len(dev), predictors)
    minibatch = min(_GEPA_MINIBATCH, len(train))
    reserve = _gepa_iteration_cost(n_train=len(train), n_dev=len(dev), predictors=predictors)
    plain = isinstance(cuecard.adapter_for(prompt_lm), PlainAdapter)
    proposer = (
        InstructionProposer(
            adapter=PlainAdapter(multiline_fields=DEFAULT_MULTILINE_FIELDS | {"new_instruction"}, short_answer_tokens=None)
        )
        if plain
        else None
    )
    knobs = {
        "max_metric_calls": max_metric_calls,
        "reflection_minibatch_size": minibatch,
        "candidate_selection_strategy": "pareto",
        "component_selector": "round_robin",
        "use_merge": True,
        "max_merge_invocations": 5,
        "skip_perfect_score": True,
        "proposer_adapter": "PlainAdapter (whole answer)" if plain else "JSONAdapter (GEPA default)",
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
    if plain:
        notes.append("GEPA's InstructionProposer runs with cuecard's PlainAdapter instead of its default JSONAdapter")
    before = _instructions(program)
    gepa_args: dict[str, Any] = dict(
        metric=feedback_metric(metric),
        max_metric_calls=max_metric_calls,
        reflection_minibatch_size=minibatch,
        candidate_selection_strategy="pareto",
        reflection_lm=prompt_lm,
        skip_perfect_score=True,
        instruction_proposer=proposer,
        component_selector="round_robin",
        use_merge=True,
        max_merge_invocations=5,
        num_threads=1,
        track_stats=True,
        seed=seed,
    )
    with _session("GEPA", cap, planned, task_lm) as (guard, log):
        stopper = _CallBudgetStopper(guard, cap, reserve)
        optimizer = dspy.GEPA(**gepa_args, gepa_kwargs={"stop_callbacks": [stopper]})
        compiled = optimizer.compile(program.deepcopy(), trainset=list(train), valset=list(dev))
    captured = log.getvalue()
    notes.append(_usage_note(guard.usage))
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
    notes += _changed_note(before, _instructions(compiled))
    notes += _log_notes(captured, "GEPA")
    return compiled, DSPyRun(knobs=knobs, planned_calls=planned, notes=notes)


DSPY_METHODS: dict[str, Callable[..., tuple[dspy.Module, DSPyRun]]] = {
    "copro": run_copro,
    "miprov2": run_mipro,
    "gepa": run_gepa,
}
"""The DSPy optimizers the harness runs, by table name.

Example:
    >>> sorted(DSPY_METHODS)
    ['copro', 'gepa', 'miprov2']
"""
