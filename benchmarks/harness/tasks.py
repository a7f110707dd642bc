"""Benchmark tasks: a signature, a metric, an example pool and seeded train/dev/test splits.

Loaders read the formats in the shared benchmark data in place: Instruction Induction
(``induce``/``execute``/``annotations``, scored with the papers' normalisation), BIG-Bench Hard
(exact match on the target) and any JSONL/JSON/CSV file with named columns.

The test split is drawn once per task (with ``test_seed``) and shared by every seed: seeds vary the
train/dev draw and each method's own sampling, so every method and seed is scored on one test set.
For Instruction Induction the test comes from the ``execute`` file, as in the papers.

Example:
    >>> task = instruction_induction("sentiment", "../shared/data/instruction_induction")  # doctest: +SKIP
    >>> splits = task.splits(seed=0, n_train=20, n_dev=10, n_test=50)  # doctest: +SKIP
    >>> program = task.program()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
from cuecard.datasets import DataFileError, load_examples
from cuecard.metrics import FieldMetric, exact_match

II_SEED_INSTRUCTIONS = {
    "sentiment": "Classify the sentiment.",
    "antonyms": "Give the antonym.",
    "larger_animal": "Name the larger animal.",
    "singular_to_plural": "Give the plural.",
    "first_word_letter": "Give the first letter.",
    "negation": "Negate the sentence.",
    "sum": "Add the numbers.",
    "word_in_context": "Compare the word's meanings.",
    "diff": "Subtract the numbers.",
    "informal_to_formal": "Make the sentence formal.",
    "letters_list": "Spell out the word.",
    "orthography_starts_with": "Find the word that starts with the letter.",
    "rhymes": "Give a rhyme.",
    "sentence_similarity": "Rate how similar the sentences are.",
    "taxonomy_animal": "List the animals.",
}
"""Terse seed instructions, the kind a user writes first (sentiment's is the one the issues use)."""

BBH_SEED_INSTRUCTIONS = {
    "boolean_expressions": "Evaluate the expression.",
    "causal_judgement": "Answer the question about causation.",
    "date_understanding": "Pick the right date.",
    "disambiguation_qa": "Find what the pronoun refers to.",
    "movie_recommendation": "Pick the similar movie.",
    "navigate": "Say whether you end where you started.",
    "object_counting": "Count the objects.",
    "snarks": "Pick the sarcastic statement.",
    "sports_understanding": "Say whether the sentence is plausible.",
    "web_of_lies": "Say whether the person tells the truth.",
}
"""Terse seeds for BIG-Bench Hard: a task's name put as a request, with no answer format (the input asks the question)."""

DEFAULT_SEED_INSTRUCTION = "Answer the question."

HALVES_RULE = (
    "within each suite (Instruction Induction, BIG-Bench Hard), the tasks sorted by name alternate: "
    "1st, 3rd, 5th... form the tuning half, 2nd, 4th, 6th... the report half"
)
"""How the visible tasks split into a half to tune on and a half to report on (fixed before any result was read)."""


def task_halves(data: str | os.PathLike[str]) -> dict[str, list[str]]:
    """The task specs of the tuning and report halves (:data:`HALVES_RULE`), from the task files under ``data``.

    Example:
        >>> task_halves("../shared/data")["tuning"][:2]  # doctest: +SKIP
        ['ii:antonyms', 'ii:first_word_letter']
    """
    root = Path(data)
    suites = [("ii", sorted(p.stem for p in (root / "instruction_induction" / "induce").glob("*.json"))),
              ("bbh", sorted(p.stem for p in (root / "bbh").glob("*.json")))]
    halves: dict[str, list[str]] = {"tuning": [], "report": []}
    for kind, names in suites:
        for index, name in enumerate(names):
            halves["tuning" if index % 2 == 0 else "report"].append(f"{kind}:{name}")
    return halves


def half_of(task_name: str, halves: dict[str, list[str]]) -> str | None:
    """``"tuning"`` or ``"report"`` for a task named as in the tables (its spec without the suite), else None."""
    for half, specs in halves.items():
        if any(spec.split(":", 1)[1] == task_name for spec in specs):
            return half
    return None


@dataclass
class Splits:
    """One seed's examples: ``train`` and ``dev`` for the optimizer, ``test`` for the held-out score."""

    train: list[dspy.Example]
    dev: list[dspy.Example]
    test: list[dspy.Example]


@dataclass
class Task:
    """A benchmark task.

    Args:
        name: short name used in tables and run names.
        signature: the program's signature, e.g. ``"input -> output"``.
        metric: ``metric(example, prediction, trace=None)``.
        pool: examples that train and dev are drawn from.
        test_pool: examples the test is drawn from; ``None`` carves the test out of ``pool``.
        seed_instruction: the instruction the program starts from (the "seed" baseline).
        human_instructions: instructions written by people (the "human" baselines), may be empty.
    """

    name: str
    signature: str
    metric: Callable[..., Any]
    pool: list[dspy.Example]
    test_pool: list[dspy.Example] | None = None
    seed_instruction: str = DEFAULT_SEED_INSTRUCTION
    human_instructions: list[str] = field(default_factory=list)
    test_seed: int = 0

    def program(self, instruction: str | None = None) -> dspy.Module:
        """A one-predictor program for the task, carrying ``instruction`` (default: the seed instruction)."""
        return dspy.Predict(dspy.Signature(self.signature, instruction or self.seed_instruction))

    def splits(self, seed: int, n_train: int, n_dev: int, n_test: int) -> Splits:
        """Seeded train/dev draws and the task's fixed test draw; raises when the pool is too small."""
        test_source = self.test_pool if self.test_pool is not None else self.pool
        test_order = list(range(len(test_source)))
        random.Random(self.test_seed).shuffle(test_order)
        test = [test_source[i] for i in test_order[:n_test]]
        if self.test_pool is None:
            held = set(test_order[:n_test])
            rest = [example for i, example in enumerate(self.pool) if i not in held]
        else:
            rest = list(self.pool)
        if len(test) < n_test or len(rest) < n_train + n_dev:
            raise ValueError(
                f"task {self.name!r}: {len(rest)} examples for train+dev and {len(test)} for test; "
                f"asked for {n_train}+{n_dev} and {n_test}"
            )
        random.Random(seed).shuffle(rest)
        return Splits(train=rest[:n_train], dev=rest[n_train : n_train + n_dev], test=test)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg})") from None


def _ii_examples(path: Path) -> list[dspy.Example]:
    data = _read_json(path)
    rows = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(rows, dict) or not rows:
        raise DataFileError(f'{path}: expected {{"examples": {{"1": {{"input", "output"}}, ...}}}}')
    examples = []
    for key, row in rows.items():
        if not isinstance(row, dict) or "input" not in row or "output" not in row:
            raise DataFileError(f"{path}, example {key}: needs 'input' and 'output'")
        golds = [row["output"], *[o for o in row.get("possible_outputs", []) if o != row["output"]]]
        examples.append(dspy.Example(input=row["input"], output=golds if len(golds) > 1 else golds[0]).with_inputs("input"))
    return examples


def instruction_induction(name: str, root: str | os.PathLike[str], *, seed_instruction: str | None = None) -> Task:
    """An Instruction Induction task from ``root/{induce,execute,annotations}/<name>.json``.

    Train and dev come from ``induce``, test from ``execute``; a prediction is right when it matches
    any gold answer (``possible_outputs`` included) after the papers' normalisation (first line, text
    before the first ".", lowercase, no punctuation). The ``annotations`` are the human baselines.
    """
    root = Path(root)
    annotations_path = root / "annotations" / f"{name}.json"
    humans = _read_json(annotations_path).get("annotations", []) if annotations_path.exists() else []
    return Task(
        name=name,
        signature="input -> output",
        metric=exact_match("output"),
        pool=_ii_examples(root / "induce" / f"{name}.json"),
        test_pool=_ii_examples(root / "execute" / f"{name}.json"),
        seed_instruction=seed_instruction or II_SEED_INSTRUCTIONS.get(name, DEFAULT_SEED_INSTRUCTION),
        human_instructions=[str(text) for text in humans],
    )


def normalize_target(text: str) -> str:
    """BIG-Bench Hard answer normalisation: surrounding space, quotes and one final period removed, case folded.

    >>> normalize_target(' "No." ')
    'no'
    """
    text = text.strip().strip("\"'`").strip()
    return re.sub(r"\.$", "", text).strip().casefold()


def bbh_exact_match(field_name: str = "answer") -> FieldMetric:
    """Exact match of the whole answer with the target (after :func:`normalize_target`)."""

    def compare(golds: list[str], predicted: str) -> bool:
        return normalize_target(predicted) in {normalize_target(gold) for gold in golds}

    return FieldMetric(f"bbh_exact_match({field_name})", field_name, compare)


def bbh(name: str, root: str | os.PathLike[str], *, seed_instruction: str | None = None) -> Task:
    """A BIG-Bench Hard task from ``root/<name>.json`` (``{"examples": [{"input", "target"}]}``).

    The program is ``question -> answer``; the test is carved out of the file, the rest is the pool.
    """
    path = Path(root) / f"{name}.json"
    data = _read_json(path)
    rows = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise DataFileError(f'{path}: expected {{"examples": [{{"input", "target"}}, ...]}}')
    examples = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or "input" not in row or "target" not in row:
            raise DataFileError(f"{path}, example {number}: needs 'input' and 'target'")
        examples.append(dspy.Example(question=row["input"], answer=str(row["target"])).with_inputs("question"))
    return Task(
        name=name,
        signature="question -> answer",
        metric=bbh_exact_match("answer"),
        pool=examples,
        seed_instruction=seed_instruction or BBH_SEED_INSTRUCTIONS.get(name, DEFAULT_SEED_INSTRUCTION),
    )


def jsonl_task(
    path: str | os.PathLike[str],
    *,
    inputs: Sequence[str],
    output: str,
    name: str | None = None,
    columns: dict[str, str] | None = None,
    metric: Callable[..., Any] | None = None,
    seed_instruction: str | None = None,
    test_path: str | os.PathLike[str] | None = None,
) -> Task:
    """A task from a JSONL (or JSON, CSV) file with named columns, scored by exact match on ``output``.

    Example:
        >>> jsonl_task("reviews.jsonl", inputs=["review"], output="sentiment")  # doctest: +SKIP
    """
    pool = load_examples(path, inputs, columns=columns, required=[output])
    test_pool = load_examples(test_path, inputs, columns=columns, required=[output]) if test_path else None
    return Task(
        name=name or Path(path).stem,
        signature=f"{', '.join(inputs)} -> {output}",
        metric=metric or exact_match(output),
        pool=pool,
        test_pool=test_pool,
        seed_instruction=seed_instruction or DEFAULT_SEED_INSTRUCTION,
    )
