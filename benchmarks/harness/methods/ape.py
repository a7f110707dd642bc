"""cuecard's APE in the harness: induction from demonstrations, multi-stage scoring, knobs from the cap.

Template ablations run as methods of their own (:data:`VARIANTS`): the reverse template, the forward
template with the clause on the outputs' form that the second quality round added (removed since: it was
tuned to the visible tasks and its words leaked into induced instructions), and the paper's forward and
reverse structure (an instruction given to a friend, who wrote the outputs), in our own words.
"""

from __future__ import annotations

from typing import Any

import dspy
from cuecard.teleprompters import APE
from cuecard.teleprompters.ape import BLANK, DEMOS

from .common import MethodRun, compile_with, plan_for_program

FORM_CLAUSE_TEMPLATE = (
    "A teacher gave a student one instruction. Following it, the student turned each input below "
    "into the output shown next to it.\n\n"
    f"{DEMOS}\n\n"
    "What was the instruction? It said what to do with an input and exactly what to write back: look at the "
    "form of the outputs too (how long they are, what they hold, what they leave out). In one sentence, "
    "the instruction was to "
    f"{BLANK}"
)
"""APE's forward template as the second quality round left it (the clause on the outputs' form)."""

PAPER_FORWARD_TEMPLATE = (
    "I asked a friend to do something and handed over some inputs. For each input the friend wrote "
    "back an output. These are the pairs:\n\n"
    f"{DEMOS}\n\n"
    "What I had asked the friend to do was "
    f"{BLANK}"
)
"""The structure of the APE paper's forward template (request, pairs, completion), in our own words."""

PAPER_REVERSE_TEMPLATE = (
    f"I asked a friend to {BLANK}. For each input I handed over, the friend wrote back an output. "
    "These are the pairs:\n\n"
    f"{DEMOS}\n\n"
    "What goes in the blank? Reply with those words only."
)
"""The structure of the APE paper's reverse template (the blank first, then the pairs), in our own words."""

VARIANTS: dict[str, dict[str, Any]] = {
    "ape-reverse": {"mode": "reverse"},
    "ape-form-clause": {"mode": "custom", "template": FORM_CLAUSE_TEMPLATE},
    "ape-paper-forward": {"mode": "custom", "template": PAPER_FORWARD_TEMPLATE},
    "ape-paper-reverse": {"mode": "custom", "template": PAPER_REVERSE_TEMPLATE},
}
"""APE with another induction template each, run as methods of their own."""


def run(program: dspy.Module, *, variant: dict[str, Any] | None = None, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    planned = plan_for_program(APE, program, kw)
    if variant:
        planned = planned.model_copy(update={"knobs": {**planned.knobs, **variant}})
    return compile_with(APE, planned, program, **kw)
