"""Shared pieces of the teleprompter tests: the sentiment program, data, a pipeline, a scripted task."""

import json
import re

import dspy
from cuecard.datasets import reviews

REVIEWS = reviews()
GOLD = {example.review: example.sentiment for example in REVIEWS}
ORDER = {example.review: i for i, example in enumerate(REVIEWS)}


def sentiment_program(instruction="Classify the sentiment."):
    return dspy.Predict(dspy.Signature("review -> sentiment", instruction))


def load_ii(shared_data, split, limit=None):
    """Instruction Induction sentiment examples from ../shared/data."""
    path = shared_data / "instruction_induction" / split / "sentiment.json"
    rows = list(json.loads(path.read_text())["examples"].values())[:limit]
    return [dspy.Example(review=r["input"], sentiment=r["output"]).with_inputs("review") for r in rows]


def level_task(messages):
    """A scripted task model: review i is answered right when the instruction says "Level N" and i % 10 < N."""
    text = messages[-1]["content"]
    review = re.search(r"Review: (.*)", text).group(1)
    level = re.search(r"Level (\d+)", text)
    return GOLD[review] if level and ORDER[review] % 10 < int(level.group(1)) else "neutral"


class Pipeline(dspy.Module):
    """Two predictors: summarise the review, then label the summary."""

    def __init__(self):
        super().__init__()
        self.summarize = dspy.Predict(dspy.Signature("review -> summary", "Summarize."))
        self.label = dspy.Predict(dspy.Signature("summary -> sentiment", "Label."))

    def forward(self, review):
        return self.label(summary=self.summarize(review=review).summary)


def pipeline_task(messages):
    """The two-predictor Pipeline on a scripted model: the summary repeats the review; the label is right
    for review i when i % 10 < N, N read from "Level N" in the label step's instruction (3 without one), so every
    candidate has successes to induce from and errors to learn from."""
    text = messages[-1]["content"]
    if text.startswith("Review: "):
        return text.split("\n")[0][len("Review: "):]
    summary = re.search(r"Summary: (.*)", text).group(1)
    level = re.search(r"Level (\d+)", "\n".join(m["content"] for m in messages))
    return GOLD[summary] if ORDER[summary] % 10 < (int(level.group(1)) if level else 3) else "neutral"
