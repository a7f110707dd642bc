"""A two-stage pipeline (summarise, then classify) compiled with APE: each predictor gets its own
instruction, induced from its own inputs and outputs in the runs that came out right.

    .venv/bin/python examples/pipeline.py
"""

import cuecard
from cuecard.datasets import reviews
from cuecard.metrics import exact_match
from cuecard.programs import SummarizeThenClassify
from cuecard.teleprompters import APE


def main() -> None:
    lm = cuecard.LM("local")
    program = SummarizeThenClassify(["positive", "negative"], source="review", output="sentiment")
    ape = APE(metric=exact_match("sentiment"), task_lm=lm, num_subsamples=1, num_prompts_per_subsample=3,
              num_demos=3, max_dev=8)
    compiled = ape.compile(program, trainset=reviews()[:24])
    report = compiled.cuecard_report
    for name, text in report.best.instructions.items():
        print(f"{name}: {text!r}")
    print(f"dev score {report.best.dev_score:.2f} (seed {report.seed_dev_score:.2f}); LM calls {report.usage.calls}")
    print(f"saved {cuecard.save(compiled, 'compiled/pipeline.json')}")


if __name__ == "__main__":
    main()
