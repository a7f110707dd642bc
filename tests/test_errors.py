"""A user's mistake raises a CuecardError subclass (still a ValueError, as before) that names the setting,
and the teleprompters find theirs before any LM call."""

import cuecard
import dspy
import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.engine.policies import MultiStage
from cuecard.errors import ConfigError, CuecardError, MetricError, TeleprompterConfigError
from cuecard.metrics import exact_match, one_of_labels
from cuecard.programs import Classify
from cuecard.teleprompters import APE, BPO, OPRO, ProTeGi

MISTAKES = {
    "labels given as one string": (lambda: one_of_labels("positive,negative"), MetricError, "sequence of labels"),
    "a stage of no examples": (lambda: MultiStage(min_examples=0), ConfigError, "min_examples"),
    "a classifier with one label": (lambda: Classify("review -> sentiment", labels=["a"]), ConfigError, "two distinct labels"),
    "a custom APE template missing": (lambda: APE(metric=exact_match("answer"), mode="custom"), TeleprompterConfigError, "template"),
    "an OPRO meta-prompt without markers": (
        lambda: OPRO(metric=exact_match("answer"), meta_prompt="Write an instruction."), TeleprompterConfigError, "meta_prompt",
    ),
    "BPO length ratios crossed": (
        lambda: BPO(min_length_ratio=2.0, max_length_ratio=1.0), TeleprompterConfigError, "min_length_ratio",
    ),
    "a metric given to BPO": (lambda: BPO(metric=exact_match("answer")), TeleprompterConfigError, "win rate"),
    "an unknown setting": (lambda: ProTeGi(metric=exact_match("answer"), beam=3), TeleprompterConfigError, "beam_size"),
}


@pytest.mark.parametrize("name", MISTAKES)
def test_a_mistake_raises_a_cuecard_error_naming_the_setting(name):
    make, error, named = MISTAKES[name]
    with pytest.raises(error, match=named) as raised:
        make()
    assert isinstance(raised.value, CuecardError) and isinstance(raised.value, ValueError)


def sentiment_train(n: int) -> list[dspy.Example]:
    return cuecard.datasets.reviews()[:n]


@pytest.mark.parametrize(
    "teleprompter, match",
    [
        (lambda lm: APE(metric=exact_match("sentiment"), task_lm=lm, num_demos=8, storage=":memory:", progress=False), "num_demos"),
        (lambda lm: ProTeGi(metric=exact_match("sentiment"), task_lm=lm, max_evaluations=3, storage=":memory:", progress=False),
         "max_evaluations"),
    ],
    ids=["APE with fewer examples than demos", "ProTeGi with no room for a round"],
)
def test_a_teleprompter_refuses_its_settings_before_any_lm_call(teleprompter, match):
    lm = scripted_lm(lambda messages: "positive")
    program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify."))
    with pytest.raises(TeleprompterConfigError, match=match):
        teleprompter(lm).compile(program, trainset=sentiment_train(4))
    assert lm.engine.requests == []
