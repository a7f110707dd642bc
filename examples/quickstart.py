"""Quickstart: a DSPy program answering sentiment questions offline on the embedded model.

    .venv/bin/python examples/quickstart.py

The output is labelled (``positive`` or ``negative``): on a local model the plain adapter decodes it
under a grammar, so the embedded SmolLM2-135M (which left alone answers in sentences, "The review is
negative.") can only write one of the labels. Which one it picks depends a lot on the instruction's
wording; that is what cuecard's teleprompters optimise.
"""

import cuecard
from cuecard.datasets import reviews
from cuecard.metrics import exact_match
from cuecard.programs import Classify


def main() -> None:
    lm = cuecard.LM("local")  # SmolLM2-135M-Instruct, in-process through llama.cpp
    cuecard.configure(lm)  # dspy.configure with the plain adapter small models can follow
    classify = Classify("review -> sentiment", labels=["positive", "negative"], instructions="Classify the sentiment.")
    metric = exact_match("sentiment")

    examples = reviews()[:20]
    correct = 0
    for example in examples:
        prediction = classify(review=example.review)
        hit = bool(metric(example, prediction))
        correct += hit
        print(f"{'ok ' if hit else 'XX '} gold={example.sentiment:<8}  answer={prediction.sentiment!r}")
    print(f"\naccuracy on {len(examples)} hand-written reviews: {correct / len(examples):.0%}")
    print(f"usage: {lm.meter.usage}")


if __name__ == "__main__":
    main()
