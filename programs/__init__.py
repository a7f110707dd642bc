"""Ready-made DSPy programs to compile with cuecard's teleprompters.

Each is a normal ``dspy.Module``. Built from JSON-friendly arguments only, so a saved program can be
rebuilt by :func:`cuecard.load` without user code (the arguments are kept in ``program.cuecard_spec``).

Example:
    >>> from cuecard.programs import Classify
    >>> program = Classify("review -> sentiment", labels=["positive", "negative"])
    >>> [name for name, _ in program.named_predictors()]
    ['predict']
"""

from __future__ import annotations

from typing import Any, Literal

import dspy

BUILTIN: dict[str, type[dspy.Module]] = {}
"""Built-in program classes by name; the only classes :func:`cuecard.load` builds by itself."""

_TYPES: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool, "list[str]": list[str]}


def builtin(cls: type[dspy.Module]) -> type[dspy.Module]:
    BUILTIN[cls.__name__] = cls
    return cls


class _Spec:
    """Records the constructor's arguments, so the program can be rebuilt from a saved file."""

    def _remember(self, **kwargs: Any) -> None:
        self.cuecard_spec = {"class": type(self).__name__, "kwargs": kwargs}


def _one(fields: dict, what: str, signature: str) -> str:
    if len(fields) != 1:
        raise ValueError(f"The signature {signature!r} needs exactly one {what} field, it has {list(fields)}")
    return next(iter(fields))


@builtin
class Classify(dspy.Module, _Spec):
    """Classification into given labels: one predictor whose output field takes one of ``labels``.

    Example:
        >>> program = Classify("review -> sentiment", labels=["positive", "negative"])
        >>> program.predict.signature.output_fields["sentiment"].annotation.__args__
        ('positive', 'negative')
    """

    def __init__(self, signature: str = "text -> label", labels: list[str] | None = None, instructions: str = "Classify the text.") -> None:
        super().__init__()
        if not labels or len(set(labels)) < 2:
            raise ValueError(f"Classify needs at least two distinct labels, got {labels!r}")
        self._remember(signature=signature, labels=list(labels), instructions=instructions)
        base = dspy.Signature(signature, instructions)
        output = _one(base.output_fields, "output", signature)
        self.output = output
        self.predict = dspy.Predict(base.with_updated_fields(output, type_=Literal[tuple(labels)]))

    def forward(self, **inputs: Any) -> dspy.Prediction:
        return self.predict(**inputs)


@builtin
class AnswerWithReasoning(dspy.Module, _Spec):
    """Question answering that reasons step by step before the answer (DSPy's ``ChainOfThought``).

    Example:
        >>> program = AnswerWithReasoning("question -> answer")
        >>> list(program.answer.predict.signature.output_fields)
        ['reasoning', 'answer']
    """

    def __init__(self, signature: str = "question -> answer", instructions: str = "Answer the question.") -> None:
        super().__init__()
        self._remember(signature=signature, instructions=instructions)
        self.answer = dspy.ChainOfThought(dspy.Signature(signature, instructions))

    def forward(self, **inputs: Any) -> dspy.Prediction:
        return self.answer(**inputs)


@builtin
class Extract(dspy.Module, _Spec):
    """Extraction of typed fields from a text; ``fields`` maps each field to str, int, float, bool or list[str].

    Example:
        >>> program = Extract({"name": "str", "age": "int"}, source="bio")
        >>> program.extract.signature.output_fields["age"].annotation
        <class 'int'>
    """

    def __init__(self, fields: dict[str, str], source: str = "text", instructions: str = "Extract the fields from the text.") -> None:
        super().__init__()
        unknown = {name: kind for name, kind in fields.items() if kind not in _TYPES}
        if not fields or unknown:
            raise ValueError(f"Extract fields must map names to one of {sorted(_TYPES)}; bad: {unknown or fields!r}")
        self._remember(fields=dict(fields), source=source, instructions=instructions)
        spec = {source: (str, dspy.InputField())}
        spec.update({name: (_TYPES[kind], dspy.OutputField()) for name, kind in fields.items()})
        self.extract = dspy.Predict(dspy.Signature(spec, instructions))

    def forward(self, **inputs: Any) -> dspy.Prediction:
        return self.extract(**inputs)


@builtin
class RewriteThenAnswer(dspy.Module, _Spec):
    """A rewriting stage in front of an answering stage (BPO's shape): the input field is rewritten,
    then answered. The answer is given the rewritten text under the original field name.

    Example:
        >>> program = RewriteThenAnswer("question -> answer")
        >>> [name for name, _ in program.named_predictors()]
        ['rewrite', 'answer']
    """

    def __init__(
        self,
        signature: str = "question -> answer",
        rewrite_instructions: str = "Rewrite the request so that it is clear and complete. Keep its meaning.",
        instructions: str = "Answer the request.",
    ) -> None:
        super().__init__()
        self._remember(signature=signature, rewrite_instructions=rewrite_instructions, instructions=instructions)
        base = dspy.Signature(signature, instructions)
        self.field = _one(base.input_fields, "input", signature)
        self.rewrite = dspy.Predict(dspy.Signature(f"{self.field} -> rewritten", rewrite_instructions))
        self.answer = dspy.Predict(base)

    def forward(self, **inputs: Any) -> dspy.Prediction:
        rewritten = self.rewrite(**{self.field: inputs[self.field]}).rewritten or inputs[self.field]
        return self.answer(**{**inputs, self.field: rewritten})


@builtin
class SummarizeThenClassify(dspy.Module, _Spec):
    """A two-stage pipeline: summarise the text, then classify the summary into ``labels``.

    Example:
        >>> program = SummarizeThenClassify(labels=["positive", "negative"], source="review", output="sentiment")
        >>> [name for name, _ in program.named_predictors()]
        ['summarize', 'classify']
    """

    def __init__(
        self,
        labels: list[str],
        source: str = "text",
        output: str = "label",
        summary_instructions: str = "Summarize the text in one sentence.",
        instructions: str = "Classify the summary.",
    ) -> None:
        super().__init__()
        if not labels or len(set(labels)) < 2:
            raise ValueError(f"SummarizeThenClassify needs at least two distinct labels, got {labels!r}")
        self._remember(labels=list(labels), source=source, output=output, summary_instructions=summary_instructions, instructions=instructions)
        self.source = source
        self.summarize = dspy.Predict(dspy.Signature(f"{source} -> summary", summary_instructions))
        classify = dspy.Signature(f"summary -> {output}", instructions)
        self.classify = dspy.Predict(classify.with_updated_fields(output, type_=Literal[tuple(labels)]))

    def forward(self, **inputs: Any) -> dspy.Prediction:
        summary = self.summarize(**{self.source: inputs[self.source]}).summary
        return self.classify(summary=summary)


PROGRAM_NAMES = {
    "classify": Classify,
    "qa": AnswerWithReasoning,
    "extract": Extract,
    "rewrite-answer": RewriteThenAnswer,
    "two-stage": SummarizeThenClassify,
}
"""The names the ``cuecard`` command knows the built-in programs by."""

__all__ = [
    "BUILTIN",
    "PROGRAM_NAMES",
    "AnswerWithReasoning",
    "Classify",
    "Extract",
    "RewriteThenAnswer",
    "SummarizeThenClassify",
]
