"""The methods the harness compares: cuecard's teleprompters, DSPy's optimizers, and the baselines.

A method is a function ``run(program, *, train, dev, metric, task_lm, prompt_lm, cap, seed, workdir)``
returning the compiled program and a :class:`MethodRun`. The harness runs it inside a usage block
capped at ``cap`` LM requests (cached or not), so a method that overspends is stopped, never trusted;
each method also sets its own knobs from ``cap`` so that it plans to finish under it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dspy
from cuecard.policies import UCB
from cuecard.teleprompters import APE, OPRO, PE2, ProTeGi
from cuecard.usage import Limits
from pydantic import BaseModel, Field


class MethodRun(BaseModel):
    """What one method run reports beside its program."""

    knobs: dict[str, Any] = Field(default_factory=dict, description="the settings the method ran with")
    planned_calls: int | None = Field(None, description="the LM requests the knobs were chosen to cost at most")
    notes: list[str] = Field(default_factory=list)


Runner = Callable[..., tuple[dspy.Module, MethodRun]]


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _compile(cls: type, knobs: dict[str, Any], program: dspy.Module, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    workdir: Path = kw["workdir"]
    teleprompter = cls(
        metric=kw["metric"],
        task_lm=kw["task_lm"],
        prompt_lm=kw["prompt_lm"],
        seed=kw["seed"],
        run_name="compile",
        run_dir=workdir,  # the engine's study lives here: a killed run resumes where it stopped
        limits=Limits(max_calls=kw["cap"]),
        progress=False,
        **knobs,
    )
    compiled = teleprompter.compile(program, trainset=kw["train"], valset=kw["dev"])
    report = compiled.cuecard_report
    notes = list(report.notes)
    if report.dropped:
        notes.append("dropped proposals: " + ", ".join(f"{k} {v}" for k, v in sorted(report.dropped.items())))
    knobs = {k: v for k, v in knobs.items() if k != "policy"} | ({"policy": type(knobs["policy"]).__name__} if "policy" in knobs else {})
    return compiled, MethodRun(knobs=knobs, planned_calls=kw["cap"], notes=notes)


def run_ape(program: dspy.Module, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    """APE forward mode: proposals from 2 subsamples, multi-stage pruning on dev.

    Cost: P proposals + about P x dev/2 evaluations after pruning; P chosen so that fits the cap.
    """
    dev = len(kw["dev"])
    proposals = _clamp((kw["cap"] - dev) // (dev // 2 + 1), 2, 30)
    knobs = dict(num_subsamples=2, num_prompts_per_subsample=max(1, proposals // 2), num_demos=min(5, len(kw["train"])))
    return _compile(APE, knobs, program, **kw)


def run_protegi(program: dspy.Module, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    """ProTeGi with UCB; one round costs minibatch x beam + 4 prompt calls per parent + the bandit budget."""
    dev, train = len(kw["dev"]), len(kw["train"])
    knobs = dict(
        policy=UCB(),
        rounds=3,
        beam_size=2,
        minibatch_size=min(8, train),
        n_gradients=1,
        errors_per_gradient=2,
        mc_samples_per_step=1,
        max_expansion_factor=3,
        samples_per_eval=max(2, dev // 2),
        eval_rounds=2,
        prompts_per_round=3,
    )
    return _compile(ProTeGi, knobs, program, **kw)


def run_opro(program: dspy.Module, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    """OPRO: 4 instructions per step, each scored on dev (multi-stage); steps until the cap."""
    dev = len(kw["dev"])
    steps = _clamp(kw["cap"] // (4 * (dev // 2 + 1) + 4), 1, 20)
    knobs = dict(steps=steps, instructions_per_step=4, num_exemplars=min(3, len(kw["train"])), max_proposal_tokens=60)
    return _compile(OPRO, knobs, program, **kw)


def run_pe2(program: dspy.Module, *, ablation: dict[str, bool] | None = None, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    """PE2: beam 2, 2 proposals per prompt (2 prompt calls each: reasoning, then the new prompt).

    ``ablation`` switches meta-prompt components off (see :data:`PE2_ABLATIONS`).
    """
    knobs = dict(steps=3, beam=2, proposals_per_prompt=2, batch_size=2, max_reasoning_tokens=200, max_proposal_tokens=60)
    return _compile(PE2, knobs | (ablation or {}), program, **kw)


PE2_ABLATIONS: dict[str, dict[str, bool]] = {
    "pe2-no-description": {"two_step_description": False},
    "pe2-no-context": {"context_specification": False},
    "pe2-no-reasoning": {"reasoning_template": False},
}
"""PE2 with one meta-prompt component switched off each: the paper's ablations, run as methods of their own."""


def run_seed(program: dspy.Module, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    """The baseline: the program as written, no LM call."""
    return program, MethodRun(planned_calls=0)


CUECARD_METHODS: dict[str, Runner] = {
    "ape": run_ape,
    "protegi": run_protegi,
    "opro": run_opro,
    "pe2": run_pe2,
    **{name: functools.partial(run_pe2, ablation=switches) for name, switches in PE2_ABLATIONS.items()},
}
BASELINES = ("seed", "human")


def _dspy_runner(run: Callable[..., tuple[dspy.Module, Any]]) -> Runner:
    def runner(program: dspy.Module, *, workdir: Path, **kw: Any) -> tuple[dspy.Module, MethodRun]:
        compiled, info = run(program, **kw)  # DSPy's optimizers keep no run state of their own to resume
        return compiled, MethodRun(**info.model_dump())

    return runner


def method_code_hash(name: str) -> str:
    """A hash of the file that sets the method's knobs and runs it, and of the DSPy version.

    It is part of each cell's fingerprint, so cells stored before that code changed are recomputed
    rather than mixed with new ones. (A change inside a teleprompter itself is not seen: rerun with a
    new ``--out`` after one.)
    """
    if name in ("seed", "human"):
        return name
    source = Path(__file__).with_name("dspy_methods.py" if name in DSPY_METHOD_NAMES else "methods.py")
    return hashlib.sha256(source.read_bytes() + dspy.__version__.encode()).hexdigest()[:16]


def runners_for(names: list[str]) -> dict[str, Runner]:
    """The runner of each named method (the human baseline is handled by the harness itself)."""
    runners: dict[str, Runner] = {"seed": run_seed, **CUECARD_METHODS}
    if any(name in DSPY_METHOD_NAMES for name in names):
        from .dspy_methods import (
            DSPY_METHODS,  # imports DSPy's optimizers (and GEPA's package) only when asked
        )

        runners.update({name: _dspy_runner(run) for name, run in DSPY_METHODS.items()})
    return {name: runners[name] for name in names if name != "human"}


DSPY_METHOD_NAMES = ("copro", "miprov2", "gepa")


DEFAULT_METHODS = ("seed", "human", "ape", "protegi", "opro", "pe2", "copro", "miprov2", "gepa")
"""What a run compares unless told otherwise: every method once, without the ablations."""
METHOD_NAMES = (*DEFAULT_METHODS, *PE2_ABLATIONS)
"""Every method the harness knows."""
