"""cuecard's PE2 in the harness: meta-prompt proposals from hard negatives, as many steps as the cap affords.

The paper's ablations run as methods of their own (:data:`ABLATIONS`): one meta-prompt component off each.
"""

from __future__ import annotations

from typing import Any

import dspy
from cuecard.policies import MultiStage
from cuecard.teleprompters import PE2

from .common import MethodRun, Plan, compile_with, evaluations, largest

PROPOSALS = 3

ABLATIONS: dict[str, dict[str, bool]] = {
    "pe2-no-description": {"two_step_description": False},
    "pe2-no-context": {"context_specification": False},
    "pe2-no-reasoning": {"reasoning_template": False},
}
"""PE2 with one meta-prompt component switched off each: the paper's ablations, run as methods of their own."""


def plan(cap: int, n_train: int, n_dev: int) -> Plan:
    """Steps expanding the best prompt so far (beam 1) with 3 proposals, each from 2 hard negatives.

    Cost: the seed on all of dev; per step the parent on a sample of train (to find its errors),
    2 prompt-model calls per proposal (reasoning, then the new prompt) and the engine's estimate of
    multi-stage scoring of the 3 children.

    Example:
        >>> plan(100, n_train=20, n_dev=15).knobs["steps"]
        2
    """
    sample = min(8, n_train)
    policy = MultiStage(min_examples=min(3, n_dev), reduction=3, survivors=1)
    per_step = sample + 2 * PROPOSALS + evaluations(policy, PROPOSALS, n_dev)

    def cost(steps: int) -> int:
        return n_dev + steps * per_step

    steps = largest(1, 20, cost, cap)
    if steps is None:
        raise ValueError(f"PE2: a cap of {cap} calls cannot run one step on {n_dev} dev examples ({cost(1)} needed)")
    return Plan(
        knobs=dict(policy=policy, steps=steps, beam=1, proposals_per_prompt=PROPOSALS, batch_size=2,
                   negatives_sample=sample, max_reasoning_tokens=200, max_proposal_tokens=80),
        planned_calls=cost(steps),
        notes=[f"plan: {steps} step(s), beam 1 x {PROPOSALS} proposals, negatives from {sample} train examples"],
    )


def run(program: dspy.Module, *, ablation: dict[str, bool] | None = None, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    planned = plan(kw["cap"], len(kw["train"]), len(kw["dev"]))
    if ablation:
        planned = planned.model_copy(update={"knobs": {**planned.knobs, **ablation}})
    return compile_with(PE2, planned, program, **kw)
