"""The methods the harness compares, one file each: cuecard's teleprompters, DSPy's optimizers, the baselines.

Any other labelled teleprompter in cuecard's registry (a third party's, found through its entry point)
is a method too, with no file of its own: it runs on its own ``plan()`` for the cap.

Each method file has ``run(program, *, train, dev, metric, task_lm, prompt_lm, cap, seed, workdir)``
returning the compiled program and a :class:`MethodRun`; cuecard's also have ``plan(cap, n_train,
n_dev)``, their knobs from the engine's estimate. A cell's fingerprint includes a hash of its method's
file, of the file it shares with its kind and, for cuecard's methods, of every cuecard module the method
imports: editing one method recomputes only its cells; editing a module methods share recomputes theirs.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from pathlib import Path
from typing import Any

import dspy

from ..sources import module_files
from .ape import VARIANTS as APE_VARIANTS
from .common import MethodRun, Runner
from .opro import VARIANTS as OPRO_VARIANTS
from .pe2 import ABLATIONS as PE2_ABLATIONS

HERE = Path(__file__).parent

CUECARD_METHODS = ("ape", "protegi", "opro", "pe2")
DSPY_METHOD_NAMES = ("copro", "miprov2", "gepa")
DSPY_REFERENCES = ("miprov2-fewshot",)
"""DSPy rows shown for reference, not compared with: MIPROv2 with its default demos (instructions and demos)."""
BASELINES = ("seed", "majority", "human")
"""Rows no search produces: the program as written, the train split's most common answer given every
time (what a search that learns only the answer's form can reach on a skewed label set), the people's
instructions."""
DEFAULT_METHODS = ("seed", "majority", "human", *CUECARD_METHODS, *DSPY_METHOD_NAMES, *DSPY_REFERENCES)
"""What a run compares unless told otherwise: every method once, without the ablations."""


def registered_teleprompters() -> dict[str, type]:
    """The labelled teleprompters in cuecard's registry that have no method file here (BPO, judged by
    win rate, has no place in an accuracy table)."""
    from cuecard.registry import teleprompters

    return {name: cls for name, cls in teleprompters().items()
            if cls.needs_labels and name not in CUECARD_METHODS and not (HERE / f"{name}.py").is_file()}


REGISTERED_METHODS = tuple(registered_teleprompters())
METHOD_NAMES = (*DEFAULT_METHODS, *PE2_ABLATIONS, *APE_VARIANTS, *OPRO_VARIANTS, *REGISTERED_METHODS)
"""Every method the harness knows."""


def run_seed(program: dspy.Module, **kw: Any) -> tuple[dspy.Module, MethodRun]:
    """The baseline: the program as written, no LM call."""
    return program, MethodRun(planned_calls=0)


def _files(name: str) -> list[Path]:
    """The files a method's results depend on: its own, what it shares with its kind, and for cuecard's
    teleprompters every cuecard module they import, followed transitively (see :mod:`..sources`): a
    teleprompter, a module it shares or the engine edited recomputes its cells; DSPy's cells stay."""
    if name in PE2_ABLATIONS:
        name = "pe2"
    if name in APE_VARIANTS:
        name = "ape"
    if name in OPRO_VARIANTS:
        name = "opro"
    if name in DSPY_REFERENCES:
        name = "miprov2"
    if name in DSPY_METHOD_NAMES:
        return [HERE / f"{name}.py", HERE / "dspy_common.py"]
    if name in REGISTERED_METHODS:
        cls = registered_teleprompters()[name]
        within = ["cuecard", __name__, cls.__module__.split(".")[0]]  # and the third party's own package
        return module_files([f"{__name__}.common", cls.__module__], within)
    from cuecard.registry import teleprompter

    return module_files([f"{__name__}.{name}", f"{__name__}.common", teleprompter(name).__module__], ["cuecard", __name__])


def method_code_hash(name: str) -> str:
    """A hash of the files that set the method's knobs and run it (and of the DSPy version).

    It is part of each cell's fingerprint, so cells stored before that code changed are recomputed
    rather than mixed with new ones: for cuecard's methods, the source of every cuecard module they
    import (their teleprompter, the shared induction and proposal modules, base.py, the engine).
    """
    if name in BASELINES:
        return name
    digest = hashlib.sha256(dspy.__version__.encode())
    for path in _files(name):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _dspy_runner(name: str) -> Runner:
    extra = {"fewshot": True} if name == "miprov2-fewshot" else {}
    name = "miprov2" if name in DSPY_REFERENCES else name
    module = importlib.import_module(f".{name}", __name__)  # imports DSPy's optimizers only when asked
    run = {"copro": "run_copro", "miprov2": "run_mipro", "gepa": "run_gepa"}[name]

    def runner(program: dspy.Module, *, workdir: Path, **kw: Any) -> tuple[dspy.Module, MethodRun]:
        return getattr(module, run)(program, **kw, **extra)  # DSPy's optimizers keep no run state of their own to resume

    return runner


def cuecard_runner(name: str) -> Runner:
    """The runner of one of cuecard's teleprompters (an ablation of PE2 included)."""
    if name in PE2_ABLATIONS:
        from . import pe2

        return functools.partial(pe2.run, ablation=PE2_ABLATIONS[name])
    if name in APE_VARIANTS:
        from . import ape

        return functools.partial(ape.run, variant=APE_VARIANTS[name])
    if name in OPRO_VARIANTS:
        from . import opro

        return functools.partial(opro.run, variant=OPRO_VARIANTS[name])
    if name in REGISTERED_METHODS:
        from cuecard.teleprompters import Teleprompter

        from .common import Plan, compile_with, plan_for_program

        cls = registered_teleprompters()[name]

        def run(program: dspy.Module, **kw: Any) -> tuple[dspy.Module, MethodRun]:
            has_plan = any(getattr(cls, hook).__func__ is not getattr(Teleprompter, hook).__func__ for hook in ("plan", "plan_shapes"))
            plan = (plan_for_program(cls, program, kw) if has_plan
                    else Plan(knobs={}, planned_calls=kw["cap"], notes=["no plan() of its own: its default settings, under the cap"]))
            return compile_with(cls, plan, program, **kw)

        return run
    return importlib.import_module(f".{name}", __name__).run


def runners_for(names: list[str]) -> dict[str, Runner]:
    """The runner of each named method (the human and majority baselines are handled by the harness itself)."""
    runners: dict[str, Runner] = {}
    for name in names:
        if name == "seed":
            runners[name] = run_seed
        elif name in (*DSPY_METHOD_NAMES, *DSPY_REFERENCES):
            runners[name] = _dspy_runner(name)
        elif name not in ("human", "majority"):
            runners[name] = cuecard_runner(name)
    return runners


__all__ = [
    "APE_VARIANTS",
    "BASELINES",
    "CUECARD_METHODS",
    "DEFAULT_METHODS",
    "DSPY_METHOD_NAMES",
    "DSPY_REFERENCES",
    "METHOD_NAMES",
    "OPRO_VARIANTS",
    "MethodRun",
    "PE2_ABLATIONS",
    "REGISTERED_METHODS",
    "method_code_hash",
    "runners_for",
]
