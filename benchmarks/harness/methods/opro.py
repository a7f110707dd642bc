"""cuecard's OPRO in the harness: steps of proposals scored multi-stage, as many steps as the cap affords."""

from __future__ import annotations

from typing import Any

import dspy
from cuecard.teleprompters import OPRO

from .common import MethodRun, Plan, compile_with, plan_for


def plan(cap: int, n_train: int, n_dev: int) -> Plan:
    """OPRO's own plan for the cap (see ``OPRO.plan``)."""
    return plan_for(OPRO, cap, n_train, n_dev)


def run(program: dspy.Module, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    return compile_with(OPRO, plan(kw["cap"], len(kw["train"]), len(kw["dev"])), program, **kw)
