"""cuecard's OPRO in the harness: steps of proposals scored multi-stage, as many steps as the cap affords."""

from __future__ import annotations

from typing import Any

import dspy
from cuecard.policies import MultiStage
from cuecard.teleprompters import OPRO

from .common import MethodRun, Plan, compile_with, evaluations, largest

PER_STEP = 4
EXEMPLARS = 3


def plan(cap: int, n_train: int, n_dev: int) -> Plan:
    """Steps of 4 proposals each, every proposal screened on 3 dev examples, then 9 and the best one on all.

    Cost: the seed on all of dev, then per step 4 prompt-model calls, the task model on the 3
    exemplars (what it writes with the best instruction so far) and the engine's estimate of
    multi-stage scoring of 4 candidates.

    Example:
        >>> plan(100, n_train=20, n_dev=15).knobs["steps"]
        2
    """
    policy = MultiStage(min_examples=min(3, n_dev), reduction=3, survivors=1)
    exemplars = min(EXEMPLARS, n_train)
    per_step = PER_STEP + exemplars + evaluations(policy, PER_STEP, n_dev)

    def cost(steps: int) -> int:
        return n_dev + steps * per_step

    steps = largest(1, 50, cost, cap)
    if steps is None:
        raise ValueError(f"OPRO: a cap of {cap} calls cannot run one step on {n_dev} dev examples ({cost(1)} needed)")
    return Plan(
        knobs=dict(policy=policy, steps=steps, instructions_per_step=PER_STEP, num_exemplars=exemplars,
                   max_proposal_tokens=80, patience=max(2, steps)),
        planned_calls=cost(steps),
        notes=[f"plan: {steps} step(s) x {PER_STEP} proposals, multi-stage scoring (3 examples, 9, then the best on all)"],
    )


def run(program: dspy.Module, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    return compile_with(OPRO, plan(kw["cap"], len(kw["train"]), len(kw["dev"])), program, **kw)
