"""cuecard's APE in the harness: induction from demonstrations, multi-stage scoring, knobs from the cap."""

from __future__ import annotations

from typing import Any

import dspy
from cuecard.teleprompters import APE

from .common import MethodRun, Plan, compile_with, plan_for


def plan(cap: int, n_train: int, n_dev: int) -> Plan:
    """APE's own plan for the cap (see ``APE.plan``)."""
    return plan_for(APE, cap, n_train, n_dev)


def run(program: dspy.Module, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    return compile_with(APE, plan(kw["cap"], len(kw["train"]), len(kw["dev"])), program, **kw)
