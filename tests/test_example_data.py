"""The first run's held-out reviews: enough of them, balanced, and none a copy of a training review or of another."""

import itertools
import json
import re
from pathlib import Path

from cuecard.datasets import load_examples

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
HELD_OUT = DATA / "reviews_heldout.jsonl"
TRAIN = DATA / "reviews.jsonl"
LABELS = ["positive", "negative"]
MAX_WORD_OVERLAP = 0.45  # shared distinct words / all distinct words of the two reviews
SHARED_RUN = 5  # no run of this many words in common


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def word_overlap(a: str, b: str) -> float:
    first, second = set(words(a)), set(words(b))
    return len(first & second) / len(first | second)


def runs(text: str) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + SHARED_RUN]) for i in range(len(w) - SHARED_RUN + 1)}


def near_duplicates(pairs) -> list[tuple[str, str]]:
    return [(a, b) for a, b in pairs if word_overlap(a, b) > MAX_WORD_OVERLAP or runs(a) & runs(b)]


def test_the_held_out_file_holds_80_reviews_40_of_each_label_in_the_training_files_form():
    rows = [json.loads(line) for line in HELD_OUT.read_text(encoding="utf-8").splitlines()]
    assert all(sorted(row) == ["review", "sentiment"] for row in rows)
    examples = load_examples(HELD_OUT, ["review"], required=["sentiment"], labels={"sentiment": LABELS})
    assert len(examples) == 80
    assert sorted(e.sentiment for e in examples).count("positive") == 40
    assert all(e.review.strip() == e.review and len(words(e.review)) >= 3 for e in examples)


def test_no_held_out_review_repeats_or_nearly_repeats_another_or_a_training_review():
    held_out = [e.review for e in load_examples(HELD_OUT, ["review"])]
    train = [e.review for e in load_examples(TRAIN, ["review"])]
    assert len({" ".join(words(r)) for r in held_out}) == len(held_out)
    assert near_duplicates(itertools.combinations(held_out, 2)) == []
    assert near_duplicates(itertools.product(held_out, train)) == []
