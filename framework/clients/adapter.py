"""A plain-text DSPy adapter that small models can follow.

DSPy's Chat and JSON adapters ask the model to write ``[[ ## field ## ]]`` markers or JSON, which a
135M model cannot do. :class:`PlainAdapter` sends the inputs as ``Field: value`` lines and the
instruction as plain text (after the inputs, before them with the output asked for by its prefix,
or as the system message); it reads the answer from plain text. An answer it cannot parse never raises: the field gets the raw text and the LM's usage meter
counts a parse failure.

Example:
    >>> import dspy
    >>> sig = dspy.Signature("review -> sentiment", "Is the review positive or negative?")
    >>> PlainAdapter().format(sig, [], {"review": "Great film."})[-1]["content"]
    'Review: Great film.\\n\\nIs the review positive or negative?'
    >>> PlainAdapter("system").format(sig, [], {"review": "Great film."})[-1]["content"]
    'Review: Great film.\\nSentiment:'
"""

from __future__ import annotations

import enum
import re
from typing import Any, Literal, get_args, get_origin

import dspy
from dspy.adapters.utils import parse_value

from ..errors import SignatureError
from .local import BARE_ANSWER
from .usage import record_parse_failure

DEFAULT_MULTILINE_FIELDS = frozenset(
    {"reasoning", "rationale", "explanation", "analysis", "thoughts", "steps", "response", "rewritten"}
)
_QUOTE_PAIRS = {'"': '"', "'": "'", "`": "`", "“": "”", "‘": "’", "*": "*"}


def field_label(signature: type[dspy.Signature], name: str) -> str:
    """The human label of a field (its DSPy prefix without the colon): ``sentiment`` -> ``Sentiment``."""
    extra = signature.fields[name].json_schema_extra or {}
    prefix = str(extra.get("prefix") or name.replace("_", " ").capitalize())
    return prefix.rstrip().rstrip(":").strip() or name


def _choices(annotation: Any) -> list[str] | None:
    if get_origin(annotation) is Literal:
        return [str(value) for value in get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(member.value) for member in annotation]
    if annotation is bool:
        return ["True", "False"]
    return None


def _strip_quotes(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTE_PAIRS and text[-1] == _QUOTE_PAIRS[text[0]]:
        text = text[1:-1].strip()
    return text


InstructionPosition = Literal["after_inputs", "before_inputs", "system", "answer_start"]


class PlainAdapter(dspy.Adapter):
    """Inputs as ``Field: value`` lines and the instruction as plain text; answers read leniently.

    Args:
        instruction_position: where the instruction goes. ``"after_inputs"`` (default): one user
            message, the input lines, then the instruction (SmolLM2-135M follows this layout best:
            see ``benchmarks/sentiment_instructions.py``). ``"before_inputs"``: the instruction, then
            the inputs and the first output's prefix (``Sentiment:``). ``"system"``: the instruction
            as the system message, the inputs and the output prefix as the user message.
            ``"answer_start"``: the inputs, then the first output's prefix followed by the
            instruction, which primes the answer (OPRO's "A_begin").
        multiline_fields: output fields kept whole; any other output field keeps only its first
            non-empty line (small models ramble after the answer).
        short_answer_tokens: cap on generated tokens when the only output is a short field (its
            first line is all that is read), unless the LM's own cap (``--max-tokens``) is lower;
            ``None`` keeps the LM's own cap.
        typed_answers: when the only output is typed (``Literal``/enum labels, ``bool``, ``int``,
            ``float``) and the model can decode under a grammar (local GGUF models), the model can
            write nothing but a valid value, as the adapter reads it (``positive``, ``True``, ``12``).
            Other models are asked as before. On SmolLM2-135M it scores as well or better and answers
            faster (``benchmarks/typed_answers.py``). Part of the run identity (it changes answers).
    """

    def __init__(
        self,
        instruction_position: InstructionPosition = "after_inputs",
        multiline_fields: frozenset[str] | set[str] = DEFAULT_MULTILINE_FIELDS,
        short_answer_tokens: int | None = 48,
        typed_answers: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if instruction_position not in get_args(InstructionPosition):
            raise ValueError(
                f"instruction_position must be one of {get_args(InstructionPosition)}, got {instruction_position!r}"
            )
        self.instruction_position = instruction_position
        self.multiline_fields = frozenset(multiline_fields)
        self.short_answer_tokens = short_answer_tokens
        self.typed_answers = typed_answers

    # ---- formatting -------------------------------------------------------------------------
    def format(
        self, signature: type[dspy.Signature], demos: list[dict[str, Any]], inputs: dict[str, Any]
    ) -> list[dict[str, Any]]:
        if not signature.output_fields:
            raise SignatureError(f"The signature {signature.signature!r} has no output field")
        task = self.format_task_text(signature)
        messages = []
        if self.instruction_position == "system":
            messages.append({"role": "system", "content": task})
        for demo in demos:
            if all(name in demo for name in signature.output_fields):
                messages.append({"role": "user", "content": self.format_inputs(signature, demo, with_prefix=True)})
                messages.append({"role": "assistant", "content": self.format_assistant_message(signature, demo)})
        if self.instruction_position == "after_inputs":
            content = f"{self.format_inputs(signature, inputs, with_prefix=False)}\n\n{task}"
        elif self.instruction_position == "before_inputs":
            content = f"{task}\n\n{self.format_inputs(signature, inputs, with_prefix=True)}"
        elif self.instruction_position == "answer_start":
            content = f"{self.format_inputs(signature, inputs, with_prefix=True)} {task}"
        else:
            content = self.format_inputs(signature, inputs, with_prefix=True)
        messages.append({"role": "user", "content": content})
        return messages

    def format_task_text(self, signature: type[dspy.Signature]) -> str:
        """The instruction, plus the output format where the signature needs one."""
        lines = [signature.instructions.strip()]
        outputs = list(signature.output_fields)
        if len(outputs) > 1:
            labels = ", ".join(f"'{field_label(signature, name)}:'" for name in outputs)
            lines.append(f"Answer with one line per field, in this order: {labels}.")
        for name, field in signature.output_fields.items():
            choices = _choices(field.annotation)
            if choices:
                lines.append(f"{field_label(signature, name)} is one of: {', '.join(choices)}.")
        return "\n".join(line for line in lines if line)

    def format_inputs(self, signature: type[dspy.Signature], values: dict[str, Any], *, with_prefix: bool) -> str:
        lines = [
            f"{field_label(signature, name)}: {self._render_value(values[name])}"
            for name in signature.input_fields
            if name in values
        ]
        if with_prefix:
            lines.append(f"{field_label(signature, next(iter(signature.output_fields)))}:")
        return "\n".join(lines)

    def format_assistant_message(self, signature: type[dspy.Signature], values: dict[str, Any]) -> str:
        outputs = list(signature.output_fields)
        first = self._render_value(values[outputs[0]])
        rest = [f"{field_label(signature, name)}: {self._render_value(values[name])}" for name in outputs[1:]]
        return "\n".join([first, *rest])

    @staticmethod
    def _render_value(value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, enum.Enum):
            return str(value.value)
        if hasattr(value, "model_dump_json"):
            return value.model_dump_json()
        if isinstance(value, (list, dict)):
            import json

            return json.dumps(value, ensure_ascii=False, default=str)
        return str(value)

    # ---- parsing ----------------------------------------------------------------------------
    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        values, _ = self.parse_with_status(signature, completion)
        return values

    def parse_with_status(self, signature: type[dspy.Signature], completion: str) -> tuple[dict[str, Any], bool]:
        """Parse ``completion``; the flag is False when some field fell back to the raw text."""
        completion = completion or ""
        outputs = list(signature.output_fields)
        sections = self._split_sections(signature, completion) if len(outputs) > 1 else {outputs[0]: completion}
        values: dict[str, Any] = {}
        ok = True
        for name in outputs:
            raw = sections.get(name)
            if raw is None:
                values[name], ok = completion.strip(), False
                continue
            value, parsed = self._parse_field(signature, name, raw)
            values[name] = value
            ok = ok and parsed
        return values, ok

    def _split_sections(self, signature: type[dspy.Signature], completion: str) -> dict[str, str]:
        names = list(signature.output_fields)
        spellings = {}
        for name in names:
            for spelling in {field_label(signature, name), name, name.replace("_", " ")}:
                spellings[spelling.lower()] = name
        pattern = re.compile(
            r"^\s*[*#]*\s*(" + "|".join(re.escape(s) for s in sorted(spellings, key=len, reverse=True)) + r")\s*[*]*\s*:\s*(.*)$",
            re.IGNORECASE,
        )
        sections: dict[str, list[str]] = {}
        current = names[0]  # the prompt ended with the first output's prefix
        sections[current] = []
        for line in completion.splitlines():
            match = pattern.match(line)
            if match:
                current = spellings[match.group(1).lower()]
                sections.setdefault(current, [])
                sections[current] = [match.group(2)]
                continue
            sections.setdefault(current, []).append(line)
        found = {name: "\n".join(lines) for name, lines in sections.items()}
        if not found.get(names[0], "").strip():
            found.pop(names[0], None)
        return found

    def _parse_field(self, signature: type[dspy.Signature], name: str, raw: str) -> tuple[Any, bool]:
        label = field_label(signature, name)
        text = raw.strip()
        prefix = re.compile(rf"^\s*[*#]*\s*(?:{re.escape(label)}|{re.escape(name)})\s*[*]*\s*:\s*", re.IGNORECASE)
        while prefix.match(text):
            text = prefix.sub("", text, count=1).strip()
        if name not in self.multiline_fields:
            text = next((line for line in text.splitlines() if line.strip()), "")
        text = _strip_quotes(text)
        if not text:
            return raw.strip(), False
        annotation = signature.output_fields[name].annotation
        if annotation is str:
            return text, True
        choices = _choices(annotation)
        if choices:
            text = self._match_choice(text, choices)
        try:
            return parse_value(text, annotation), True
        except Exception:
            return raw.strip(), False

    @staticmethod
    def _match_choice(text: str, choices: list[str]) -> str:
        lowered = text.lower().rstrip(".!")
        for choice in choices:
            if lowered == choice.lower():
                return choice
        for choice in choices:
            if re.search(rf"\b{re.escape(choice.lower())}\b", lowered):
                return choice
        return text

    # ---- the call path: count parse failures instead of raising ------------------------------
    def _call_preprocess(
        self, lm: Any, lm_kwargs: dict[str, Any], signature: type[dspy.Signature], inputs: dict[str, Any]
    ) -> type[dspy.Signature]:
        signature = super()._call_preprocess(lm, lm_kwargs, signature, inputs)
        outputs = list(signature.output_fields)
        if len(outputs) == 1 and outputs[0] not in self.multiline_fields:
            # only the first line is read: stop paying for the rest
            lm_kwargs.setdefault("stop", ["\n"])
            if self.short_answer_tokens and "max_tokens" not in lm_kwargs:  # the smaller of this cap and the LM's
                own = (getattr(lm, "kwargs", None) or {}).get("max_tokens")
                lm_kwargs["max_tokens"] = min(self.short_answer_tokens, own) if own else self.short_answer_tokens
            schema = answer_schema(signature.output_fields[outputs[0]].annotation)
            if self.typed_answers and schema is not None and _decodes_under_grammar(lm):
                lm_kwargs.setdefault(
                    "response_format", {"type": "json_schema", "json_schema": {"name": outputs[0], "schema": schema}}
                )
        return signature

    def _call_postprocess(
        self,
        processed_signature: type[dspy.Signature],
        original_signature: type[dspy.Signature],
        outputs: list[Any],
        lm: Any,
        lm_kwargs: dict[str, Any],
    ) -> list[dict[str, Any]]:
        values = []
        for output in outputs:
            text = output.get("text") if isinstance(output, dict) else output
            value, ok = self.parse_with_status(processed_signature, text or "")
            if not ok:
                record_parse_failure(getattr(lm, "meter", None), getattr(lm, "model", "unknown"), text or "",
                                     ", ".join(original_signature.output_fields))
            for name in original_signature.output_fields:
                value.setdefault(name, None)
            if isinstance(output, dict) and output.get("logprobs"):
                value["logprobs"] = output["logprobs"]
            values.append(value)
        return values


def answer_schema(annotation: Any) -> dict[str, Any] | None:
    """The bare-answer schema a grammar-capable model decodes a typed field under, or None for free text.

    Example:
        >>> answer_schema(Literal["positive", "negative"])
        {'enum': ['positive', 'negative'], 'x-cuecard-bare': True}
        >>> answer_schema(str) is None
        True
    """
    choices = _choices(annotation)
    if choices:
        return {"enum": choices, BARE_ANSWER: True}
    if annotation is int:
        return {"type": "integer", BARE_ANSWER: True}
    if annotation is float:
        return {"type": "number", BARE_ANSWER: True}
    return None


def _decodes_under_grammar(lm: Any) -> bool:
    return bool(getattr(getattr(lm, "engine", None), "supports_grammar", False))


def adapter_for(lm: Any) -> dspy.Adapter:
    """The adapter cuecard uses with ``lm``: :class:`PlainAdapter` for local models, else DSPy's ChatAdapter."""
    return PlainAdapter() if getattr(lm, "is_local", False) else dspy.ChatAdapter()


def configure(lm: Any, adapter: dspy.Adapter | None = None, **kwargs: Any) -> None:
    """``dspy.configure`` with the adapter that suits ``lm`` (see :func:`adapter_for`).

    Example:
        >>> import cuecard
        >>> cuecard.configure(cuecard.LM("local"))  # doctest: +SKIP
    """
    dspy.configure(lm=lm, adapter=adapter or adapter_for(lm), **kwargs)
