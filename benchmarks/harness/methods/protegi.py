"""cuecard's ProTeGi in the harness: gradient rounds with UCB selection, as many rounds as the cap affords."""

from __future__ import annotations

from typing import Any

import dspy
from cuecard.teleprompters import ProTeGi

from .common import MethodRun, compile_with, plan_for_program


def run(program: dspy.Module, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    return compile_with(ProTeGi, plan_for_program(ProTeGi, program, kw), program, **kw)
