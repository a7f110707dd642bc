"""ProTeGi: round structure with a scripted prompt model; real-model improvement; save/load."""

import itertools
import json
import re

import cuecard
import dspy
import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.datasets import reviews
from cuecard.engine.policies import UCB, FullEvaluation, SuccessiveHalving
from cuecard.metrics import exact_match
from cuecard.teleprompters import ProTeGi
from cuecard.teleprompters.base import READINGS
from cuecard.teleprompters.proposals import parse_items

GOLD = {example.review: example.sentiment for example in reviews()}


def sentiment_program(instruction="Classify the sentiment."):
    return dspy.Predict(dspy.Signature("review -> sentiment", instruction))


class ScriptedProposer:
    def __init__(self):
        self.counter = itertools.count()
        self.lm = scripted_lm(self.reply, name="scripted/proposer")

    def reply(self, messages):
        text = messages[-1]["content"]
        n = next(self.counter)
        if "give 1 reason" in text:
            return f"<START>Reason {n}: it never says what to do with praise.<END>"
        if "better instruction" in text:
            return f"<START>Fix {n}: answer positive for praise, else negative.<END>"
        return f"<START>Paraphrase {n}.<END>"

    def prompts(self, kind):
        return [r[-1]["content"] for r in self.lm.engine.requests if kind in r[-1]["content"]]


def task_reply(messages):
    text = messages[-1]["content"]
    review = re.search(r"Review: (.*)", text).group(1)
    if "Fix 2:" in text:  # one particular edit makes the model right (the first: requests 0 and 1 are the two gradients, asked together)
        return GOLD.get(review, "positive")
    return "negative"


def test_parse_items_is_lenient():
    assert parse_items("<START>a<END> and <START>b<END>", 5) == ["a", "b"]
    assert parse_items("<START>only an opening tag", 1) == ["only an opening tag"]
    assert parse_items("1. first\n2. second\n3. third", 2) == ["first", "second"]
    assert parse_items("just text", 1) == ["just text"]
    assert parse_items("", 1) == []


def test_round_structure_with_a_scripted_prompt_model():
    proposer = ScriptedProposer()
    task = scripted_lm(task_reply)
    config = dict(rounds=2, beam_size=2, minibatch_size=10, n_gradients=2, errors_per_gradient=3,
                  mc_samples_per_step=1, max_expansion_factor=4, samples_per_eval=4, eval_rounds=2, prompts_per_round=3)
    protegi = ProTeGi(metric=exact_match("sentiment"), task_lm=task, prompt_lm=proposer.lm, policy=SuccessiveHalving(), task_rule=False,
                      storage=":memory:", progress=False, patience=5, **config)
    compiled = protegi.compile(sentiment_program(), trainset=reviews())
    report = compiled.cuecard_report

    # the gradient call sees exactly the sampled errors: every example shown is one the seed got wrong
    first_gradient = proposer.prompts("give 1 reason")[0]
    shown = re.findall(r"Review: (.*)", first_gradient)
    assert len(shown) == 3
    assert all(GOLD[review] == "positive" for review in shown)  # the seed always says negative
    assert first_gradient.count("Model's sentiment: negative") == 3
    assert first_gradient.count("Correct sentiment: positive") == 3
    # each edit sees its gradient
    for edit_prompt in proposer.prompts("better instruction"):
        assert re.search(r"One reason it fails: Reason \d+: it never says", edit_prompt)
    # round 1: one parent x 2 gradients; round 2: at most beam_size parents x 2 gradients
    assert len(proposer.prompts("give 1 reason")) <= 2 + 2 * 2
    # the beam and the per-round budget
    round_one = [c for c in report.candidates if c.round == 1]
    assert 0 < len(round_one) <= 4
    assert [h["round"] for h in report.history] == [1, 2]
    for step in report.history:
        assert step["selection_evaluations"] <= protegi.config.selection_budget
        assert len(step["beam"]) <= 2
    round_two_parents = {c.parent for c in report.candidates if c.round == 2}
    assert round_two_parents <= set(report.history[0]["beam"])
    # lineage: a child records its parent, its gradient, and whether it is an edit or a paraphrase
    keys = {c.key for c in report.candidates}
    child = next(c for c in report.candidates if c.origin == "edit")
    assert child.parent in keys
    assert child.meta["gradient"].startswith("Reason")
    assert {c.origin for c in report.candidates} >= {"program", "edit", "paraphrase"}
    assert "Fix 2:" in report.best.instructions["self"]


def test_a_program_that_never_fails_ends_cleanly_with_the_seed():
    task = scripted_lm(lambda m: GOLD.get(re.search(r"Review: (.*)", m[-1]["content"]).group(1), "positive"))
    proposer = ScriptedProposer()
    report = ProTeGi(metric=exact_match("sentiment"), task_lm=task, prompt_lm=proposer.lm, storage=":memory:",
                     progress=False, minibatch_size=8, samples_per_eval=2, eval_rounds=2, prompts_per_round=2,
                     ).compile(sentiment_program(), trainset=reviews()).cuecard_report
    assert report.best.origin == "program"
    assert report.stop_reason.kind == "nothing new" and "nothing to learn from" in report.stop_reason.text
    assert proposer.lm.meter.usage.calls == READINGS  # the task is read up front; no gradient is asked for


def test_a_budget_too_small_for_one_round_is_refused_before_any_call():
    task = scripted_lm(task_reply)
    with pytest.raises(ValueError, match="too small for one ProTeGi round"):
        ProTeGi(metric=exact_match("sentiment"), task_lm=task, storage=":memory:", max_evaluations=10,
                ).compile(sentiment_program(), trainset=reviews())
    with pytest.raises(ValueError, match="beam_size"):
        ProTeGi(metric=exact_match("sentiment"), task_lm=task, beam_size=0)
    assert task.meter.usage.calls == 0


@pytest.mark.model
def test_protegi_end_to_end_on_held_out_sentiment_with_the_embedded_model(
    shared_data, local_lm, tmp_path, same_answers_after_reload
):
    """The whole path on the real model. The issue's target (held-out accuracy above the seed's) is
    not asserted: with SmolLM2-135M as proposer no edit has beaten the seed here (measured 0% -> 0%,
    see the issue note); dev selection must at least never pick something worse than the seed."""
    path = shared_data / "instruction_induction"
    rows = list(json.loads((path / "induce" / "sentiment.json").read_text())["examples"].values())[:40]
    train = [dspy.Example(review=r["input"], sentiment=r["output"]).with_inputs("review") for r in rows]
    rows = list(json.loads((path / "execute" / "sentiment.json").read_text())["examples"].values())
    test = [dspy.Example(review=r["input"], sentiment=r["output"]).with_inputs("review") for r in rows]
    metric = exact_match("sentiment")
    protegi = ProTeGi(metric=metric, task_lm=local_lm, policy=UCB(), storage=":memory:", progress=False,
                      rounds=2, beam_size=2, minibatch_size=8, n_gradients=2, errors_per_gradient=2,
                      mc_samples_per_step=1, max_expansion_factor=4, samples_per_eval=4, eval_rounds=4,
                      prompts_per_round=4, max_dev=16)
    compiled = protegi.compile(sentiment_program(), trainset=train)
    report = compiled.cuecard_report
    evaluate = dspy.Evaluate(devset=test, metric=metric, num_threads=1, display_progress=False)
    with dspy.context(lm=local_lm, adapter=cuecard.adapter_for(local_lm)):
        seed_score = evaluate(sentiment_program()).score
        best_score = evaluate(compiled).score
    lineage = []
    by_key = {c.key: c for c in report.candidates}
    node = report.best
    while node is not None:
        lineage.append(f"{node.origin}: {node.instructions['self']!r}" + (f" (gradient: {node.meta.get('gradient')!r})" if node.meta.get("gradient") else ""))
        node = by_key.get(node.parent) if node.parent else None
    print(f"\nProTeGi sentiment: seed {seed_score:.1f}% -> {best_score:.1f}% on {len(test)} held-out; "
          f"LM calls {report.usage.model_calls}; lineage: {' <- '.join(lineage)}; notes: {report.notes}")
    assert report.history and report.history[0]["children"] > 0
    assert any(c.origin == "edit" and c.meta.get("gradient") for c in report.candidates)
    assert report.best.dev_score >= report.seed_dev_score

    same_answers_after_reload(compiled, tmp_path / "protegi.json", [{"review": e.review} for e in test[:4]])


def test_full_evaluation_is_the_brute_force_selection():
    proposer = ScriptedProposer()
    task = scripted_lm(task_reply)
    report = ProTeGi(metric=exact_match("sentiment"), task_lm=task, prompt_lm=proposer.lm, policy=FullEvaluation(),
                     storage=":memory:", progress=False, rounds=1, beam_size=2, minibatch_size=10, n_gradients=2,
                     errors_per_gradient=2, mc_samples_per_step=0, samples_per_eval=4, eval_rounds=2, prompts_per_round=3,
                     ).compile(sentiment_program(), trainset=reviews()).cuecard_report
    scored = [c for c in report.candidates if c.round == 1]
    assert scored and len({c.dev_examples for c in scored}) == 1


def test_a_pipeline_gets_gradients_and_edits_for_every_predictor():
    from sentiment_cases import Pipeline

    def task_reply(messages):
        text = messages[-1]["content"]
        if text.startswith("Review: "):
            return "gist of " + text.split("\n")[0][len("Review: "):][:15]
        return "negative"  # the label step is always wrong on a positive review

    proposer = ScriptedProposer()
    report = ProTeGi(metric=exact_match("sentiment"), task_lm=scripted_lm(task_reply), prompt_lm=proposer.lm, task_rule=False,
                     storage=":memory:", progress=False, rounds=1, beam_size=2, minibatch_size=10, n_gradients=2,
                     errors_per_gradient=2, mc_samples_per_step=0, samples_per_eval=4, eval_rounds=2, prompts_per_round=3,
                     ).compile(Pipeline(), trainset=reviews()[:12]).cuecard_report
    assert len(proposer.prompts("give 1 reason")) == 2 * 2  # n_gradients for each of the two predictors
    edited = {name for c in report.candidates if c.origin == "edit"
              for name, text in c.instructions.items() if text != {"summarize": "Summarize.", "label": "Label."}[name]}
    assert edited == {"summarize", "label"}
