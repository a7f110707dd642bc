"""PE2: the meta-prompt (template as rendered, hard negatives, reasoning), back-tracking, options,
ablations, bad input; real-model compile and save/load."""

import itertools
import re

import cuecard
import dspy
import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.metrics import exact_match
from cuecard.teleprompters import PE2
from cuecard.teleprompters.pe2 import PROMPT_SLOT, words_changed
from sentiment_cases import GOLD, REVIEWS, Pipeline, level_task, load_ii, sentiment_program


class Engineer:
    """A scripted prompt engineer: an analysis on the first turn, then a new prompt from ``levels``."""

    def __init__(self, levels, summary=False):
        self.levels = iter(levels)
        self.summary = summary
        self.lm = scripted_lm(self.reply, name="scripted/engineer")

    def reply(self, messages):
        if len(messages) == 1:
            return "Example 1: the output is wrong. The prompt does not name the labels."
        text = f"<START>Level {next(self.levels)} answer.<END>"
        return text + "\nSummary: raised the level." if self.summary else text

    def chats(self):
        return [r for r in self.lm.engine.requests if len(r) == 3]


def pe2(task, engineer, **config):
    config.setdefault("start_from_readings", False)  # these tests follow PE2's own steps from the seed
    return PE2(metric=exact_match("sentiment"), task_lm=task, prompt_lm=engineer.lm, storage=":memory:",
               progress=False, **config)


def test_words_changed():
    assert words_changed("a b c", "a b c") == 0
    assert words_changed("a b c", "a x c d") == 2


def test_meta_prompt_holds_the_rendered_template_the_hard_negatives_and_the_reasoning_template():
    task, engineer = scripted_lm(level_task), Engineer(itertools.count(1))
    report = pe2(task, engineer, steps=1, beam=1, proposals_per_prompt=2).compile(
        sentiment_program(), trainset=REVIEWS).cuecard_report
    chats = engineer.chats()
    assert len(chats) == 2
    first, analysis, request = chats[0]
    # the context specification is the adapter's real rendering, with slots for the prompt and inputs
    rendered = cuecard.PlainAdapter().format(dspy.Signature("review -> sentiment", PROMPT_SLOT), [], {"review": "<<review>>"})
    assert rendered[-1]["content"] in first["content"]
    assert "Review: <<review>>\n\n<<PROMPT>>" in first["content"]
    # hard negatives: both examples are ones the seed got wrong, with the model's output and the label
    shown = re.findall(r"Input Review: (.*)\nModel's sentiment: (.*)\nLabel \(sentiment\): (.*)", first["content"])
    assert len(shown) == 2
    for review, output, label in shown:
        assert output == "neutral" and label == GOLD[review]
    assert "Is the model's output correct?" in first["content"] and "what edit" in first["content"]
    assert "Step 1:" in first["content"] and "Step 2:" in first["content"]
    # the second turn follows the model's analysis
    assert analysis["role"] == "assistant" and analysis["content"].startswith("Example 1: the output is wrong")
    assert "improved prompt" in request["content"]
    # each child records its parent, its examples and the analysis
    child = next(c for c in report.candidates if c.origin == "pe2")
    assert child.parent == report.candidates[[c.origin for c in report.candidates].index("program")].key
    assert len(child.meta["examples"]) == 2 and child.meta["analysis"].startswith("Example 1")
    assert {e["review"] for e in child.meta["examples"]} <= {r for r, _, _ in shown} | set(GOLD)


def test_back_tracking_expands_the_best_prompts_among_all_steps():
    # step 1 yields Level 9 and Level 1; step 2 must expand Level 9 and the seed's best rival, never
    # only step 1's children; step 3 sees everything from steps 0-2
    task, engineer = scripted_lm(level_task), Engineer([9, 1, 2, 3, 4, 5, 6, 7, 8, 8, 7, 6] + list(range(20, 40)))
    report = pe2(task, engineer, steps=3, beam=2, proposals_per_prompt=2).compile(
        sentiment_program("Level 5 answer."), trainset=REVIEWS).cuecard_report
    by_key = {c.key: c for c in report.candidates}
    for step in (2, 3):
        earlier = sorted((c for c in report.candidates if c.round < step), key=lambda c: -c.dev_score)
        expanded = {c.parent for c in report.candidates if c.round == step}
        assert expanded <= {c.key for c in earlier[:2]}, (step, expanded)
        assert {by_key[k].dev_score for k in expanded} == {c.dev_score for c in earlier[:2]}
    assert any(by_key[c.parent].round < c.round - 1 for c in report.candidates if c.round == 3)


def test_options_step_size_length_cap_and_history():
    task, engineer = scripted_lm(level_task), Engineer(itertools.count(3), summary=True)
    report = pe2(task, engineer, steps=2, beam=1, proposals_per_prompt=1, step_size=4, max_words=3,
                 use_history=True).compile(sentiment_program("Level 2 answer."), trainset=REVIEWS).cuecard_report
    chats = engineer.chats()
    assert "Change at most 4 words" in chats[0][2]["content"]
    assert "at most 3 words" in chats[0][2]["content"]
    assert "Summary:" in chats[0][2]["content"]
    # the second step's parent has a lineage: it is shown with its score and edit summary
    assert "Optimisation history" in chats[1][0]["content"]
    assert "change: raised the level." in chats[1][0]["content"]
    child = next(c for c in report.candidates if c.origin == "pe2" and c.round == 1)
    assert child.meta["edit_summary"] == "raised the level."
    assert child.instructions["self"] == "Level 3 answer."  # the summary line is not part of the prompt

    engineer = Engineer(["9 and a much longer tail of words"])
    report = pe2(scripted_lm(level_task), engineer, steps=1, beam=1, proposals_per_prompt=1, max_words=3).compile(
        sentiment_program(), trainset=REVIEWS).cuecard_report
    assert report.dropped == {"over the length cap": 1}


def test_a_new_prompt_running_on_into_the_examples_is_cut():
    engineer = Engineer(["3 answer.\nInput Review: I Spy is so anemic.\nLabel (sentiment): negative"])
    report = pe2(scripted_lm(level_task), engineer, steps=1, beam=1, proposals_per_prompt=1).compile(
        sentiment_program(), trainset=REVIEWS).cuecard_report
    child = next(c for c in report.candidates if c.origin == "pe2")
    assert child.instructions["self"] == "Level 3 answer."
    assert report.dropped == {"example echo cut off": 1}


@pytest.mark.parametrize("switch,gone", [
    ("two_step_description", "Step 2:"),
    ("context_specification", "How the prompt is used"),
    ("reasoning_template", "Is the model's output correct?"),
])
def test_each_meta_prompt_component_can_be_switched_off(switch, gone):
    engineer = Engineer(itertools.count(1))
    pe2(scripted_lm(level_task), engineer, steps=1, beam=1, proposals_per_prompt=1, **{switch: False}).compile(
        sentiment_program(), trainset=REVIEWS)
    text = engineer.chats()[0][0]["content"]
    assert gone not in text
    assert "## Examples" in text


def test_bad_input_is_handled_and_reported():
    def always_right(messages):
        return GOLD[re.search(r"Review: (.*)", messages[-1]["content"]).group(1)]

    engineer = Engineer(itertools.count(1))
    report = pe2(scripted_lm(always_right), engineer, steps=2).compile(sentiment_program(), trainset=REVIEWS).cuecard_report
    assert report.best.origin == "program"
    assert any("no hard negative" in note for note in report.notes)
    assert report.stop_reason.detail.startswith("step 1 found no hard negative to learn from")
    assert engineer.lm.meter.usage.calls == 0

    for zero in ("steps", "beam", "proposals_per_prompt"):
        engineer = Engineer(itertools.count(1))
        report = pe2(scripted_lm(level_task), engineer, **{zero: 0}).compile(sentiment_program(), trainset=REVIEWS).cuecard_report
        assert report.best.origin == "program" and engineer.lm.meter.usage.calls == 0
        assert any(f"{zero}=0" in note for note in report.notes)

    # Level 9 errs on one review in ten: with 20 train examples that is 2, fewer than a batch of 5
    engineer = Engineer(itertools.count(10))
    report = pe2(scripted_lm(level_task), engineer, steps=1, beam=1, proposals_per_prompt=1, batch_size=5).compile(
        sentiment_program("Level 9 answer."), trainset=REVIEWS).cuecard_report
    assert any("fewer than batch_size=5" in note for note in report.notes)
    first = engineer.chats()[0][0]["content"]
    assert 1 <= first.count("### Example") < 5




def test_a_pipeline_context_shows_every_step_and_marks_the_one_edited():
    def task_reply(messages):
        text = messages[-1]["content"]
        return "gist" if text.startswith("Review: ") else "neutral"

    engineer = Engineer(itertools.count(1))
    report = pe2(scripted_lm(task_reply), engineer, steps=1, beam=1, proposals_per_prompt=2).compile(
        Pipeline(), trainset=REVIEWS[:12]).cuecard_report
    first = engineer.chats()[0][0]["content"]
    second = engineer.chats()[1][0]["content"]
    assert "Step 1 of 2 (summarize)  <- the prompt being edited" in first
    assert "Review: <<review>>\n\n<<PROMPT>>" in first and "Summary: <<summary>>\n\nLabel." in first
    assert "Step 2 of 2 (label)  <- the prompt being edited" in second
    assert "Input Summary: gist" in second and "final output of the program" in first
    assert {c.meta["predictor"] for c in report.candidates if c.origin == "pe2"} == {"summarize", "label"}


def test_starting_prompts_can_be_induced_with_ape():
    engineer = Engineer(itertools.count(1))
    induced = iter(["Level 4 answer.", "Level 6 answer."])
    proposer = scripted_lm(lambda m: next(induced) if len(m) == 1 and "instruction was" in m[-1]["content"]
                           else engineer.reply(m), name="scripted/engineer-ape")
    report = PE2(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task), prompt_lm=proposer,
                 storage=":memory:", progress=False, n_init=2, steps=1, beam=1, proposals_per_prompt=1,
                 ).compile(sentiment_program(), trainset=REVIEWS).cuecard_report
    origins = {c.instructions["self"]: c.origin for c in report.candidates}
    assert origins["Level 4 answer."] == origins["Level 6 answer."] == "induced"
    child = next(c for c in report.candidates if c.origin == "pe2")
    assert child.parent == next(c.key for c in report.candidates if c.instructions["self"] == "Level 6 answer.")


# ---- the real model ------------------------------------------------------------------------------


@pytest.mark.model
def test_pe2_end_to_end_with_the_embedded_model(shared_data, local_lm, tmp_path, same_answers_after_reload):
    """The whole path on the real model: hard negatives, the two-turn chat, scoring, the seed check,
    save/load. What it is worth on held-out data is measured by the benchmark harness (issue 17's
    table), not asserted here."""
    train, test = load_ii(shared_data, "induce", 40), load_ii(shared_data, "execute")
    metric = exact_match("sentiment")
    compiled = PE2(metric=metric, task_lm=local_lm, storage=":memory:", progress=False, steps=1, beam=1,
                   proposals_per_prompt=3, max_dev=8, max_reasoning_tokens=120, max_proposal_tokens=60,
                   ).compile(sentiment_program(), trainset=train)
    report = compiled.cuecard_report
    children = [c for c in report.candidates if c.origin == "pe2"]
    assert children or report.dropped or report.failures, report.notes
    for child in children:
        assert child.parent in {c.key for c in report.candidates}
        assert child.meta["analysis"] and len(child.meta["examples"]) == 2
        assert all(e["sentiment"] for e in child.meta["examples"])
    assert report.acceptance is not None
    assert report.best.dev_score >= report.seed_dev_score or not report.acceptance.accepted
    assert report.task_usage.model_calls > 0

    same_answers_after_reload(compiled, tmp_path / "pe2.json", [{"review": e.review} for e in test[:4]])
