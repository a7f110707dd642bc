"""A two-predictor pipeline compiled by each proposing method on the embedded model, saved, and reloaded.

The scripted pipeline tests (test_cap_spent, test_protegi, test_ape) check the per-predictor steps exactly;
this one checks the same path with real replies: the prompt model is asked about each predictor, the compile
stays under its cap, and the saved JSON carries both predictors' instructions to plain dspy in a new process.
"""

import json
import subprocess
import sys
from pathlib import Path

import cuecard
import dspy
import pytest
from cuecard.clients.usage import Limits
from cuecard.metrics import exact_match
from cuecard.teleprompters import APE, OPRO, PE2, ProTeGi
from sentiment_cases import REVIEWS, Pipeline

TESTS = Path(__file__).resolve().parent

RELOAD_PIPELINE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import dspy, cuecard
from sentiment_cases import Pipeline
program = Pipeline()
program.load(sys.argv[2])
lm = cuecard.LM("local")
with dspy.context(lm=lm, adapter=cuecard.adapter_for(lm)):
    print(json.dumps({"instructions": {name: p.signature.instructions for name, p in program.named_predictors()},
                      "answers": [program(review=review).sentiment for review in json.loads(sys.argv[3])]}))
"""


@pytest.mark.model
@pytest.mark.parametrize("cls", [APE, OPRO, PE2, ProTeGi])
def test_each_method_compiles_saves_and_reloads_a_pipeline_on_the_embedded_model(cls, local_lm, tmp_path):
    cap = 100
    train, dev = REVIEWS[:8], REVIEWS[8:14]
    plan = cls.plan(cap, len(train), len(dev), predictors=2)
    assert plan, f"{cls.__name__}: no plan fits a cap of {cap} (smallest: {cls.smallest_plan(len(train), len(dev), 2)})"
    teleprompter = cls(metric=exact_match("sentiment"), task_lm=local_lm, storage=":memory:", progress=False,
                       limits=Limits(max_calls=cap), **plan)
    compiled = teleprompter.compile(Pipeline(), trainset=train, valset=dev)
    report = compiled.cuecard_report

    assert report.usage.calls <= cap
    assert report.prompt_usage.model_calls > 0, report.stop_reason.text
    assert all(set(c.instructions) == {"summarize", "label"} for c in report.candidates)
    proposed = [c for c in report.candidates if c.origin != "program"]
    assert proposed or report.dropped, f"{cls.__name__}: no candidate and nothing dropped: {report.stop_reason.text}"

    reviews = [example.review for example in REVIEWS[20:23]]
    path = tmp_path / "pipeline.json"
    compiled.save(str(path))
    with dspy.context(lm=local_lm, adapter=cuecard.adapter_for(local_lm)):
        expected = [compiled(review=review).sentiment for review in reviews]
    result = subprocess.run([sys.executable, "-c", RELOAD_PIPELINE, str(TESTS), str(path), json.dumps(reviews)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    reloaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert reloaded["instructions"] == report.best.instructions
    assert reloaded["answers"] == expected
