"""A metric that cannot see the answer: every candidate gets the same score on the first stage, the
compile says so at once with one answer beside its gold, and with stop_if_metric_blind stops instead of
spending the cap."""

import itertools
import json
from pathlib import Path

import cuecard
import pytest
from cli_run import run_main
from cuecard.clients.testing import scripted_lm
from cuecard.metrics import exact_match
from cuecard.teleprompters import APE

ROOT = Path(__file__).resolve().parents[1]
REVIEWS = ROOT / "examples" / "data" / "reviews.jsonl"
PROGRAM = 'import dspy\nprogram = dspy.Predict("review -> sentiment")\n'  # no labels: the answer is free text


def sentence_reply(counter):
    def reply(messages):
        text = messages[-1]["content"]
        if "Review:" not in text or "teacher gave" in text:  # a request for an instruction
            return f"<INS>Say whether the review is positive or negative (idea {next(counter)}).</INS>"
        return "The review is positive."  # the right label, never in the form exact match wants
    return reply


@pytest.fixture
def sentence_models(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    built = []

    def make(spec, **kwargs):
        lm = scripted_lm(sentence_reply(itertools.count()), name=f"scripted/{spec}")
        lm.spec = spec
        built.append(lm)
        return lm

    monkeypatch.setattr(cuecard, "LM", make)
    return built


def labelling(answer):
    """A scripted reply: one instruction for any request for one, else ``answer(request text)``."""
    def reply(messages):
        text = messages[-1]["content"]
        if "Review:" not in text or "teacher gave" in text:
            return "Say whether the review is positive or negative."
        return answer(text)
    return reply


def saved_stop(path):
    return json.loads(Path(path).read_text())["cuecard"]["report"]["stop_reason"]


def test_a_metric_blind_compile_says_so_at_once_and_stops_when_asked(sentence_models, capsys):
    Path("prog.py").write_text(PROGRAM)
    argv = ["compile", "--program", "prog.py", "--train", str(REVIEWS), "--teleprompter", "opro", "--budget", "light"]
    code, out, err = run_main([*argv, "--set", "stop_if_metric_blind=true", "--quiet", "--out", "blind.json"], capsys)
    assert code == 0, err
    warning = [line for line in err.splitlines() if "the metric cannot tell them apart" in line]
    assert len(warning) == 1, err
    assert "every candidate scored 0" in warning[0] and "the search stopped here" in warning[0]
    assert "the program answered \"{'sentiment': 'The review is positive.'}\"" in warning[0]
    assert "the gold is" in warning[0] and "--labels" in warning[0]
    assert saved_stop("blind.json")["kind"] == "metric blind"
    assert "search stopped: the metric cannot tell the candidates apart" in out
    stopped_calls = sum(len(lm.engine.requests) for lm in sentence_models)

    code, _, err = run_main([*argv, "--quiet", "--out", "on.json"], capsys)  # the default: said, and searched on
    assert code == 0, err
    assert "cannot tell them apart" in err and "the search goes on" in err
    assert saved_stop("on.json")["kind"] != "metric blind"
    assert sum(len(lm.engine.requests) for lm in sentence_models) - stopped_calls > stopped_calls  # the rest of the cap


def test_scores_that_differ_anywhere_are_not_blind(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    import dspy
    from sentiment_cases import REVIEWS as EXAMPLES

    lm = scripted_lm(labelling(lambda text: "negative" if "cold" in text else "positive"))
    ape = APE(metric=exact_match("sentiment"), task_lm=lm, prompt_lm=lm, storage=":memory:", progress=False,
              num_subsamples=1, num_prompts_per_subsample=2)
    report = ape.compile(dspy.Predict("review -> sentiment"), trainset=EXAMPLES[:12]).cuecard_report
    assert report.stop_reason.kind != "metric blind"


def test_every_answer_right_is_no_blind_metric(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    import dspy
    from sentiment_cases import REVIEWS as EXAMPLES

    lm = scripted_lm(labelling(lambda text: next(e.sentiment for e in EXAMPLES if e.review in text)))  # always gold
    ape = APE(metric=exact_match("sentiment"), task_lm=lm, prompt_lm=lm, storage=":memory:", progress=False,
              num_subsamples=1, num_prompts_per_subsample=2, stop_if_metric_blind=True)
    report = ape.compile(dspy.Predict("review -> sentiment"), trainset=EXAMPLES[:12]).cuecard_report
    assert report.stop_reason.kind != "metric blind"
    assert not any("cannot tell them apart" in note for note in report.notes)
