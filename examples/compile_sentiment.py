"""Compile the sentiment classifier with any teleprompter, offline on the embedded model, and save it.

    .venv/bin/python examples/compile_sentiment.py ape        # or protegi, opro, pe2
    .venv/bin/python examples/serve.py compiled/ape.json      # then answer reviews with it

Half of the 40 hand-written reviews compile the program, the other half are held out. The seeds
below give APE a few human-written wordings to select among: SmolLM2-135M cannot write good
instructions itself, so with it the proposal-driven methods (ProTeGi, OPRO, PE2) mostly show the
machinery; give them a stronger ``prompt_lm`` (a GGUF path or a litellm model) for real gains.
A few minutes each on a laptop CPU.
"""

import random
import sys

import cuecard
import dspy
from cuecard.datasets import reviews
from cuecard.metrics import exact_match
from cuecard.programs import Classify
from cuecard.reporting.report import write_report
from cuecard.teleprompters import APE, OPRO, PE2, ProTeGi

HUMAN_SEEDS = ["Is this review positive or negative? Answer with one word.", "Answer positive or negative."]
SMALL = {
    "ape": (APE, dict(num_subsamples=2, num_prompts_per_subsample=3, seed_instructions=HUMAN_SEEDS)),
    "protegi": (ProTeGi, dict(rounds=2, beam_size=2, minibatch_size=8, n_gradients=2, mc_samples_per_step=1,
                              max_expansion_factor=4, samples_per_eval=4, eval_rounds=3, prompts_per_round=3)),
    "opro": (OPRO, dict(steps=3, instructions_per_step=4, seed_instructions=HUMAN_SEEDS[:1])),
    "pe2": (PE2, dict(steps=2, beam=2, proposals_per_prompt=2)),
}


def main(method: str) -> None:
    lm = cuecard.LM("local")
    data = reviews()
    random.Random(0).shuffle(data)  # the packaged list alternates labels: shuffle before splitting
    train, held_out = data[:20], data[20:]
    metric = exact_match("sentiment")
    program = Classify("review -> sentiment", labels=["positive", "negative"], instructions="Classify the sentiment.")
    cls, settings = SMALL[method]
    compiled = cls(metric=metric, task_lm=lm, max_dev=10, **settings).compile(program, trainset=train)
    report = compiled.cuecard_report

    evaluate = dspy.Evaluate(devset=held_out, metric=metric, display_progress=False)
    with dspy.context(lm=lm, adapter=cuecard.adapter_for(lm)):
        before, after = evaluate(program).score, evaluate(compiled).score
    print(f"\n{method}: held-out accuracy {before:.0f}% -> {after:.0f}% on {len(held_out)} reviews")
    print(f"winner: {report.best.instructions['predict']!r} (origin {report.best.origin})")
    print(f"LM calls: {report.usage.calls} ({report.usage.model_calls} reached the model)")
    path = cuecard.save(compiled, f"compiled/{method}.json", scores={"held_out": after / 100})
    png, page = write_report(report, f"compiled/{method}-report")
    print(f"saved {path}; report {page}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ape")
