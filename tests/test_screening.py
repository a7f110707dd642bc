"""Proposals every teleprompter refuses before scoring them (the shared ``Teleprompter.screen``)."""

import pytest
from cuecard.metrics import exact_match
from cuecard.teleprompters import APE, OPRO, PE2, ProTeGi
from cuecard.testing import scripted_lm
from sentiment_cases import REVIEWS, level_task, sentiment_program

# each teleprompter with settings small enough for one short search
TELEPROMPTERS = {
    "ape": (APE, dict(num_subsamples=1, num_prompts_per_subsample=3)),
    "protegi": (ProTeGi, dict(rounds=1, beam_size=1, minibatch_size=6, n_gradients=1, mc_samples_per_step=1)),
    "opro": (OPRO, dict(steps=1, instructions_per_step=3)),
    "pe2": (PE2, dict(steps=1, beam=1, proposals_per_prompt=2)),
}


@pytest.mark.parametrize("method", sorted(TELEPROMPTERS))
def test_a_proposal_that_is_only_a_train_answer_is_dropped(method):
    """ "Positive" as an instruction makes a model say "positive" to everything: chance on a balanced set."""
    proposals = iter(["<INS>Positive.</INS>", "<START>NEGATIVE</START>", "Level 7: label the review."] * 20)
    proposer = scripted_lm(lambda messages: next(proposals), name="scripted/answers")
    cls, settings = TELEPROMPTERS[method]
    compiled = cls(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task), prompt_lm=proposer,
                   storage=":memory:", progress=False, **settings).compile(sentiment_program(), trainset=REVIEWS[:20])
    report = compiled.cuecard_report
    kept = [c.instructions["self"].lower() for c in report.candidates]
    assert report.dropped.get("an answer, not an instruction", 0) > 0, report.dropped
    assert not any(text.strip(".") in ("positive", "negative") for text in kept)
