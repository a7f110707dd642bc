"""Small hand-written datasets that ship with cuecard, so examples and tests run with no download.

Example:
    >>> data = reviews()
    >>> len(data), data[0].sentiment
    (40, 'positive')
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dspy

from .errors import DataFileError

SENTIMENT_INSTRUCTION = (
    "Decide whether the review is positive or negative. Reply with only the word positive or the word negative."
)
"""A wording the embedded SmolLM2-135M follows on the plain adapter's default layout."""

_POSITIVE = [
    "I loved this movie, the acting was wonderful and the story moved me.",
    "Absolutely fantastic meal, the best pasta I have had in years.",
    "The hotel staff were friendly and the room was spotless. Highly recommended.",
    "What a great book! I could not put it down.",
    "This phone is fast, the battery lasts all day, and the camera is superb.",
    "A delightful film with a brilliant cast. I smiled the whole time.",
    "The concert was amazing and the band sounded perfect.",
    "Excellent service and delicious food. We will definitely come back.",
    "My new headphones sound incredible and feel very comfortable.",
    "The teacher was patient and kind, and I learned so much.",
    "Beautiful scenery, lovely weather, and a perfect holiday overall.",
    "This is the best coffee shop in town, cozy and welcoming.",
    "The update made the app faster and much easier to use. Great job!",
    "I am thrilled with my purchase; it works exactly as promised.",
    "An inspiring and heartwarming story that I will remember for years.",
    "The museum tour was fascinating and the guide was wonderful.",
    "Great value for money, sturdy build, and quick delivery.",
    "The show was hilarious and the actors were brilliant.",
    "I enjoyed every minute of this game; it is fun and beautifully made.",
    "The new bakery is wonderful, their bread is fresh and tasty.",
]

_NEGATIVE = [
    "I hated this movie, it was boring and far too long.",
    "Terrible meal, the soup was cold and the waiter was rude.",
    "The hotel room was dirty and the staff ignored our complaints.",
    "What an awful book. I gave up after three chapters.",
    "This phone is slow, the battery dies by noon, and the screen cracked.",
    "A dull film with a weak plot and wooden acting.",
    "The concert was a disaster, the sound was muddy and too loud.",
    "Horrible service and bland food. We will never come back.",
    "My new headphones broke after two days and sound tinny.",
    "The course was a waste of money; the teacher was unprepared.",
    "The trip was miserable, it rained every day and the bus broke down.",
    "This is the worst coffee I have ever tasted, bitter and burnt.",
    "The update made the app crash constantly. Very disappointing.",
    "I regret this purchase; it stopped working within a week.",
    "A depressing, pointless story that I want to forget.",
    "The museum was overcrowded, overpriced and badly organised.",
    "Poor quality, flimsy build, and the delivery was two weeks late.",
    "The show was painfully unfunny and the actors seemed bored.",
    "I did not enjoy this game at all; it is buggy and frustrating.",
    "The new bakery is awful, their bread was stale and overpriced.",
]


def reviews() -> list[dspy.Example]:
    """40 clear, hand-written product and film reviews labelled ``positive`` / ``negative`` (alternating)."""
    rows = []
    for positive, negative in zip(_POSITIVE, _NEGATIVE, strict=True):
        rows.append(dspy.Example(review=positive, sentiment="positive").with_inputs("review"))
        rows.append(dspy.Example(review=negative, sentiment="negative").with_inputs("review"))
    return rows


def load_examples(
    path: str | os.PathLike[str],
    inputs: Sequence[str],
    *,
    columns: Mapping[str, str] | None = None,
    required: Sequence[str] = (),
    labels: Mapping[str, Sequence[str]] | None = None,
) -> list[dspy.Example]:
    """Examples from a JSONL, JSON or CSV file with named columns (UTF-8, with or without a byte-order mark).

    JSON may be a list of objects, ``{"examples": [...]}``, or the Instruction Induction layout
    ``{"examples": {"1": {...}, ...}}``. ``columns`` renames columns (``{"input": "review"}``);
    ``inputs`` are the program's input fields; every row must hold them and the ``required`` ones.
    ``labels`` maps an output field to the values it may take (a classifier's labels): a row with
    another value is refused, naming the value, the line and the labels the file holds.

    Example:
        >>> load_examples("train.jsonl", ["review"], required=["sentiment"])  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    located = _read_rows(path)
    if not located:
        raise DataFileError(f"{path}: holds no examples")
    renames = dict(columns or {})
    present = {key for _, row in located if isinstance(row, dict) for key in row}
    unknown = sorted(old for old in renames if old not in present)
    if unknown:
        raise DataFileError(f"{path}: no column {unknown} to rename (its columns: {sorted(present)})")
    examples, rows = [], []
    for where, row in located:
        if not isinstance(row, dict):
            raise DataFileError(f"{path}, {where}: expected an object with named fields, got {type(row).__name__}")
        row = {renames.get(key, key): value for key, value in row.items()}
        missing = [name for name in [*inputs, *required] if name not in row or row[name] in (None, "")]
        if missing:
            raise DataFileError(f"{path}, {where}: missing field(s) {missing} (it has {sorted(row)})")
        rows.append((where, row))
        examples.append(dspy.Example(**row).with_inputs(*inputs))
    for field, allowed in (labels or {}).items():
        _check_labels(path, rows, field, list(allowed))
    return examples


def _read_rows(path: Path) -> list[tuple[str, Any]]:
    """The file's rows, each with where it is (``line N`` for JSONL and CSV, ``example N`` for JSON)."""
    import csv
    import json

    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = []
            for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append((f"line {number}", json.loads(line)))
                    except json.JSONDecodeError as exc:
                        raise DataFileError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
                    except RecursionError:
                        raise DataFileError(f"{path}, line {number}: nested too deeply to read as an example") from None
            return rows
        if suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8-sig"))
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg})") from None
            except RecursionError:
                raise DataFileError(f"{path}: nested too deeply to read as examples") from None
            if isinstance(data, dict) and "examples" in data:
                data = data["examples"]
            data = list(data.values()) if isinstance(data, dict) else data
            if not isinstance(data, list):
                raise DataFileError(f"{path}: expected a list of examples, got {type(data).__name__}")
            return [(f"example {number}", row) for number, row in enumerate(data, start=1)]
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                rows = []
                for row in reader:
                    rows.append((f"line {reader.line_num}", row))
                return rows
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 text ({exc.reason})") from None
    raise DataFileError(f"{path}: expected a .jsonl, .json or .csv file")


def _check_labels(path: Path, rows: list[tuple[str, dict[str, Any]]], field: str, allowed: list[str]) -> None:
    """Refuse the first row whose ``field`` is none of ``allowed`` (compared as the metrics compare text)."""
    from .metrics import normalize_text

    known = {normalize_text(label) for label in allowed}
    found = sorted({str(v) for _, row in rows for v in _answers(row.get(field))})
    for where, row in rows:
        answers = _answers(row.get(field))
        if answers and not any(normalize_text(str(answer)) in known for answer in answers):
            raise DataFileError(
                f"{path}, {where}: {field} {answers[0]!r} is not one of the labels {', '.join(allowed)} "
                f"(the file's {field} values: {', '.join(found)})"
            )


def _answers(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def example_key(example: dspy.Example, *, inputs_only: bool = False) -> str:
    """A canonical text of an example (its fields and which are inputs), or of its inputs only."""
    import json

    fields = dict(example.inputs().items()) if inputs_only else dict(example.items())
    return json.dumps([fields, sorted(example._input_keys or [])], sort_keys=True, default=str, ensure_ascii=False)  # noqa: SLF001


def distinct(examples: Sequence[dspy.Example]) -> list[dspy.Example]:
    """``examples`` without exact duplicates (the first of each kept, in order).

    >>> a = dspy.Example(q="1", a="x").with_inputs("q")
    >>> len(distinct([a, a, dspy.Example(q="2", a="x").with_inputs("q")]))
    2
    """
    seen: set[str] = set()
    kept = []
    for example in examples:
        key = example_key(example)
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept
