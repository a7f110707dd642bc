"""cuecard's ProTeGi in the harness: gradient rounds with UCB selection, as many rounds as the cap affords."""

from __future__ import annotations

from typing import Any

import dspy
from cuecard.teleprompters import ProTeGi

from .common import MethodRun, Plan, compile_with, plan_for


def plan(cap: int, n_train: int, n_dev: int) -> Plan:
    """ProTeGi's own plan for the cap (see ``ProTeGi.plan``)."""
    return plan_for(ProTeGi, cap, n_train, n_dev)


def run(program: dspy.Module, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    return compile_with(ProTeGi, plan(kw["cap"], len(kw["train"]), len(kw["dev"])), program, **kw)
