"""Metrics in DSPy's convention, ``metric(example, prediction, trace=None) -> bool | float``.

Each factory compares one output field and returns a :class:`FieldMetric`. A gold value may be
one string or a list of accepted strings; a prediction whose field is missing or ``None`` scores 0.

Example:
    >>> import dspy
    >>> metric = exact_match("answer")
    >>> metric(dspy.Example(answer="Paris"), dspy.Prediction(answer="paris."))
    True
"""

from __future__ import annotations

import numbers
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from .errors import MetricError

Metric = Callable[..., "bool | float"]
Normalizer = Callable[[str], str]

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_instruction_induction(text: str) -> str:
    """Instruction Induction (APE, PE2) normalisation: first line, text before the first ".",
    lowercase, hyphens to spaces, no punctuation, single spaces."""
    text = text.strip().split("\n")[0].split(".")[0].lower()
    text = text.replace("-", " ").translate(_PUNCTUATION)
    return " ".join(text.split())


def normalize_text(text: str) -> str:
    """SQuAD normalisation: lowercase, no punctuation, no articles (a, an, the), single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


class FieldMetric:
    """A metric on one field: ``compare(gold_answers, predicted_text)`` gives the score."""

    def __init__(
        self,
        name: str,
        field: str,
        compare: Callable[[list[str], str], bool | float],
        missing: bool | float = False,
    ) -> None:
        self.name = self.__name__ = name
        self.field = field
        self._compare = compare
        self._missing = missing

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> bool | float:
        predicted = _field_value(prediction, self.field)
        if predicted is None:
            return self._missing
        return self._compare(_gold_answers(_field_value(example, self.field)), str(predicted))

    def __repr__(self) -> str:
        return f"<FieldMetric {self.name}>"


def _field_value(obj: Any, field: str) -> Any:
    get = getattr(obj, "get", None)
    return get(field) if callable(get) else getattr(obj, field, None)


def _gold_answers(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [str(answer) for answer in value if answer is not None]
    return [str(value)]


def _metric_name(kind: str, field: str, normalize: Normalizer, default: Normalizer) -> str:
    options = "" if normalize is default else f", normalize={getattr(normalize, '__name__', normalize)}"
    return f"{kind}({field}{options})"


def _whole_phrase(phrase: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(phrase)}(?!\w)", re.IGNORECASE)


def exact_match(
    field: str = "answer", *, normalize: Normalizer = normalize_instruction_induction
) -> FieldMetric:
    """True when the normalised prediction equals any normalised gold answer.

    >>> import dspy
    >>> em = exact_match("answer")
    >>> em(dspy.Example(answer=["big", "large"]), dspy.Prediction(answer="Large.\\nBecause..."))
    True
    """

    def compare(golds: list[str], predicted: str) -> bool:
        return normalize(predicted) in {normalize(gold) for gold in golds}

    name = _metric_name("exact_match", field, normalize, normalize_instruction_induction)
    return FieldMetric(name, field, compare)


def f1_score(predicted: str, gold: str, normalize: Normalizer = normalize_text) -> float:
    """SQuAD token F1 of two texts; two texts with no tokens score 1."""
    predicted_tokens, gold_tokens = normalize(predicted).split(), normalize(gold).split()
    if not predicted_tokens or not gold_tokens:
        return float(predicted_tokens == gold_tokens)
    overlap = sum((Counter(predicted_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(field: str = "answer", *, normalize: Normalizer = normalize_text) -> FieldMetric:
    """Token F1 in [0, 1], the best over the gold answers.

    >>> import dspy
    >>> f1 = token_f1("answer")
    >>> f1(dspy.Example(answer="cat sat down"), dspy.Prediction(answer="the cat sat"))
    0.8
    """

    def compare(golds: list[str], predicted: str) -> float:
        return max((f1_score(predicted, gold, normalize) for gold in golds), default=0.0)

    name = _metric_name("token_f1", field, normalize, normalize_text)
    return FieldMetric(name, field, compare, missing=0.0)


def contains(field: str = "answer", *, normalize: Normalizer = normalize_text) -> FieldMetric:
    """True when a normalised gold answer occurs in the normalised prediction as whole words.

    >>> import dspy
    >>> has = contains("answer")
    >>> has(dspy.Example(answer="no"), dspy.Prediction(answer="I know")), has(
    ...     dspy.Example(answer="no"), dspy.Prediction(answer="No, it is not."))
    (False, True)
    """

    def compare(golds: list[str], predicted: str) -> bool:
        text = normalize(predicted)
        phrases = (normalize(gold) for gold in golds)
        return any(phrase and _whole_phrase(phrase).search(text) for phrase in phrases)

    return FieldMetric(_metric_name("contains", field, normalize, normalize_text), field, compare)


def match_label(text: str, labels: Sequence[str]) -> str | None:
    """The label ``text`` names: an exact (case-insensitive) match, else the only label found in it
    as a whole word; ``None`` when no label or several labels are found."""
    wanted = text.strip().lower()
    for label in labels:
        if label.strip().lower() == wanted:
            return label
    found = [label for label in labels if _whole_phrase(label.strip()).search(text)]
    return found[0] if len(found) == 1 else None


def _check_labels(labels: Sequence[str]) -> list[str]:
    if isinstance(labels, str):
        raise MetricError(f"one_of_labels needs a sequence of labels, not the string {labels!r}")
    labels = list(labels)
    if not labels:
        raise MetricError("one_of_labels needs at least one label; got an empty list")
    seen: dict[str, str] = {}
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise MetricError(f"one_of_labels: every label must be a non-empty string; got {label!r}")
        key = label.strip().lower()
        if key in seen:
            raise MetricError(f"one_of_labels: duplicate label {label!r} (same as {seen[key]!r})")
        seen[key] = label
    return labels


def one_of_labels(labels: Sequence[str], field: str = "label") -> FieldMetric:
    """True when the prediction maps to the gold label (see :func:`match_label`; case-insensitive).

    >>> import dspy
    >>> sentiment = one_of_labels(["positive", "negative"], field="sentiment")
    >>> sentiment(dspy.Example(sentiment="positive"), dspy.Prediction(sentiment="Positive!"))
    True
    """
    checked = _check_labels(labels)

    def compare(golds: list[str], predicted: str) -> bool:
        label = match_label(predicted, checked)
        return label is not None and label.strip().lower() in {gold.strip().lower() for gold in golds}

    return FieldMetric(f"one_of_labels({field}, {'|'.join(checked)})", field, compare)


def score_to_float(value: Any) -> float:
    """A metric's result as a float in [0, 1]: ``True`` -> 1.0, ``0.25`` -> 0.25.

    >>> score_to_float(True), score_to_float(0.25)
    (1.0, 0.25)
    """
    if not isinstance(value, numbers.Real):
        raise TypeError(f"a metric must return bool, int or float; got {type(value).__name__} ({value!r})")
    score = float(value)
    if not 0.0 <= score <= 1.0:
        raise MetricError(f"a metric score must be a finite number in [0, 1]; got {value!r}")
    return score
