"""What every harness method shares: the record of a run, and the plan of a cuecard teleprompter's knobs.

A method is a module with ``run(program, *, train, dev, metric, task_lm, prompt_lm, cap, seed,
workdir) -> (compiled program, MethodRun)``. The harness runs it inside a usage block capped at
``cap`` LM requests (cached or not), so a method that overspends is stopped, never trusted; each
method also plans its own knobs from ``cap`` so that it finishes under it: DSPy's optimizers from
cost formulas read off their source, cuecard's teleprompters from the engine's own estimate of what
a policy will spend (:meth:`cuecard.engine.policies.Policy.planned_evaluations`), the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dspy
from cuecard.clients.usage import Limits
from pydantic import BaseModel, Field


class MethodRun(BaseModel):
    """What one method run reports beside its program."""

    knobs: dict[str, Any] = Field(default_factory=dict, description="the settings the method ran with")
    planned_calls: int | None = Field(None, description="the LM requests the knobs were chosen to cost at most")
    notes: list[str] = Field(default_factory=list)
    proposals: list[str] = Field(default_factory=list, description="a few of the method's own proposals, quoted")


class Plan(BaseModel):
    """A cuecard teleprompter's knobs for a cap, and what they are expected to cost."""

    knobs: dict[str, Any]
    planned_calls: int
    notes: list[str] = Field(default_factory=list)


Runner = Callable[..., tuple[dspy.Module, MethodRun]]


def plan_for(cls: type, cap: int, n_train: int, n_dev: int, predictors: int = 1) -> Plan:
    """A teleprompter's own plan for the cap (:meth:`cuecard.teleprompters.Teleprompter.plan`, worked
    out through its estimate of what its policy and proposals cost) and the calls it expects."""
    knobs = cls.plan(cap, n_train, n_dev, predictors=predictors)
    if not knobs:
        raise ValueError(
            f"{cls.__name__}: a cap of {cap} calls is too small for one search step on {n_dev} dev examples "
            f"with {predictors} predictor(s)"
        )
    shown = ", ".join(f"{k}={type(v).__name__ if k == 'policy' else v}" for k, v in knobs.items())
    return Plan(knobs=knobs, planned_calls=cls.fits(knobs, cap, n_train, n_dev, predictors),
                notes=[f"plan for the cap: {shown}"])


def plan_for_program(cls: type, program: dspy.Module, kw: dict[str, Any]) -> Plan:
    """:func:`plan_for` the cap, the data sizes and the number of predictors of the program a run is given."""
    return plan_for(cls, kw["cap"], len(kw["train"]), len(kw["dev"]), len(program.named_predictors()))


def compile_with(cls: type, plan: Plan, program: dspy.Module, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    """Compile with a cuecard teleprompter and the planned knobs; the study lives under ``workdir``."""
    workdir: Path = kw["workdir"]
    knobs = dict(plan.knobs)
    teleprompter = cls(
        metric=kw["metric"],
        task_lm=kw["task_lm"],
        prompt_lm=kw["prompt_lm"],
        seed=kw["seed"],
        run_dir=workdir,  # the study lives here, named by the run identity: a killed run resumes exactly
        limits=Limits(max_calls=kw["cap"]),
        progress=False,
        **knobs,
    )
    compiled = teleprompter.compile(program, trainset=kw["train"], valset=kw["dev"])
    report = compiled.cuecard_report
    notes = list(plan.notes) + list(report.notes)
    if report.stop_reason.kind != "finished":
        notes.append(f"search stopped: {report.stop_reason.text}")
    if report.process.evaluations_read_back:
        notes.append(f"resumed: {report.process.evaluations_read_back} evaluations read back from the interrupted run")
    if report.dropped:
        notes.append("dropped proposals: " + ", ".join(f"{k} {v}" for k, v in sorted(report.dropped.items())))
    if report.failures:
        notes.append("failures: " + ", ".join(f"{k} {v}" for k, v in sorted(report.failures.items())))
    shown = {k: (type(v).__name__ if k == "policy" else v) for k, v in knobs.items()}
    return compiled, MethodRun(knobs=shown, planned_calls=plan.planned_calls, notes=notes)


def stop_reason(report: Any) -> str:
    """Why a search ended before its cap: the report's own stop reason."""
    return "the planned search was done" if report.stop_reason.kind == "finished" else report.stop_reason.text