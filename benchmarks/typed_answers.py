"""Typed answers under a grammar on/off: the quickstart's accuracy and an APE compile's held-out gain.

With ``PlainAdapter(typed_answers=True)`` (the default) a local model answering a labelled field
decodes under a llama.cpp grammar and can only write one of the labels; with ``False`` it writes
freely and the adapter reads the label out of its sentence. For each setting this prints:

- the labelled classifier's accuracy on the 20 first hand-written reviews under a tuned instruction
  (``cuecard.datasets.SENTIMENT_INSTRUCTION``, asking for one word) and under the quickstart's generic
  one ("Classify the sentiment.", ``examples/quickstart.py``);
- an APE compile (seeded with "Classify the sentiment." and two human wordings to select among,
  ``exact_match``) on 20 reviews: the seed's and the compiled program's accuracy on the held-out
  reviews of ``examples/data/reviews_heldout.jsonl``, and the LM calls it made.

    CUECARD_THREADS=1 .venv/bin/python benchmarks/typed_answers.py [--task-model local] [--no-compile]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import cuecard
import dspy
from cuecard.datasets import SENTIMENT_INSTRUCTION, load_examples, reviews
from cuecard.metrics import exact_match
from cuecard.programs import Classify
from cuecard.teleprompters import APE

HELD_OUT = Path(__file__).resolve().parents[1] / "examples" / "data" / "reviews_heldout.jsonl"
GENERIC = "Classify the sentiment."
HUMAN_SEEDS = ["Is this review positive or negative? Answer with one word.", "Answer positive or negative."]
LABELS = ["positive", "negative"]


def accuracy(program: dspy.Module, lm: dspy.LM, adapter: dspy.Adapter, examples: list[dspy.Example]) -> float:
    metric = exact_match("sentiment")
    with dspy.context(lm=lm, adapter=adapter):
        return sum(bool(metric(e, program(**e.inputs()))) for e in examples) / len(examples)


def compile_gain(lm: dspy.LM, typed: bool, run_dir: str) -> tuple[float, float, int]:
    """(seed, compiled) held-out accuracy and the compile's LM calls."""
    adapter = cuecard.PlainAdapter(typed_answers=typed)
    program = Classify("review -> sentiment", labels=LABELS, instructions=GENERIC)
    ape = APE(metric=exact_match("sentiment"), task_lm=lm, adapter=adapter, num_subsamples=1,
              num_prompts_per_subsample=3, seed_instructions=HUMAN_SEEDS, max_dev=10, run_dir=run_dir, progress=False)
    compiled = ape.compile(program, trainset=reviews()[:20])
    held_out = load_examples(HELD_OUT, ["review"])
    return (accuracy(program, lm, adapter, held_out), accuracy(compiled, lm, adapter, held_out),
            compiled.cuecard_report.usage.calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task-model", default="local", help="'local', a pulled model's name, or a GGUF path")
    parser.add_argument("--no-compile", action="store_true", help="only the quickstart rows")
    args = parser.parse_args()
    logging.getLogger("dspy").setLevel(logging.ERROR)
    lm = cuecard.LM(args.task_model)
    print(f"task model {lm.model}; quickstart = 20 hand-written reviews; held-out = {HELD_OUT.name}\n")
    print("| typed answers | tuned instruction | quickstart (generic) | APE: seed held-out | compiled held-out | LM calls | seconds |")
    print("|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as run_dir:
        for typed in (True, False):
            adapter = cuecard.PlainAdapter(typed_answers=typed)
            started = time.perf_counter()
            quick = accuracy(Classify("review -> sentiment", labels=LABELS, instructions=SENTIMENT_INSTRUCTION),
                             lm, adapter, reviews()[:20])
            generic = accuracy(Classify("review -> sentiment", labels=LABELS, instructions=GENERIC), lm, adapter,
                               reviews()[:20])
            seed, compiled, calls = compile_gain(lm, typed, run_dir) if not args.no_compile else (None, None, 0)
            gain = f"{seed:.0%} | {compiled:.0%} | {calls}" if seed is not None else "- | - | -"
            print(f"| {'on' if typed else 'off'} | {quick:.0%} | {generic:.0%} | {gain} | "
                  f"{time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
