"""DSPy's COPRO under the harness cap (see ``dspy_common.py`` for what every DSPy method shares)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import dspy

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
    tried,
    unbind,
    usage_note,
)

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
            if best <= max(seed_scores) and instructions_of(compiled) != seed_instructions:
                line += (" (a proposal tied with the seed and won: COPRO sorts stably and appends the seed after"
                         " the proposals, copro_optimizer.py compile)")
        notes.append(line)
        notes.append(
            "COPRO candidates (dev score): " + tried([(c["instruction"], c["score"]) for c in candidates])
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
) -> tuple[dspy.Module, MethodRun]:
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
    predictors = check_inputs("COPRO", program, train, dev, cap)
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
    notes += adapter_note(task_lm, prompt_lm, "COPRO")
    before = instructions_of(program)
    optimizer = dspy.COPRO(
        prompt_model=prompt_lm, metric=metric, breadth=breadth, depth=depth, init_temperature=1.4
    )
    with session("COPRO", cap, planned, task_lm) as (guard, log):
        compiled = unbind(optimizer.compile(
            bind(program.deepcopy(), task_lm), trainset=list(dev), eval_kwargs={"num_threads": 1, "display_progress": False}
        ))
    notes.append(usage_note(guard.usage))
    notes += _copro_result_notes(compiled, before, _prefixes(program))
    quoted = quote([str(c.get("instruction", "")) for c in getattr(compiled, "candidate_programs", None) or []], before)
    notes.append(quote_note(quoted))
    notes += changed_note(before, instructions_of(compiled))
    notes += log_notes(log.getvalue(), "COPRO")
    return compiled, MethodRun(knobs=knobs, planned_calls=planned, notes=notes, proposals=quoted)
