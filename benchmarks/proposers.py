"""Does a stronger prompt model make the proposal-driven teleprompters work? One run, every method.

Compiles the sentiment program from "Classify the sentiment." on 40 Instruction Induction train
examples with each teleprompter, the embedded SmolLM2 as the task model and ``--prompt-model`` as the
proposer ("local", "local:/path/model.gguf" or a litellm model string), then scores the seed and each winner on
the 100 held-out execute examples. Prints one Markdown table (held-out accuracy, dev score, LM calls
split task/prompt, wall time, winner). Needs ../shared/data.

    .venv/bin/python benchmarks/proposers.py --prompt-model local:/path/to/qwen2.5-0.5b-instruct.gguf
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cuecard
import dspy
from cuecard.engine.policies import UCB
from cuecard.metrics import exact_match
from cuecard.teleprompters import APE, OPRO, PE2, ProTeGi

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "instruction_induction"

SETTINGS = {
    "ape": (APE, dict(num_subsamples=2, num_prompts_per_subsample=6)),
    "protegi": (ProTeGi, dict(policy=UCB(), rounds=2, beam_size=2, minibatch_size=8, n_gradients=2, errors_per_gradient=2,
                              mc_samples_per_step=1, max_expansion_factor=4, samples_per_eval=4, eval_rounds=4, prompts_per_round=4)),
    "opro": (OPRO, dict(steps=3, instructions_per_step=4, max_proposal_tokens=60)),
    "pe2": (PE2, dict(steps=2, beam=2, proposals_per_prompt=2, max_reasoning_tokens=200, max_proposal_tokens=60)),
}


def load(split: str, limit: int | None = None) -> list[dspy.Example]:
    rows = list(json.loads((DATA / split / "sentiment.json").read_text())["examples"].values())[:limit]
    return [dspy.Example(review=r["input"], sentiment=r["output"]).with_inputs("review") for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-model", default="local", help="the proposer: 'local', 'local:/path/model.gguf' or a litellm model")
    parser.add_argument("--task-model", default="local", help="the model the program runs on")
    parser.add_argument("--methods", default=",".join(SETTINGS), help="comma-separated subset of " + ",".join(SETTINGS))
    parser.add_argument("--max-dev", type=int, default=12, help="dev examples every candidate is scored on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"benchmark data not found at {DATA}", file=sys.stderr)
        return 2
    task_lm = cuecard.LM(args.task_model)
    prompt_lm = cuecard.LM(args.prompt_model) if args.prompt_model != args.task_model else task_lm
    train, test = load("induce", 40), load("execute")
    metric = exact_match("sentiment")
    evaluate = dspy.Evaluate(devset=test, metric=metric, num_threads=1, display_progress=False)
    seed_program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify the sentiment."))
    with dspy.context(lm=task_lm, adapter=cuecard.adapter_for(task_lm)):
        seed_score = evaluate(seed_program).score
    rows = []
    for method in args.methods.split(","):
        cls, settings = SETTINGS[method]
        started = time.perf_counter()
        compiled = cls(metric=metric, task_lm=task_lm, prompt_lm=prompt_lm, storage=":memory:", progress=False,
                       seed=args.seed, max_dev=args.max_dev, **settings).compile(seed_program, trainset=train)
        elapsed = time.perf_counter() - started
        report = compiled.cuecard_report
        with dspy.context(lm=task_lm, adapter=cuecard.adapter_for(task_lm)):
            held_out = evaluate(compiled).score
        proposed = [c for c in report.candidates if c.origin not in ("program", "user-seed")]
        rows.append((method, held_out, report.best.dev_score, report.seed_dev_score, len(proposed),
                     report.task_usage.model_calls, report.prompt_usage.model_calls, elapsed, report.best.instructions["self"]))
        print(f"{method}: held-out {held_out:.1f}% (seed {seed_score:.1f}%), winner {report.best.instructions['self']!r}", flush=True)
    print(f"\ntask model {args.task_model}, prompt model {args.prompt_model}, seed instruction held-out {seed_score:.1f}%\n")
    print("| method | held-out % | dev (best / seed) | proposals scored | task calls | prompt calls | time s | winner |")
    print("|---|---|---|---|---|---|---|---|")
    for method, held, dev, seed_dev, n, task_calls, prompt_calls, elapsed, winner in rows:
        print(f"| {method} | {held:.1f} | {dev:.2f} / {seed_dev:.2f} | {n} | {task_calls} | {prompt_calls} | {elapsed:.0f} | {winner[:70]!r} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
