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
) -> list[dspy.Example]:
    """Examples from a JSONL, JSON or CSV file with named columns.

    JSON may be a list of objects, ``{"examples": [...]}``, or the Instruction Induction layout
    ``{"examples": {"1": {...}, ...}}``. ``columns`` renames columns (``{"input": "review"}``);
    ``inputs`` are the program's input fields; every row must hold them and the ``required`` ones.

    Example:
        >>> load_examples("train.jsonl", ["review"], required=["sentiment"])  # doctest: +SKIP
    """
    import csv
    import json

    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    rows: list[dict[str, Any]]
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = []
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataFileError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        elif suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg})") from None
            if isinstance(data, dict) and "examples" in data:
                data = data["examples"]
            rows = list(data.values()) if isinstance(data, dict) else data
        elif suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        else:
            raise DataFileError(f"{path}: expected a .jsonl, .json or .csv file")
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if not isinstance(rows, list) or not rows:
        raise DataFileError(f"{path}: holds no examples")
    renames = dict(columns or {})
    present = {key for row in rows if isinstance(row, dict) for key in row}
    unknown = sorted(old for old in renames if old not in present)
    if unknown:
        raise DataFileError(f"{path}: no column {unknown} to rename (its columns: {sorted(present)})")
    examples = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataFileError(f"{path}, example {number}: expected an object with named fields, got {type(row).__name__}")
        row = {renames.get(key, key): value for key, value in row.items()}
        missing = [name for name in [*inputs, *required] if name not in row or row[name] in (None, "")]
        if missing:
            raise DataFileError(f"{path}, example {number}: missing field(s) {missing} (it has {sorted(row)})")
        examples.append(dspy.Example(**row).with_inputs(*inputs))
    return examples
