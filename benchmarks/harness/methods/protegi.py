"""cuecard's ProTeGi in the harness: gradient rounds with UCB selection, as many rounds as the cap affords."""

from __future__ import annotations

from typing import Any

import dspy
from cuecard.policies import UCB
from cuecard.teleprompters import ProTeGi

from .common import MethodRun, Plan, compile_with, largest

BEAM = 2
GRADIENTS = 2


def plan(cap: int, n_train: int, n_dev: int) -> Plan:
    """Rounds of textual gradients: each beam prompt runs on a minibatch, 2 gradients and 2 edits are
    asked for, and UCB spends a selection budget of 2 x dev evaluations on the beam and its children.

    Cost: the seed on all of dev; round 1 (one parent): minibatch + 2 gradient + 2 edit calls + the
    selection budget; each later round the same for two parents; finally the beam on all of dev.

    Example:
        >>> plan(100, n_train=20, n_dev=15).knobs["rounds"]
        1
    """
    def cost(rounds: int, minibatch: int, selection: int) -> int:
        per_parent = minibatch + 2 * GRADIENTS
        return n_dev + (per_parent + selection) + (rounds - 1) * (BEAM * per_parent + selection) + BEAM * n_dev

    # the paper's minibatch and selection budget where the cap allows, smaller ones where it does not
    for minibatch, selection in ((min(8, n_train), 2 * n_dev), (min(4, n_train), n_dev)):
        rounds = largest(1, 20, lambda r: cost(r, minibatch, selection), cap)  # noqa: B023 - used at once
        if rounds is not None:
            break
    else:
        raise ValueError(f"ProTeGi: a cap of {cap} calls cannot run one round on {n_dev} dev examples "
                         f"({cost(1, min(4, n_train), n_dev)} needed)")
    return Plan(
        knobs=dict(policy=UCB(batch=3), rounds=rounds, beam_size=BEAM, minibatch_size=minibatch, n_gradients=GRADIENTS,
                   errors_per_gradient=3, steps_per_gradient=1, mc_samples_per_step=0, max_expansion_factor=4,
                   samples_per_eval=selection, eval_rounds=1, prompts_per_round=1, patience=max(1, rounds)),
        planned_calls=cost(rounds, minibatch, selection),
        notes=[f"plan: {rounds} round(s), beam {BEAM}, {GRADIENTS} gradients x 1 edit, UCB on {selection} evaluations a round"],
    )


def run(program: dspy.Module, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    return compile_with(ProTeGi, plan(kw["cap"], len(kw["train"]), len(kw["dev"])), program, **kw)
