"""Quickstart: a DSPy program answering sentiment questions offline on the embedded model.

    .venv/bin/python examples/quickstart.py

The output is labelled (``positive`` or ``negative``): the embedded SmolLM2-135M answers in sentences
("The review is negative."), and the plain adapter reads the label out of them. Its accuracy depends
a lot on the instruction's wording; that is what cuecard's teleprompters optimise.
"""

import cuecard
from cuecard.datasets import SENTIMENT_INSTRUCTION, reviews
from cuecard.metrics import exact_match
from cuecard.programs import Classify


def main() -> None:
    lm = cuecard.LM("local")  # SmolLM2-135M-Instruct, in-process through llama.cpp
    cuecard.configure(lm)  # dspy.configure with the plain adapter small models can follow
    classify = Classify("review -> sentiment", labels=["positive", "negative"], instructions=SENTIMENT_INSTRUCTION)
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
