"""Proposals every teleprompter refuses before scoring them (the shared ``Teleprompter.screen``)."""

import dspy
import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.metrics import exact_match
from cuecard.teleprompters import APE, OPRO, PE2, ProTeGi
from cuecard.teleprompters.context import SearchContext
from sentiment_cases import REVIEWS, level_task, sentiment_program

# each teleprompter with settings small enough for one short search
TELEPROMPTERS = {
    "ape": (APE, dict(num_subsamples=1, num_prompts_per_subsample=3)),
    "protegi": (ProTeGi, dict(rounds=1, beam_size=1, minibatch_size=6, n_gradients=1, mc_samples_per_step=1)),
    "opro": (OPRO, dict(steps=1, instructions_per_step=3)),
    "pe2": (PE2, dict(steps=1, beam=1, proposals_per_prompt=2)),
}


def compile_with_proposals(method, replies, name):
    """The method's search on the sentiment reviews, its prompt model replying ``replies`` in turn."""
    proposals = iter(replies * 20)
    proposer = scripted_lm(lambda messages: next(proposals), name=name)
    cls, settings = TELEPROMPTERS[method]
    compiled = cls(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task), prompt_lm=proposer,
                   storage=":memory:", progress=False, **settings).compile(sentiment_program(), trainset=REVIEWS[:20])
    return compiled.cuecard_report


@pytest.mark.parametrize("method", sorted(TELEPROMPTERS))
def test_a_proposal_that_is_only_a_train_answer_is_dropped(method):
    """ "Positive" as an instruction makes a model say "positive" to everything: chance on a balanced set."""
    report = compile_with_proposals(method, ["<INS>Positive.</INS>", "<START>NEGATIVE</START>", "Level 7: label the review."],
                                    "scripted/answers")
    kept = [c.instructions["self"].lower() for c in report.candidates]
    assert report.dropped.get("an answer, not an instruction", 0) > 0, report.dropped
    assert not any(text.strip(".") in ("positive", "negative") for text in kept)


# words each method's own meta-prompt uses (six or more in a row), written back as if they were the task
ECHOES = {
    "ape": "Level 7: the student turned each input below into the output shown next to it.",
    "protegi": "Level 7: a general command that turns any input into its correct output.",
    "opro": "Level 7: a general command that works for any input of this kind.",
    "pe2": "Level 7: it must say what to do with any input, then label it.",
}


@pytest.mark.parametrize("method", sorted(TELEPROMPTERS))
def test_a_proposal_repeating_its_meta_prompts_words_is_dropped_and_counted(method):
    """Six words in a row from the request that produced it: the proposer echoed the meta-prompt instead of
    stating the task (a leak like "look at the form of the outputs" that then reads as an instruction)."""
    echo = ECHOES[method]
    report = compile_with_proposals(method, [f"<INS>{echo}</INS>", f"<START>{echo}<END>", "Level 7: label the review."],
                                    "scripted/echoes")
    assert report.dropped.get("repeats the meta-prompt's words", 0) > 0, report.dropped
    proposed = [c for c in report.candidates if c.origin != "answer-form"]  # the engine's variant is no proposal
    assert not any("level 7: " in c.instructions["self"].lower() and len(c.instructions["self"]) > 30 for c in proposed)
    assert any(c.instructions["self"] == "Level 7: label the review." for c in report.candidates)


def test_five_words_of_the_meta_prompt_or_words_of_the_data_are_not_an_echo():
    ape = APE(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task))
    assert ape.repeats_meta_prompt("Then the student turned each input below into it.")  # 6 words in a row
    assert not ape.repeats_meta_prompt("Turn each input below into its antonym.")  # 4 words in a row
    assert not ape.repeats_meta_prompt("Say whether the movie review below is positive or negative.")
    custom = APE(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task), mode="custom",
                 template="[[DEMOS]] Look hard at the form of the outputs and then say [[INSTRUCTION]]")
    assert custom.repeats_meta_prompt("Look hard at the form of the outputs to label each one.")


# the shared structured request in other words (no six words of it in a row), as APE's Monte Carlo step wrote it
# on a sarcasm task: it tells the task model nothing about the task
PARAPHRASE = "Level 9: take the first input and apply the general rule to it to get the correct output, not an example."


@pytest.mark.parametrize("method", sorted(TELEPROMPTERS))
def test_a_proposal_restating_the_meta_prompt_in_other_words_is_dropped_and_counted(method):
    report = compile_with_proposals(method, [f"<INS>{PARAPHRASE}</INS>", f"<START>{PARAPHRASE}<END>", "Level 7: label the review."],
                                    "scripted/paraphrases")
    assert report.dropped.get("restates the meta-prompt, not the task", 0) > 0, report.dropped
    kept = [c.instructions["self"] for c in report.candidates]
    assert PARAPHRASE not in kept and "Level 7: label the review." in kept, kept


def test_a_paraphrase_is_most_of_a_proposals_content_words_from_the_meta_prompt_and_at_least_four():
    ape = APE(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task))
    leak = "Take the first input and apply the given rule to it to get the output. Do not provide an answer, example, or tags."
    assert ape.paraphrases_meta_prompt(leak)
    assert not ape.repeats_meta_prompt(leak)  # no six words in a row: the word-run screen lets it through
    # the task named among a few of the request's words is an instruction
    assert not ape.paraphrases_meta_prompt("Answer with the antonym of the input word.")  # three shared words
    assert not ape.paraphrases_meta_prompt("Say each input word's plural, then the singular it came from.")  # 2 of 5
    # a program with fields named input and output: "input" and "output" are its words (4 shared words, 3 counted)
    assert ape.paraphrases_meta_prompt("Give the correct plural of each input word, as in the examples.")
    assert not ape.paraphrases_meta_prompt("Give the correct plural of each input word, as in the examples.",
                                           frozenset({"input", "output"}))
    # the program's own words (its fields, the seed) are the task's, not the meta-prompt's
    plural = "Turn each input into its plural form and write it as the output."
    assert ape.paraphrases_meta_prompt("Turn each input into the correct output, not an example.")
    assert not ape.paraphrases_meta_prompt("Turn each input into the correct output, not an example.",
                                           frozenset({"input", "output", "correct"}))
    assert not ape.paraphrases_meta_prompt(plural, frozenset({"input", "output"}))


def test_the_program_words_are_its_fields_descriptions_and_seed_instructions():
    program = dspy.Predict(dspy.Signature("movie_review -> sentiment", "Classify the movie review by its tone."))
    ctx = SearchContext(program, engine=None, train=[], policy=None)
    words = ctx.program_words()
    assert {"movie", "review", "sentiment", "classify", "tone"} <= words
    assert "the" not in words and "output" not in words


@pytest.mark.parametrize("method", sorted(TELEPROMPTERS))
def test_a_proposal_that_is_the_reply_format_is_dropped_and_counted(method):
    """What OPRO wrote on a plural task: the structured request's JSON key as the instruction, and a bare
    closing tag. Neither copies six words of a meta-prompt, so the word-run screen let them through."""
    debris = ['{"rule": "Level 7: use the built-in translate function on each word"}', "</", "Level 7: label the review."]
    report = compile_with_proposals(method, [f"<START>{text}<END>" for text in debris], "scripted/debris")
    assert report.dropped.get("a piece of the reply's format, not an instruction", 0) > 0, report.dropped
    kept = [c.instructions["self"] for c in report.candidates]
    assert not any('"rule"' in text or text.strip() in ("</", "<") for text in kept), kept
    assert "Level 7: label the review." in kept
