"""The answer-form check after the search: the winner with one sentence asking for the answer alone, scored on
every dev example, replaces the winner only when it scores higher there, and then faces the do-no-harm check.

Scripted task models check the decision step by step; the last test runs the check on the embedded model.
"""

import re
from types import SimpleNamespace

import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.clients.usage import Limits
from cuecard.metrics import exact_match
from cuecard.stopping import StopKind
from cuecard.teleprompters import APE, OPRO, PE2, ProTeGi
from cuecard.teleprompters.proposing import ANSWER_FORM
from sentiment_cases import GOLD, REVIEWS, Pipeline, level_task, sentiment_program

ALONE = ANSWER_FORM.format(fields="sentiment")


def wordy_task(messages):
    """Knows every review's label; writes it inside a sentence unless the instruction asks for it alone."""
    text = messages[-1]["content"]
    label = GOLD[re.search(r"Review: (.*)", text).group(1)]
    return label if ALONE in "\n".join(m["content"] for m in messages) else f"The sentiment is {label}."


def proposer(messages):
    return "Say the sentiment of the review."


def ape(task, **settings):
    return APE(metric=exact_match("sentiment"), task_lm=scripted_lm(task), prompt_lm=scripted_lm(proposer, name="p"),
               num_subsamples=1, num_prompts_per_subsample=2, num_demos=3, storage=":memory:", progress=False, **settings)


def test_a_winner_answering_in_sentences_gives_way_to_its_variant_asking_for_the_answer_alone():
    report = ape(wordy_task).compile(sentiment_program(), trainset=REVIEWS[:30]).cuecard_report
    variant = next(c for c in report.candidates if c.origin == "answer-form")
    assert report.best.key == variant.key and variant.instructions["self"].endswith(ALONE)
    winner_before = next(c for c in report.candidates if c.key == variant.parent)
    assert variant.instructions["self"] == f"{winner_before.instructions['self']} {ALONE}"
    assert variant.dev_examples == report.dev_size and variant.dev_score == 1.0 and winner_before.dev_score == 0.0
    assert report.acceptance.accepted and report.acceptance.wins == report.dev_size  # it faced the seed like any winner
    assert any(note.startswith("the answer form: the winner gave way to its variant") for note in report.notes)
    assert variant.round > max(c.round for c in report.candidates if c.origin != "answer-form")


def test_a_variant_that_scores_the_same_leaves_the_winner_and_the_check_can_be_switched_off():
    report = ape(level_task).compile(sentiment_program("Level 6: say it."), trainset=REVIEWS[:30]).cuecard_report
    variant = next(c for c in report.candidates if c.origin == "answer-form")
    assert variant.dev_score == report.best.dev_score and report.best.origin != "answer-form"
    assert any(note.startswith("the answer form: the winner kept over its variant") for note in report.notes)

    off = ape(wordy_task, answer_form=False).compile(sentiment_program(), trainset=REVIEWS[:30]).cuecard_report
    assert not any(c.origin == "answer-form" for c in off.candidates) and off.best.dev_score == 0.0


def test_only_the_predictors_writing_a_labelled_output_get_the_sentence():
    teleprompter = ape(level_task)
    ctx = SimpleNamespace(train=REVIEWS[:3], student=Pipeline())
    variant = teleprompter.answer_form_variant(ctx, {"summarize": "Summarize.", "label": "Label."})
    assert variant == {"summarize": "Summarize.", "label": f"Label. {ALONE}"}
    assert teleprompter.answer_form_variant(ctx, variant) is None, "no second sentence"


@pytest.mark.parametrize(("cls", "cap"), [(APE, 100), (OPRO, 100), (PE2, 120), (ProTeGi, 100)])
def test_on_its_plan_each_method_keeps_room_for_the_check_and_stays_under_the_cap(cls, cap):
    task = scripted_lm(wordy_task)
    teleprompter = cls(metric=exact_match("sentiment"), task_lm=task, prompt_lm=scripted_lm(proposer, name="p"), storage=":memory:",
                       progress=False, limits=Limits(max_calls=cap), **cls.plan(cap, 20, 15))
    report = teleprompter.compile(sentiment_program(), trainset=REVIEWS[:20], valset=REVIEWS[20:35]).cuecard_report
    assert report.usage.calls <= cap
    assert any(note.startswith("the answer form:") for note in report.notes), report.notes
    assert report.best.origin == "answer-form" and report.acceptance.accepted
    said_why = report.stop_reason.kind != StopKind.FINISHED
    assert report.usage.calls >= 0.9 * cap or said_why, (report.usage.calls, report.notes)


@pytest.mark.model
def test_the_check_runs_on_the_embedded_model(local_lm):
    teleprompter = APE(metric=exact_match("sentiment"), task_lm=local_lm, num_subsamples=1, num_prompts_per_subsample=2,
                       num_demos=3, storage=":memory:", progress=False, limits=Limits(max_calls=60))
    report = teleprompter.compile(sentiment_program(), trainset=REVIEWS[:8], valset=REVIEWS[8:14]).cuecard_report
    variant = next(c for c in report.candidates if c.origin == "answer-form")
    assert variant.dev_examples == report.dev_size and variant.instructions["self"].endswith(ALONE)
    said = [note for note in report.notes if note.startswith("the answer form:")]
    assert said and f"{variant.dev_score:.3f} against" in said[0]
    assert report.usage.calls <= 60
