"""DSPy's MIPROv2 (instructions only) under the harness cap (see ``dspy_common.py``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import dspy

from .common import MethodRun
from .dspy_common import (
    DSPyMethodError,
    adapter_note,
    bind,
    changed_note,
    check_inputs,
    instructions_of,
    log_notes,
    quote,
    quote_note,
    session,
    tried,
    unbind,
    usage_note,
)

_MIPRO_MAX_CANDIDATES = 18  # MIPROv2's "heavy" auto setting
_MIPRO_MINIBATCH_SIZE = 35  # MIPROv2's default; minibatching only when dev is larger
_MIPRO_FULL_EVAL_STEPS = 5  # MIPROv2's default
_MIPRO_VIEW_DATA_BATCH = 10  # MIPROv2's default view_data_batch_size
_MIPRO_DEMOS = 4  # MIPROv2's default max_bootstrapped_demos and max_labeled_demos


def _mipro_trials(num_candidates: int, predictors: int, fewshot: bool = False) -> int:
    """MIPROv2's own rule (``_set_num_trials_from_num_candidates``): a few-shot run counts each predictor's
    demos as a second variable."""
    variables = predictors * (2 if fewshot else 1)
    return int(max(2 * variables * math.log2(num_candidates), 1.5 * num_candidates))


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
    fewshot: bool = False,
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
    With demos (``fewshot``, MIPROv2's defaults of 4 bootstrapped and 4 labeled), the zero-shot and the
    labels-only sets are free and the other C-2 are bootstrapped: ``<= (C-2)*N*P``.

    Example:
        >>> _mipro_cost(2, 3, True, n_train=10, n_dev=8, predictors=1, minibatch=False)
        50
    """
    bootstrap = (num_candidates - (2 if fewshot else 1)) * n_train * predictors
    summary = 2 + min(max(math.ceil(n_train / _MIPRO_VIEW_DATA_BATCH) - 1, 0), 9)
    proposals = predictors * num_candidates * (3 if program_aware else 1)
    if minibatch:
        full = _mipro_full_evals(num_trials, _MIPRO_FULL_EVAL_STEPS)
        evaluations = predictors * (n_dev + _MIPRO_MINIBATCH_SIZE * num_trials + full * n_dev)
    else:
        evaluations = predictors * n_dev * (num_trials + 1)
    return bootstrap + summary + proposals + evaluations


def _plan_mipro(cap: int, n_train: int, n_dev: int, predictors: int, fewshot: bool = False) -> dict[str, Any]:
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
    common = dict(n_train=n_train, n_dev=n_dev, predictors=predictors, minibatch=minibatch, fewshot=fewshot)

    def plan(candidates: int, trials: int, aware: bool, clamped: bool) -> dict[str, Any]:
        return dict(
            num_candidates=candidates, num_trials=trials, program_aware=aware, minibatch=minibatch,
            trials_clamped=clamped, planned=_mipro_cost(candidates, trials, aware, **common),
        )

    for candidates in range(_MIPRO_MAX_CANDIDATES, 1, -1):
        trials = _mipro_trials(candidates, predictors, fewshot)
        for aware in (True, False):
            if _mipro_cost(candidates, trials, aware, **common) <= cap:
                return plan(candidates, trials, aware, False)
    for trials in range(_mipro_trials(2, predictors, fewshot) - 1, 0, -1):
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
        notes.append(f"MIPROv2 instructions fully evaluated (dev score): {tried(pairs)}")
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
    fewshot: bool = False,
) -> tuple[dspy.Module, MethodRun]:
    """Run ``dspy.MIPROv2`` for instructions only (0 bootstrapped, 0 labeled demos, auto=None), or with
    ``fewshot`` with its default demos (4 bootstrapped, 4 labeled: what its users run; a reference row).

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
    predictors = check_inputs("MIPROv2", program, train, dev, cap)
    plan = _plan_mipro(cap, len(train), len(dev), predictors, fewshot)
    demos = _MIPRO_DEMOS if fewshot else 0
    planned = plan["planned"]
    knobs = {
        "auto": None,
        "num_candidates": plan["num_candidates"],
        "num_trials": plan["num_trials"],
        "max_bootstrapped_demos": demos,
        "max_labeled_demos": demos,
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
        f"cost: bootstrap (C-{2 if fewshot else 1})*N*P + summary + proposals P*C*{3 if plan['program_aware'] else 1} + "
        f"evaluations = {planned} worst case (bootstrapping stops early once 1-3 demos pass)",
        f"num_trials = MIPROv2's own rule for {plan['num_candidates']} candidates"
        + (" (clamped lower by the cap)" if plan["trials_clamped"] else ""),
        f"{plan['num_candidates'] - 1} proposed instruction(s) + the seed: MIPROv2 generates "
        f"{plan['num_candidates']} per predictor and overwrites the first with the seed instruction",
        (f"with its default demos ({demos} bootstrapped, {demos} labeled): instructions and demos are optimized together"
         if fewshot else "even with 0 demos MIPROv2 bootstraps demo sets on train (task-model calls) to show the proposer"),
        f"seed {seed} passed to MIPROv2(seed=) as well, since compile's `seed or self.seed` drops 0",
    ]
    if not plan["program_aware"]:
        notes.append("program-aware proposer off: its 2 extra calls per proposal did not fit the cap")
    if not plan["minibatch"]:
        notes.append(f"minibatch off: dev has {len(dev)} <= {_MIPRO_MINIBATCH_SIZE} examples; each trial is a full dev evaluation")
    notes += adapter_note(task_lm, prompt_lm, "MIPROv2")
    before = instructions_of(program)
    optimizer = dspy.MIPROv2(
        metric=metric,
        prompt_model=prompt_lm,
        task_model=task_lm,
        max_bootstrapped_demos=demos,
        max_labeled_demos=demos,
        auto=None,
        num_candidates=plan["num_candidates"],
        num_threads=1,
        seed=seed,
        init_temperature=1.0,
        verbose=False,
    )
    try:
        with session("MIPROv2", cap, planned, task_lm) as (guard, log):
            compiled = optimizer.compile(
                bind(program.deepcopy(), task_lm),
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
        compiled = unbind(compiled)
    except DSPyMethodError as exc:
        if "No valid program found in param_score_dict" in str(exc):
            raise DSPyMethodError(
                "MIPROv2 failed: a scheduled full evaluation found every tried instruction combination already "
                "fully evaluated (dspy teleprompt/utils.py get_program_with_highest_avg_score raises)"
            ) from exc.__cause__
        raise
    captured = log.getvalue()
    swallowed = captured.count("An exception occurred during evaluation")
    notes.append(usage_note(guard.usage))
    if swallowed:
        notes.append(f"MIPROv2 swallowed {swallowed} evaluation exception(s) and scored them 0 (teleprompt/utils.py eval_candidate_program)")
    if "Error getting data summary" in captured:
        notes.append("MIPROv2's data summary failed; it proposed without it")
    notes += _mipro_result_notes(compiled, before)
    candidates = [" | ".join(p.signature.instructions for p in e["program"].predictors()) for e in getattr(compiled, "candidate_programs", None) or []]
    quoted = quote(candidates, before)
    notes.append(quote_note(quoted))
    notes += changed_note(before, instructions_of(compiled))
    notes += log_notes(captured, "MIPROv2")
    return compiled, MethodRun(knobs=knobs, planned_calls=planned, notes=notes, proposals=quoted)
