"""Proposals: held to a JSON schema when the prompt model supports one, read from tags otherwise, for
every teleprompter; and what the proposal prompts show the prompt model."""

import json
import re

import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.metrics import exact_match
from cuecard.teleprompters import APE, OPRO, PE2, ProTeGi
from cuecard.teleprompters.proposals import clean_instruction, read_structured
from sentiment_cases import REVIEWS, level_task, sentiment_program

SETTINGS = {
    "ape": (APE, dict(num_subsamples=1, num_prompts_per_subsample=3, num_demos=3)),
    "protegi": (ProTeGi, dict(rounds=1, minibatch_size=6, n_gradients=1, mc_samples_per_step=0, samples_per_eval=8,
                              eval_rounds=1, prompts_per_round=1)),
    "opro": (OPRO, dict(steps=1, instructions_per_step=3, num_exemplars=2)),
    "pe2": (PE2, dict(steps=1, beam=1, proposals_per_prompt=2)),
}


class Proposer:
    """Answers a request for instructions with "Level N: ..." (JSON when asked for JSON); anything else
    (ProTeGi's reasons, PE2's analysis) with a line of text."""

    def __init__(self, structured):
        self.number = 0
        self.lm = scripted_lm(self.reply, name="scripted/proposer", structured=structured)

    def reply(self, messages):
        text = messages[-1]["content"]
        self.number += 1
        instruction = f"Level {3 + self.number % 6}: say the sentiment."
        if "Reply in JSON only" in text:
            return json.dumps({"rule": "the label is the review sentiment", "instructions": [instruction]})
        if "reason" in text and "better instruction" not in text:
            return "<START>It never says which words to use.<END>"
        if "reason step by step" in text:
            return "The output is wrong."
        tag = "<INS>{}</INS>" if "<INS>" in text else "<START>{}<END>"
        return tag.format(instruction)


@pytest.mark.parametrize("method", sorted(SETTINGS))
@pytest.mark.parametrize("structured", [True, False])
def test_each_teleprompter_asks_for_a_schema_only_when_the_model_supports_one(method, structured):
    cls, knobs = SETTINGS[method]
    proposer = Proposer(structured)
    task = scripted_lm(level_task, name="scripted/task")
    report = cls(metric=exact_match("sentiment"), task_lm=task, prompt_lm=proposer.lm, storage=":memory:",
                 progress=False, **knobs).compile(sentiment_program(), trainset=REVIEWS).cuecard_report
    formats = proposer.lm.engine.formats
    with_schema = [fmt for fmt in formats if fmt is not None]
    if structured:
        assert with_schema, "a model that supports schemas was not held to one"
        assert all(fmt["type"] == "json_schema" and "instructions" in fmt["schema"]["properties"] for fmt in with_schema)
    else:
        assert formats and not with_schema
    proposed = [c.instructions["self"] for c in report.candidates if c.origin not in ("program", "answer-form")]
    assert proposed and all(re.fullmatch(r"Level \d: say the sentiment\.", text) for text in proposed)


def test_a_structured_reply_that_is_not_the_json_asked_for_falls_back_to_the_tags():
    assert read_structured('{"rule": "x", "instructions": ["A.", 3, " "]}', 5) == ["A."]
    assert read_structured("<START>A.<END>", 5) is None
    assert read_structured('{"instructions": "A."}', 5) is None
    assert clean_instruction("<INS>the instruction was to add them.</INS>") == "Add them."


def test_proposal_prompts_show_input_model_output_and_gold_and_ask_what_turns_input_into_output():
    """ProTeGi's gradient request shows each error with the model's output and the correct one, and asks
    what turns the input into the correct output, with no clause on the outputs' form (tuned to the
    visible tasks, it leaked into proposals)."""
    proposer = Proposer(False)
    task = scripted_lm(level_task, name="scripted/task")
    ProTeGi(metric=exact_match("sentiment"), task_lm=task, prompt_lm=proposer.lm, storage=":memory:", progress=False,
            **SETTINGS["protegi"][1]).compile(sentiment_program(), trainset=REVIEWS)
    gradient = next(m[-1]["content"] for m in proposer.lm.engine.requests if "reason(s)" in m[-1]["content"])
    assert gradient.count("Model's sentiment: neutral") == gradient.count("Correct sentiment: ") >= 1
    assert "what turns the input into the correct output" in gradient and "in form" not in gradient


@pytest.mark.parametrize("method", ["protegi", "opro", "pe2"])
def test_readings_of_the_task_from_train_pairs_are_asked_once_per_compile_and_shown_in_every_proposal_request(method):
    cls, knobs = SETTINGS[method]
    asked = []

    def reply(messages):
        text = messages[-1]["content"] if len(messages) == 1 else "\n".join(m["content"] for m in messages)
        asked.append(text)
        if "What was the instruction?" in text:
            return "Say whether the review is positive or negative, in one word."
        return Proposer(False).reply(messages)

    proposer = scripted_lm(reply, name="scripted/proposer")
    cls(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task, name="scripted/task"), prompt_lm=proposer,
        storage=":memory:", progress=False, **knobs).compile(sentiment_program(), trainset=REVIEWS)
    rule_requests = [text for text in asked if "What was the instruction?" in text]
    assert len(rule_requests) == 3 and all(r.count("Review: ") == 5 and "Sentiment: " in r for r in rule_requests)
    proposal_requests = [text for text in asked if "What was the instruction?" not in text]
    assert proposal_requests
    assert all("Say whether the review is positive or negative, in one word." in text for text in proposal_requests)


@pytest.mark.parametrize("method", ["protegi", "opro", "pe2"])
@pytest.mark.parametrize("start_from_readings", [True, False])
def test_the_readings_of_the_task_compete_with_the_seed_as_starting_candidates(method, start_from_readings):
    """A reading that states the task (Level 9) beats the generic seed and every repair of it (Level 3-8)."""
    cls, knobs = SETTINGS[method]
    proposals = Proposer(False)

    def reply(messages):
        if "What was the instruction?" in messages[-1]["content"]:
            return "Level 9: say whether the review is positive or negative."
        return proposals.reply(messages)

    report = cls(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task, name="scripted/task"),
                 prompt_lm=scripted_lm(reply, name="scripted/proposer"), storage=":memory:", progress=False,
                 start_from_readings=start_from_readings, **knobs).compile(sentiment_program("Level 1 answer."), trainset=REVIEWS).cuecard_report
    readings = [c for c in report.candidates if c.origin == "task-reading"]
    if start_from_readings:
        assert [c.instructions["self"] for c in readings] == ["Level 9: say whether the review is positive or negative."]
        assert report.best.origin == "task-reading"
    else:
        assert readings == [] and "Level 9" not in report.best.instructions["self"]
