"""cuecard's PE2 in the harness: meta-prompt proposals from hard negatives, as many steps as the cap affords.

The paper's ablations run as methods of their own (:data:`ABLATIONS`): one meta-prompt component off each.
"""

from __future__ import annotations

from typing import Any

import dspy
from cuecard.teleprompters import PE2

from .common import MethodRun, compile_with, plan_for_program

ABLATIONS: dict[str, dict[str, bool]] = {
    "pe2-no-description": {"two_step_description": False},
    "pe2-no-context": {"context_specification": False},
    "pe2-no-reasoning": {"reasoning_template": False},
}
"""PE2 with one meta-prompt component switched off each: the paper's ablations, run as methods of their own."""


def run(program: dspy.Module, *, ablation: dict[str, bool] | None = None, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    planned = plan_for_program(PE2, program, kw)
    if ablation:
        planned = planned.model_copy(update={"knobs": {**planned.knobs, **ablation}})
    return compile_with(PE2, planned, program, **kw)
