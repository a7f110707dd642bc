"""cuecard's APE in the harness: induction from demonstrations, multi-stage scoring, knobs from the cap."""

from __future__ import annotations

from typing import Any

import dspy
from cuecard.policies import MultiStage
from cuecard.teleprompters import APE

from .common import MethodRun, Plan, compile_with, evaluations, largest


def plan(cap: int, n_train: int, n_dev: int) -> Plan:
    """As many induced proposals as the cap affords.

    Cost: P proposals (one prompt-model call each) + the engine's estimate of multi-stage scoring of
    P+1 candidates (the seed joins) on ``n_dev`` examples + what the acceptance rule may need to score
    a seed pruned early on the rest of dev.

    Example:
        >>> plan(100, n_train=20, n_dev=15).knobs["num_prompts_per_subsample"]
        4
    """
    policy = MultiStage(min_examples=min(3, n_dev), reduction=3, survivors=2)
    reserve = n_dev - policy.min_examples

    def cost(proposals: int) -> int:
        return proposals + evaluations(policy, proposals + 1, n_dev) + reserve

    proposals = largest(2, 45, cost, cap)
    if proposals is None:
        raise ValueError(f"APE: a cap of {cap} calls cannot score 2 proposals on {n_dev} dev examples ({cost(2)} needed)")
    subsamples = min(3, proposals)
    per_subsample = proposals // subsamples
    return Plan(
        knobs=dict(policy=policy, num_subsamples=subsamples, num_prompts_per_subsample=per_subsample,
                   num_demos=min(5, n_train)),
        planned_calls=cost(subsamples * per_subsample),
        notes=[f"plan: {subsamples * per_subsample} proposals + multi-stage scoring (3 examples, x3, 2 survivors) + seed check"],
    )


def run(program: dspy.Module, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    return compile_with(APE, plan(kw["cap"], len(kw["train"]), len(kw["dev"])), program, **kw)
