"""cuecard's OPRO in the harness: steps of proposals scored multi-stage, as many steps as the cap affords.

``opro-paper`` (:data:`VARIANTS`) runs the structure of the OPRO paper's meta-prompt instead of cuecard's,
in our own words: the scored instructions in ascending order, a few problems with the instruction's
place marked and their answers, then a request for a new, different, higher-scoring instruction; no
reading of the task and no model outputs shown.
"""

from __future__ import annotations

from typing import Any

import dspy
from cuecard.teleprompters import OPRO
from cuecard.teleprompters.opro import EXEMPLARS, HISTORY

from .common import MethodRun, compile_with, plan_for_program

PAPER_META_PROMPT = (
    "You are looking for an instruction, written <INS>. These instructions were tried before, each with "
    "its score from 0 to 100, the better ones last:\n\n"
    f"{HISTORY}\n\n"
    "These are problems the instruction goes with, with where it is placed and the expected answers:\n\n"
    f"{EXEMPLARS}\n\n"
    "Give a new instruction, unlike all of those above, that would score higher than all of them. Make it "
    "short, clear and useful for every problem of this kind. Begin it with <INS> and end it with </INS>."
)
"""The structure of the OPRO paper's meta-prompt (instruction-score pairs, exemplars, the request), in our own words."""

VARIANTS: dict[str, dict[str, Any]] = {
    "opro-paper": {"meta_prompt": PAPER_META_PROMPT, "show_model_outputs": False, "task_rule": False, "start_from_readings": False},
}
"""OPRO with the paper-style meta-prompt, run as a method of its own."""


def run(program: dspy.Module, *, variant: dict[str, Any] | None = None, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    planned = plan_for_program(OPRO, program, kw)
    if variant:
        planned = planned.model_copy(update={"knobs": {**planned.knobs, **variant}})
    return compile_with(OPRO, planned, program, **kw)
