"""The instructions of a DSPy program: read them, and apply a candidate to a copy.

A *candidate* is a full assignment of instructions to the program's predictors, keyed by the
predictor names DSPy gives (``named_predictors()``: ``"predict"`` for a ``ChainOfThought``'s inner
predictor is ``"predict"``, a module attribute ``classify`` is ``"classify"``...). A candidate may
also set a predictor's demonstrations under ``"<name>.demos"`` (a JSON list of objects, see
:func:`demos_key`); predictors it does not mention keep theirs.

Example:
    >>> import dspy
    >>> program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify the sentiment."))
    >>> get_instructions(program)
    {'self': 'Classify the sentiment.'}
    >>> better = apply_instructions(program, {"self": "Is the review positive or negative?"})
    >>> get_instructions(program)["self"], get_instructions(better)["self"]
    ('Classify the sentiment.', 'Is the review positive or negative?')
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any

import dspy

Candidate = dict[str, str]
DEMOS_SUFFIX = ".demos"


def demos_key(name: str) -> str:
    """The candidate key that carries predictor ``name``'s demonstrations."""
    return name + DEMOS_SUFFIX


def encode_demos(demos: Sequence[Mapping[str, Any]]) -> str:
    """Demonstrations as the JSON text a candidate carries."""
    return json.dumps([dict(demo) for demo in demos], ensure_ascii=False, sort_keys=True)


def predictors(program: dspy.Module) -> list[tuple[str, dspy.Predict]]:
    """The program's predictors with their names, in DSPy's order."""
    found = list(program.named_predictors())
    if not found:
        raise ValueError(f"The program {type(program).__name__} has no dspy.Predict inside it: nothing to optimise")
    return found


def get_instructions(program: dspy.Module) -> Candidate:
    """The current instruction of every predictor of ``program``."""
    return {name: predictor.signature.instructions for name, predictor in predictors(program)}


def check_candidate(program: dspy.Module, candidate: Mapping[str, str]) -> None:
    """Raise ``ValueError`` naming the predictors a candidate misses or does not know."""
    names = {name for name, _ in predictors(program)}
    instructions = {key for key in candidate if not key.endswith(DEMOS_SUFFIX)}
    unknown = sorted(instructions - names) + sorted(
        key for key in candidate if key.endswith(DEMOS_SUFFIX) and key[: -len(DEMOS_SUFFIX)] not in names
    )
    missing = sorted(names - instructions)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown predictor(s) {unknown}")
        if missing:
            parts.append(f"no instruction for {missing}")
        raise ValueError(f"Candidate does not fit {type(program).__name__} ({', '.join(parts)}); it has {sorted(names)}")
    empty = sorted(name for name in instructions if not isinstance(candidate[name], str) or not candidate[name].strip())
    if empty:
        raise ValueError(f"Candidate has an empty instruction for {empty}")
    for key in candidate.keys() - instructions:
        try:
            demos = json.loads(candidate[key])
        except (TypeError, json.JSONDecodeError):
            demos = None
        if not isinstance(demos, list) or not all(isinstance(d, dict) for d in demos):
            raise ValueError(f"Candidate key {key!r} must hold a JSON list of demonstration objects")


def apply_instructions(program: dspy.Module, candidate: Mapping[str, str]) -> dspy.Module:
    """A deep copy of ``program`` carrying ``candidate``'s instructions (and demos); ``program`` is not changed."""
    check_candidate(program, candidate)
    copy = program.deepcopy()
    for name, predictor in copy.named_predictors():
        predictor.signature = predictor.signature.with_instructions(candidate[name])
        if demos_key(name) in candidate:
            predictor.demos = [dspy.Example(**demo) for demo in json.loads(candidate[demos_key(name)])]
    return copy


def candidate_key(candidate: Mapping[str, str]) -> str:
    """A short stable id for a candidate (same instructions, same key)."""
    canonical = json.dumps(dict(sorted(candidate.items())), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def required_inputs(program: dspy.Module) -> list[str]:
    """The input names a program needs: its ``cuecard_inputs`` attribute, its ``forward`` parameters,
    or its only predictor's input fields."""
    declared = getattr(program, "cuecard_inputs", None)
    if declared:
        return list(declared)
    forward = getattr(type(program), "forward", None)
    if forward is not None:
        parameters = [
            p
            for p in inspect.signature(forward).parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty
        ]
        if parameters:
            return [p.name for p in parameters]
    found = predictors(program)
    return list(found[0][1].signature.input_fields) if len(found) == 1 else []


def check_examples(program: dspy.Module, examples: Sequence[dspy.Example], *, what: str = "trainset") -> None:
    """Raise ``ValueError`` for an empty set, or naming the first example that lacks a needed input."""
    if not examples:
        raise ValueError(f"The {what} is empty")
    needed = required_inputs(program)
    for index, example in enumerate(examples):
        if not isinstance(example, dspy.Example):
            raise TypeError(f"{what}[{index}] is a {type(example).__name__}, not a dspy.Example")
        missing = [name for name in needed if name not in example]
        if missing:
            raise ValueError(f"{what}[{index}] has no value for {missing} (the program needs {needed})")
        if not example._input_keys:  # noqa: SLF001 - dspy has no public accessor
            raise ValueError(f"{what}[{index}] marks no input fields: build it with .with_inputs({', '.join(map(repr, needed))})")


def output_labels(program: dspy.Module) -> dict[str, list[str]]:
    """The output fields whose type is a closed set of labels (``Literal[...]`` or an ``Enum``), with
    their labels, over every predictor of ``program``.

    >>> output_labels(dspy.Predict(dspy.Signature("review -> sentiment: Literal['pos', 'neg']")))
    {'sentiment': ['pos', 'neg']}
    """
    import enum
    from typing import Literal, get_args, get_origin

    found: dict[str, list[str]] = {}
    for _, predictor in predictors(program):
        for name, info in predictor.signature.output_fields.items():
            annotation = info.annotation
            if get_origin(annotation) is Literal:
                found[name] = [str(value) for value in get_args(annotation)]
            elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
                found[name] = [str(member.value) for member in annotation]
    return found


def example_inputs(example: dspy.Example) -> dict[str, Any]:
    return dict(example.inputs())
