"""A compile in its own process, for the kill-and-resume test: ``python compile_worker.py RUN_DIR OUT DELAY``.

APE (induction, multi-stage scoring, one Monte Carlo round) on scripted task and prompt models whose
task replies take DELAY seconds. Prints ``compiling`` when it starts; every evaluation it stores is
appended to ``RUN_DIR/evaluated.log`` (candidate key and example); the report's outcome goes to OUT.
"""

import json
import sys
import time
from pathlib import Path

import cuecard
import dspy
from cuecard.clients.testing import scripted_lm
from cuecard.metrics import exact_match
from cuecard.teleprompters import APE
from evaluation_log import logged_evaluations


def main(run_dir: str, out: str, delay: float) -> None:
    def task(messages):
        time.sleep(delay)
        text = messages[-1]["content"]
        return "negative" if ("cold" in text or "bad" in text or len(text) % 3 == 0) else "positive"

    def proposer(messages):
        return f"Tell the sentiment, version {len(str(messages)) % 7}."

    data = cuecard.datasets.reviews()
    ape = APE(metric=exact_match("sentiment"), task_lm=scripted_lm(task, name="scripted/task"),
              prompt_lm=scripted_lm(proposer, name="scripted/prompt"), run_name="resume", run_dir=run_dir,
              progress=False, num_subsamples=2, num_prompts_per_subsample=4, mc_rounds=1, mc_top_fraction=0.5, seed=1)
    print("compiling", flush=True)
    with logged_evaluations(Path(run_dir) / "evaluated.log"):
        report = ape.compile(dspy.Predict(dspy.Signature("review -> sentiment", "Classify.")),
                             trainset=data[:16], valset=data[16:]).cuecard_report
    Path(out).write_text(json.dumps({"outcome": report.outcome()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
