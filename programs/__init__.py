"""Ready-made DSPy programs to compile with cuecard's teleprompters.

Each is a normal ``dspy.Module``. Built from JSON-friendly arguments only, so a saved program can be
rebuilt by :func:`cuecard.load` without user code (the arguments are kept in ``program.cuecard_spec``).
The one registry of programs is the ``cuecard.programs`` entry-point group (``pyproject.toml``): the
names ``--program`` takes, and the only classes :func:`cuecard.load` builds by itself.

Example:
    >>> from cuecard.programs import Classify
    >>> program = Classify("review -> sentiment", labels=["positive", "negative"])
    >>> [name for name, _ in program.named_predictors()]
    ['predict']
"""

from __future__ import annotations

from typing import Any, Literal

import dspy
from cuecard.errors import ConfigError, SignatureError

_TYPES: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool, "list[str]": list[str]}


class _Spec:
    """Records the constructor's arguments, so the program can be rebuilt from a saved file; builds the
    program from the ``cuecard`` command's options (``from_options``, the CLI's only way to make one)."""

    def _remember(self, **kwargs: Any) -> None:
        self.cuecard_spec = {"class": type(self).__name__, "kwargs": kwargs}

    @classmethod
    def from_options(
        cls,
        *,
        signature: str | None = None,
        labels: list[str] | None = None,
        fields: dict[str, str] | None = None,
        instructions: str | None = None,
    ) -> Any:
        """The program from ``--signature``, ``--labels``, ``--fields``, ``--instructions`` (those it takes);
        ``ConfigError`` (a ``ValueError``) names a missing or unused option."""
        kwargs: dict[str, Any] = {}
        if signature:
            kwargs["signature"] = signature
        if instructions:
            kwargs["instructions"] = instructions
        for name, value in (("labels", labels), ("fields", fields)):
            if value:
                raise ConfigError(f"--{name} is not an option of this program")
        return cls(**kwargs)


def _one(fields: dict, what: str, signature: str) -> str:
    if len(fields) != 1:
        raise SignatureError(f"The signature {signature!r} needs exactly one {what} field, it has {list(fields)}")
    return next(iter(fields))


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
            raise ConfigError(f"Classify needs at least two distinct labels, got {labels!r}")
        self._remember(signature=signature, labels=list(labels), instructions=instructions)
        base = dspy.Signature(signature, instructions)
        output = _one(base.output_fields, "output", signature)
        self.output = output
        self.predict = dspy.Predict(base.with_updated_fields(output, type_=Literal[tuple(labels)]))

    @classmethod
    def from_options(cls, *, signature: str | None = None, labels: list[str] | None = None,
                     fields: dict[str, str] | None = None, instructions: str | None = None) -> Classify:
        if not labels:
            raise ConfigError("needs --labels (comma-separated)")
        if fields:
            raise ConfigError("--fields is not an option of this program")
        return cls(signature or "text -> label", labels=labels, **({"instructions": instructions} if instructions else {}))

    def forward(self, **inputs: Any) -> dspy.Prediction:
        return self.predict(**inputs)


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
            raise ConfigError(f"Extract fields must map names to one of {sorted(_TYPES)}; bad: {unknown or fields!r}")
        self._remember(fields=dict(fields), source=source, instructions=instructions)
        spec = {source: (str, dspy.InputField())}
        spec.update({name: (_TYPES[kind], dspy.OutputField()) for name, kind in fields.items()})
        self.extract = dspy.Predict(dspy.Signature(spec, instructions))

    @classmethod
    def from_options(cls, *, signature: str | None = None, labels: list[str] | None = None,
                     fields: dict[str, str] | None = None, instructions: str | None = None) -> Extract:
        if not fields:
            raise ConfigError('needs --fields, e.g. \'{"name": "str", "age": "int"}\'')
        if labels:
            raise ConfigError("--labels is not an option of this program")
        return cls(fields, **({"instructions": instructions} if instructions else {}))

    def forward(self, **inputs: Any) -> dspy.Prediction:
        return self.extract(**inputs)


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
        self.cuecard_inputs = list(base.input_fields)
        self.rewrite = dspy.Predict(dspy.Signature(f"{self.field} -> rewritten", rewrite_instructions))
        self.answer = dspy.Predict(base)

    def forward(self, **inputs: Any) -> dspy.Prediction:
        rewritten = self.rewrite(**{self.field: inputs[self.field]}).rewritten or inputs[self.field]
        return self.answer(**{**inputs, self.field: rewritten})


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
            raise ConfigError(f"SummarizeThenClassify needs at least two distinct labels, got {labels!r}")
        self._remember(labels=list(labels), source=source, output=output, summary_instructions=summary_instructions, instructions=instructions)
        self.source = source
        self.cuecard_inputs = [source]
        self.summarize = dspy.Predict(dspy.Signature(f"{source} -> summary", summary_instructions))
        classify = dspy.Signature(f"summary -> {output}", instructions)
        self.classify = dspy.Predict(classify.with_updated_fields(output, type_=Literal[tuple(labels)]))

    @classmethod
    def from_options(cls, *, signature: str | None = None, labels: list[str] | None = None,
                     fields: dict[str, str] | None = None, instructions: str | None = None) -> SummarizeThenClassify:
        if not labels:
            raise ConfigError("needs --labels (comma-separated)")
        source, _, output = (signature or "text -> label").partition("->")
        return cls(labels, source=source.strip(), output=output.strip(), **({"instructions": instructions} if instructions else {}))

    def forward(self, **inputs: Any) -> dspy.Prediction:
        summary = self.summarize(**{self.source: inputs[self.source]}).summary
        return self.classify(summary=summary)


class Respond(dspy.Module, _Spec):
    """An open-ended assistant: answers a request in free text (the target program BPO aligns).

    Example:
        >>> list(Respond().respond.signature.output_fields)
        ['response']
    """

    def __init__(self, signature: str = "request -> response", instructions: str = "Answer the request helpfully.") -> None:
        super().__init__()
        self._remember(signature=signature, instructions=instructions)
        self.respond = dspy.Predict(dspy.Signature(signature, instructions))

    def forward(self, **inputs: Any) -> dspy.Prediction:
        return self.respond(**inputs)


REWRITE_INSTRUCTIONS = (
    "Rewrite the user's request so that an assistant will give a more helpful, correct and harmless answer. "
    "Keep every piece of information in it, add no answer, and reply with the rewritten request only."
)


class Rewritten(dspy.Module, _Spec):
    """Any program with a rewriting stage in front: each of ``fields`` is rewritten (``passes`` times),
    then the untouched program answers. BPO compiles the rewriter's instruction and demonstrations.

    Args:
        program: the program to put a rewriter in front of, or a built-in program's spec
            (``{"class": "Respond", "kwargs": {...}}``, as saved files hold it).
        fields: the input fields to rewrite (default: the program's only input field).
        passes: iterative rewriting (the paper saw gains up to 4 passes).
        template: send each rewrite as this one user message (``{prompt}`` is the text) to the
            rewriter LM directly, for a fine-tuned rewriter model, instead of the rewrite predictor.

    Runtime settings (not saved): ``rewriter_lm`` (default: the LM in context) and ``judge``, a
    :class:`~cuecard.judge.PairwiseJudge` for ``samples`` > 1 ("aggressive" mode: several rewrites at
    temperature 0.9, each answered, the judge keeps the best answer). ``kept_original`` counts
    rewrites that came back empty (the original text is used).

    Example:
        >>> program = Rewritten(Respond())
        >>> [name for name, _ in program.named_predictors()]
        ['rewrite_request', 'program.respond']
    """

    def __init__(
        self,
        program: dspy.Module | dict[str, Any],
        fields: list[str] | None = None,
        passes: int = 1,
        samples: int = 1,
        template: str | None = None,
        instructions: str = REWRITE_INSTRUCTIONS,
    ) -> None:
        super().__init__()
        if isinstance(program, dict):
            spec = program
            from cuecard.registry import program_class

            cls = program_class(spec["class"])
            if cls is None:
                raise ConfigError(f"Rewritten: {spec['class']!r} is not a registered program (cuecard.programs entry points)")
            program = cls(**spec.get("kwargs", {}))
        from cuecard.program import required_inputs

        fields = list(fields or required_inputs(program))
        if not fields:
            raise ConfigError(f"Rewritten: say which input field(s) of {type(program).__name__} to rewrite")
        if passes < 1 or samples < 1:
            raise ConfigError(f"Rewritten needs passes >= 1 and samples >= 1, got {passes} and {samples}")
        if template is not None and "{prompt}" not in template:
            raise ConfigError("Rewritten: the rewriter template needs a {prompt} slot")
        inner = getattr(program, "cuecard_spec", None)
        if inner is not None:
            self._remember(program=inner, fields=fields, passes=passes, samples=samples, template=template, instructions=instructions)
        for field in fields:
            setattr(self, f"rewrite_{field}", dspy.Predict(dspy.Signature(f"{field} -> rewritten", instructions)))
        self.program = program
        self.cuecard_inputs = required_inputs(program)
        self.fields = fields
        self.passes = passes
        self.samples = samples
        self.template = template
        self.rewriter_lm: Any = None
        self.judge: Any = None
        self.kept_original = 0

    @classmethod
    def from_options(cls, **options: Any) -> Rewritten:
        raise ConfigError("is BPO's wrapper around another program: compile that program with --teleprompter bpo")

    def rewrite(self, field: str, text: str, *, sample: int | None = None) -> str:
        """One rewrite of ``text`` (``sample``: a distinct sample at temperature 0.9)."""
        options: dict[str, Any] = {} if sample is None else {"temperature": 0.9, "rollout_id": sample}
        context = dspy.context(lm=self.rewriter_lm) if self.rewriter_lm is not None else dspy.context()
        with context:
            if self.template is not None:
                lm = self.rewriter_lm or dspy.settings.lm
                replies = lm(messages=[{"role": "user", "content": self.template.format(prompt=text)}], **options)
                result = (replies or [""])[0] or ""
            else:
                result = getattr(self, f"rewrite_{field}")(**{field: text}, config=options).rewritten or ""
        result = str(result).strip()
        if not result:
            self.kept_original += 1
            return text
        return result

    def forward(self, **inputs: Any) -> dspy.Prediction:
        if self.samples > 1 and self.judge is not None:
            return self._aggressive(inputs)
        rewritten = dict(inputs)
        for field in self.fields:
            for _ in range(self.passes):
                rewritten[field] = self.rewrite(field, rewritten[field])
        return self.program(**rewritten)

    def _aggressive(self, inputs: dict[str, Any]) -> dspy.Prediction:
        answers = []
        for sample in range(self.samples):
            rewritten = {**inputs, **{f: self.rewrite(f, inputs[f], sample=sample) for f in self.fields}}
            answers.append(self.program(**rewritten))
        output = next(name for name in answers[0].keys() if name != "reasoning")
        question = "\n".join(str(inputs[f]) for f in self.fields)
        best = answers[0]
        for index, challenger in enumerate(answers[1:], start=1):
            verdict = self.judge.compare(question, str(challenger[output]), str(best[output]), item=f"{question}#{index}")
            if verdict.outcome == "win":
                best = challenger
        return best


__all__ = [
    "AnswerWithReasoning",
    "Classify",
    "Extract",
    "Respond",
    "Rewritten",
    "RewriteThenAnswer",
    "SummarizeThenClassify",
]
