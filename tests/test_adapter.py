"""The plain adapter: formatting and lenient parsing (no model needed; a scripted LM where a call is made)."""

from typing import Literal

import dspy
import pytest
from cuecard import PlainAdapter, SignatureError
from cuecard.clients.testing import scripted_lm


def sentiment_signature():
    return dspy.Signature("review -> sentiment", "Say whether the review is positive or negative.")


def test_default_layout_puts_the_instruction_after_the_inputs():
    messages = PlainAdapter().format(sentiment_signature(), [], {"review": "Great film."})
    assert messages == [
        {"role": "user", "content": "Review: Great film.\n\nSay whether the review is positive or negative."}
    ]


def test_system_layout_asks_for_the_output_by_its_prefix():
    messages = PlainAdapter("system").format(sentiment_signature(), [], {"review": "Great film."})
    assert messages[0] == {"role": "system", "content": "Say whether the review is positive or negative."}
    assert messages[-1] == {"role": "user", "content": "Review: Great film.\nSentiment:"}


def test_before_inputs_layout():
    messages = PlainAdapter("before_inputs").format(sentiment_signature(), [], {"review": "Great film."})
    assert messages[-1]["content"] == "Say whether the review is positive or negative.\n\nReview: Great film.\nSentiment:"


def test_unknown_layout_is_rejected_by_name():
    with pytest.raises(ValueError, match="instruction_position"):
        PlainAdapter("middle")


def test_format_shows_demos_as_turns():
    demos = [{"review": "Awful.", "sentiment": "negative"}]
    messages = PlainAdapter("system").format(sentiment_signature(), demos, {"review": "Nice."})
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "Review: Awful.\nSentiment:"
    assert messages[2]["content"] == "negative"


@pytest.mark.parametrize(
    "completion",
    ["positive", " Positive\n", "Sentiment: positive", "sentiment: Sentiment: positive", '"positive"',
     "positive\nThe review praises the film.", "**positive**"],
)
def test_single_field_parsing_is_lenient(completion):
    values, ok = PlainAdapter().parse_with_status(sentiment_signature(), completion)
    assert ok
    assert values["sentiment"].lower() == "positive"


def test_multiline_field_keeps_all_lines():
    sig = dspy.Signature("question -> reasoning, answer")
    values, ok = PlainAdapter().parse_with_status(sig, "First, 2+2 is 4.\nSo it is even.\nAnswer: 4")
    assert ok
    assert values["reasoning"] == "First, 2+2 is 4.\nSo it is even."
    assert values["answer"] == "4"


def test_multiple_outputs_read_from_field_lines():
    sig = dspy.Signature("text -> topic, language")
    values, ok = PlainAdapter().parse_with_status(sig, "sports\nLanguage: English")
    assert ok and values == {"topic": "sports", "language": "English"}


def test_missing_field_gets_raw_text_and_is_a_failure():
    sig = dspy.Signature("text -> topic, language")
    values, ok = PlainAdapter().parse_with_status(sig, "Topic: sports")
    assert not ok
    assert values["language"] == "Topic: sports"


def test_typed_literal_output_is_matched_to_a_choice():
    class Sig(dspy.Signature):
        """Classify."""

        review: str = dspy.InputField()
        sentiment: Literal["positive", "negative"] = dspy.OutputField()

    adapter = PlainAdapter()
    assert "Sentiment is one of: positive, negative." in adapter.format_task_text(Sig)
    values, ok = adapter.parse_with_status(Sig, "The sentiment is Negative.")
    assert ok and values["sentiment"] == "negative"


def test_signature_without_output_field_is_a_clear_error():
    class NoOutput(dspy.Signature):
        """Nothing to produce."""

        review: str = dspy.InputField()

    with pytest.raises(SignatureError, match="no output field"):
        PlainAdapter().format(NoOutput, [], {"review": "x"})


def test_unparseable_answer_never_crashes_and_is_counted():
    class Sig(dspy.Signature):
        """Count."""

        text: str = dspy.InputField()
        count: int = dspy.OutputField()

    lm = scripted_lm(lambda messages: "I cannot count that.")
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        prediction = dspy.Predict(Sig)(text="a b c")
    assert prediction.count == "I cannot count that."
    assert lm.meter.usage.parse_failures == 1


def test_empty_answer_is_counted_not_raised():
    lm = scripted_lm(lambda messages: "")
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        prediction = dspy.Predict("review -> sentiment")(review="fine")
    assert prediction.sentiment == ""
    assert lm.meter.usage.parse_failures == 1


def test_chain_of_thought_runs_through_plain_adapter():
    lm = scripted_lm(lambda messages: "The review is glowing.\nSentiment: positive")
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        prediction = dspy.ChainOfThought("review -> sentiment")(review="Loved it")
    assert prediction.sentiment == "positive"
    assert prediction.reasoning == "The review is glowing."
    assert lm.meter.usage.parse_failures == 0


# ---- typed answers under a grammar ---------------------------------------------------------------
def _predict_with(lm, signature, adapter=None, **inputs):
    with dspy.context(lm=lm, adapter=adapter or PlainAdapter(typed_answers=True)):
        return dspy.Predict(signature)(**inputs)


def test_a_labelled_answer_asks_a_grammar_capable_model_for_one_bare_label():
    lm = scripted_lm(lambda messages: "negative", grammar=True)
    signature = dspy.Signature("review -> sentiment", "Classify.").with_updated_fields(
        "sentiment", type_=Literal["positive", "negative"]
    )
    assert _predict_with(lm, signature, review="Awful.").sentiment == "negative"
    (response_format,) = lm.engine.formats
    assert response_format["schema"]["enum"] == ["positive", "negative"]
    assert response_format["schema"]["x-cuecard-bare"] is True


@pytest.mark.parametrize(
    ("type_", "schema"),
    [(bool, {"enum": ["True", "False"]}), (int, {"type": "integer"}), (float, {"type": "number"})],
)
def test_bool_int_and_float_answers_are_constrained_too(type_, schema):
    lm = scripted_lm(lambda messages: "1", grammar=True)
    signature = dspy.Signature("question -> answer", "Answer.").with_updated_fields("answer", type_=type_)
    _predict_with(lm, signature, question="How many?")
    assert {k: v for k, v in lm.engine.formats[0]["schema"].items() if k != "x-cuecard-bare"} == schema


def test_free_text_answers_models_without_grammars_and_the_switch_off_send_no_constraint():
    labelled = dspy.Signature("review -> sentiment", "Classify.").with_updated_fields(
        "sentiment", type_=Literal["positive", "negative"]
    )
    free = scripted_lm(lambda messages: "fine", grammar=True)
    _predict_with(free, dspy.Signature("review -> summary", "Summarise."), review="Nice.")
    no_grammar = scripted_lm(lambda messages: "positive", structured=True)
    _predict_with(no_grammar, labelled, review="Nice.")
    switched_off = scripted_lm(lambda messages: "positive", grammar=True)
    _predict_with(switched_off, labelled, PlainAdapter(typed_answers=False), review="Nice.")
    assert free.engine.formats == no_grammar.engine.formats == switched_off.engine.formats == [None]


def test_typed_answers_are_on_by_default_and_part_of_the_run_identity():
    from cuecard.identity import adapter_identity

    lm = scripted_lm(lambda messages: "positive", grammar=True)
    labelled = dspy.Signature("review -> sentiment", "Classify.").with_updated_fields(
        "sentiment", type_=Literal["positive", "negative"]
    )
    _predict_with(lm, labelled, PlainAdapter(), review="Nice.")
    assert lm.engine.formats[0]["schema"]["enum"] == ["positive", "negative"]
    assert adapter_identity(PlainAdapter()) != adapter_identity(PlainAdapter(typed_answers=False))
