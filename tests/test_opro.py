"""OPRO: meta-prompt contents, filtering, positions, stops, bad input; real-model compile and save/load."""

import itertools
import re

import cuecard
import dspy
import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.metrics import exact_match
from cuecard.teleprompters import OPRO
from cuecard.teleprompters.opro import EXEMPLARS, HISTORY, bucket, extract_instruction
from sentiment_cases import GOLD, ORDER, REVIEWS, Pipeline, level_task, load_ii, sentiment_program


class LevelProposer:
    """Proposes "Level N" instructions, N climbing; every step also repeats one and leaks the tag once."""

    def __init__(self, per_step=4):
        self.per_step = per_step
        self.levels = itertools.count(2)
        self.calls = 0
        self.lm = scripted_lm(self.reply, name="scripted/opro-proposer")

    def reply(self, messages):
        self.calls += 1
        slot = (self.calls - 1) % self.per_step
        if slot == 0:
            return "<INS>Level 1 answer.</INS>"  # a duplicate after the first step
        if slot == 1:
            return "Sure. <INS>Use the <INS> tag.</INS>"
        return f"<INS>Level {next(self.levels)} answer.</INS>"

    def prompts(self):
        return [r[-1]["content"] for r in self.lm.engine.requests]


def opro(task, proposer, **config):
    """OPRO as the paper has it (the rule read from train examples, our addition, is tested on its own)."""
    config.setdefault("instructions_per_step", proposer.per_step)
    config.setdefault("task_rule", False)
    return OPRO(metric=exact_match("sentiment"), task_lm=task, prompt_lm=proposer.lm, storage=":memory:",
                progress=False, **config)


def test_extract_and_bucket():
    assert extract_instruction("x <INS>Say it.</INS> y") == "Say it."
    assert extract_instruction("<INS>unclosed tag") == "unclosed tag"
    assert extract_instruction("no tag at all") == "no tag at all"
    # a small model writing one more history entry, then running on into the exemplars' format
    imitated = "Instruction: Name the larger animal.\n\nScore: 50\n\n<INS>\nCorrect output:\nant\n\n<INS>"
    assert extract_instruction(imitated) == "Name the larger animal."
    assert extract_instruction("Instruction: A.\n<INS>B.</INS>") == "B."  # a closed tag wins
    assert extract_instruction("<INS>\nCorrect output:\npositive\n\nInput: x\n<INS>").count("<INS>") == 1  # still a leak
    assert [bucket(s) for s in (0.0, 0.333, 0.5, 1.0, 1.2)] == [0, 33, 50, 100, 100]


def test_docstring_examples_hold():
    import doctest

    import cuecard.teleprompters.opro

    failures, tried = doctest.testmod(cuecard.teleprompters.opro, raise_on_error=False)
    assert tried > 0 and failures == 0


def test_meta_prompt_holds_the_top_pairs_ascending_with_bucketed_scores_and_exemplars():
    task, proposer = scripted_lm(level_task), LevelProposer()
    compiled = opro(task, proposer, steps=4, max_history=3, num_exemplars=2, patience=10).compile(
        sentiment_program(), trainset=REVIEWS)
    report = compiled.cuecard_report
    scores = {c.instructions["self"]: c.dev_score for c in report.candidates}
    prompts = proposer.prompts()
    assert len(prompts) == 4 * 4
    for step, prompt in enumerate(prompts[::4], start=1):  # one meta-prompt per step (its samples share it)
        pairs = re.findall(r"Instruction: (.*)\nScore: (\d+)", prompt)
        assert 1 <= len(pairs) <= 3
        shown = [int(score) for _, score in pairs]
        assert shown == sorted(shown)
        for text, score in pairs:
            assert int(score) == round(scores[text] * 100)
        # the top pairs among everything scored before this step
        earlier = [c.dev_score for c in report.candidates if c.round < step]
        assert shown == sorted(round(s * 100) for s in sorted(earlier, reverse=True)[:3])
        # exemplars: the real adapter's prompt with <INS> where the instruction goes, what the task model
        # says with the best instruction so far, then the gold
        exemplars = re.findall(r"Input:\nReview: (.*)\n\n\[INSTRUCTION\]\nModel's output:\n(.*)\nCorrect output:\n(\w+)", prompt)
        assert len(exemplars) == 2
        assert all(GOLD[review] == gold for review, _, gold in exemplars)
        best = re.findall(r"Instruction: (.*)\nScore", prompt)[-1]
        for review, said, _ in exemplars:
            assert said == level_task([{"role": "user", "content": f"Review: {review}\n\n{best}"}])
    # the history really climbs, and each step is in the report with its scores
    assert [h["step"] for h in report.history] == [1, 2, 3, 4]
    assert report.history[-1]["best_score"] > report.history[0]["best_score"] >= report.seed_dev_score
    assert report.best.instructions["self"].startswith("Level")
    assert all(c.round == c.meta["step"] for c in report.candidates if c.origin == "opro")
    # duplicates and tag leaks never become candidates
    assert report.dropped["leaks the tag"] == 4
    assert report.dropped["duplicate"] == 3
    assert not any("INS" in c.instructions["self"] for c in report.candidates)


def test_an_instruction_leaking_an_exemplars_answer_is_dropped():
    capitals = [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Chile", "Santiago"),
                ("Egypt", "Cairo"), ("Spain", "Madrid"), ("Italy", "Rome")]
    train = [dspy.Example(country=c, capital=k).with_inputs("country") for c, k in capitals]
    answers = iter(["<INS>Name the capital city.</INS>"] + [f"<INS>Say {k} when in doubt.</INS>" for _, k in capitals] * 3)
    proposer = scripted_lm(lambda m: next(answers), name="scripted/leaky")
    task = scripted_lm(lambda m: "Paris")
    report = OPRO(metric=exact_match("capital"), task_lm=task, prompt_lm=proposer, storage=":memory:", progress=False, task_rule=False,
                  steps=1, instructions_per_step=9, num_exemplars=8, dev_fraction=0.5,
                  ).compile(dspy.Predict("country -> capital"), trainset=train).cuecard_report
    prompt = proposer.engine.requests[0][-1]["content"]
    shown = set(re.findall(r"Country: (\w+)", prompt))
    leaked = {k for c, k in capitals if c in shown}
    assert report.dropped.get("leaks an exemplar's answer", 0) == len(leaked) > 0
    kept = {c.instructions["self"] for c in report.candidates}
    assert "Name the capital city." in kept
    assert not any(k in text for text in kept for k in leaked)


def test_answer_start_position_primes_the_output():
    task, proposer = scripted_lm(level_task), LevelProposer()
    report = opro(task, proposer, steps=1, position="A_begin", num_exemplars=1).compile(
        sentiment_program(), trainset=REVIEWS).cuecard_report
    assert re.search(r"Review: .*\nSentiment: \[INSTRUCTION\]\nModel's output:\n.*\nCorrect output:", proposer.prompts()[0])
    sent = [r[-1]["content"] for r in task.engine.requests]
    assert any(re.search(r"\nSentiment: Level 1 answer\.$", text) for text in sent)
    assert report.config["position"] == "A_begin"


def test_wrong_exemplars_are_the_ones_the_best_instruction_misses():
    task, proposer = scripted_lm(level_task), LevelProposer()
    opro(task, proposer, steps=1, num_exemplars=3, exemplar_selection="wrong").compile(
        sentiment_program(), trainset=REVIEWS)
    shown = re.findall(r"Input:\nReview: (.*)", proposer.prompts()[0])
    assert len(shown) == 3
    # the seed ("Classify the sentiment.") has no level: it answers every review wrong, so any is fair;
    # a run seeded with "Level 5" may only show reviews that level gets wrong
    task, proposer = scripted_lm(level_task), LevelProposer()
    opro(task, proposer, steps=1, num_exemplars=3, exemplar_selection="wrong").compile(
        sentiment_program("Level 5 answer."), trainset=REVIEWS)
    shown = re.findall(r"Input:\nReview: (.*)", proposer.prompts()[0])
    assert len(shown) == 3 and all(ORDER[review] % 10 >= 5 for review in shown)


def test_patience_and_the_lm_call_cap_stop_the_search():
    task = scripted_lm(level_task)
    flat = scripted_lm(lambda m: f"<INS>Variant {len(m[-1]['content']) % 7} {id(m) % 1000}.</INS>", name="scripted/flat")
    report = OPRO(metric=exact_match("sentiment"), task_lm=task, prompt_lm=flat, storage=":memory:", progress=False, task_rule=False,
                  steps=10, instructions_per_step=2, patience=2).compile(sentiment_program(), trainset=REVIEWS).cuecard_report
    assert len(report.history) == 2
    assert report.stop_reason.kind == "no improvement" and "did not improve" in report.stop_reason.text

    task, proposer = scripted_lm(level_task), LevelProposer()
    report = opro(task, proposer, steps=10, limits=cuecard.Limits(max_model_calls=60)).compile(
        sentiment_program(), trainset=REVIEWS).cuecard_report
    assert report.usage.model_calls <= 60
    assert len(report.history) < 10
    assert report.stop_reason.kind == "cap" and "cap of 60 LM calls" in report.stop_reason.text




def test_with_until_cap_a_stalled_search_goes_on_to_the_cap():
    def compile_flat(until_cap):
        counter = itertools.count()
        flat = scripted_lm(lambda m: f"<INS>Variant {next(counter)}.</INS>", name="scripted/flat")
        opro = OPRO(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task), prompt_lm=flat, storage=":memory:",
                    progress=False, task_rule=False, steps=10, instructions_per_step=2, patience=2, until_cap=until_cap,
                    limits=cuecard.Limits(max_calls=120))
        return opro.compile(sentiment_program(), trainset=REVIEWS).cuecard_report

    stopped, spent = compile_flat(False), compile_flat(True)
    assert stopped.stop_reason.kind == "no improvement" and len(stopped.history) == 2
    assert spent.stop_reason.kind in ("cap", "no room") and len(spent.history) > 2  # the cap ended it
    assert spent.usage.calls > stopped.usage.calls
    assert sum("the search goes on: until_cap spends the cap" in note for note in spent.notes) == 1


def test_a_pipeline_gets_one_history_per_predictor_in_turn():
    def task_reply(messages):
        text = messages[-1]["content"]
        if text.startswith("Review: "):
            return "gist of " + text.split("\n")[0][len("Review: "):][:15]
        return "positive"

    counter = itertools.count()
    proposer = scripted_lm(lambda m: f"<INS>Idea {next(counter)}.</INS>", name="scripted/pipeline")
    report = OPRO(metric=exact_match("sentiment"), task_lm=scripted_lm(task_reply), prompt_lm=proposer, task_rule=False,
                  storage=":memory:", progress=False, steps=4, instructions_per_step=2, patience=10, num_exemplars=1,
                  ).compile(Pipeline(), trainset=REVIEWS[:12]).cuecard_report
    assert [h["predictor"] for h in report.history] == ["summarize", "label", "summarize", "label"]
    prompts = [r[-1]["content"] for r in proposer.engine.requests]
    # the label step's exemplar is the label predictor's own prompt, built from the traced summary
    assert "Summary: gist of" in prompts[2] and "Correct output:\n" in prompts[2]
    assert "Review: " in prompts[0] and "Correct final output of the program" in prompts[0]
    # each history only lists that predictor's instructions
    assert "Summarize." in prompts[0] and "Label." not in prompts[0].split("In each example")[0]
    for candidate in report.candidates:
        assert set(candidate.instructions) == {"summarize", "label"}


def test_bad_input_fails_before_any_lm_call():
    task, proposer = scripted_lm(level_task), LevelProposer()
    with pytest.raises(ValueError, match=re.escape(HISTORY)):
        opro(task, proposer, meta_prompt=f"Write one. {EXEMPLARS} <INS>")
    with pytest.raises(ValueError, match="<INS>"):
        opro(task, proposer, meta_prompt=f"{HISTORY} {EXEMPLARS} Write one.")
    assert task.meter.usage.calls == 0
    # a threshold above every score: refused once the seed is scored, before the prompt model is asked
    with pytest.raises(ValueError, match="history_threshold=0.9 drops every scored instruction"):
        opro(task, proposer, history_threshold=0.9).compile(sentiment_program(), trainset=REVIEWS)
    assert proposer.lm.meter.usage.calls == 0


# ---- the real model ------------------------------------------------------------------------------


@pytest.mark.model
def test_opro_end_to_end_with_the_embedded_model(shared_data, local_lm, tmp_path, same_answers_after_reload):
    """The whole path on the real model: proposals, scoring, the seed check, history plot, a rerun that
    makes no model call, save/load. What it is worth on held-out data is measured by the benchmark
    harness (issue 17's table), not asserted here."""
    from cuecard.reporting.plots import plot_search

    train, test = load_ii(shared_data, "induce", 40), load_ii(shared_data, "execute")
    metric = exact_match("sentiment")
    settings = dict(metric=metric, task_lm=local_lm, storage=f"sqlite:///{tmp_path / 'opro.db'}", progress=False, steps=2,
                    instructions_per_step=3, max_dev=8, max_proposal_tokens=60)
    compiled = OPRO(**settings).compile(sentiment_program(), trainset=train)
    report = compiled.cuecard_report
    assert [h["step"] for h in report.history] == [1, 2] or report.notes
    proposed = [c for c in report.candidates if c.origin == "opro"]
    assert proposed or report.dropped or report.failures, "no proposal and no reason"
    assert all(c.dev_examples == report.dev_size for c in report.candidates if not c.pruned)  # the paper's full scoring
    searched = report.search_best or report.best
    assert searched.dev_score == max(c.dev_score for c in report.candidates)
    assert report.acceptance is not None and (report.best == searched) == report.acceptance.accepted
    assert report.prompt_usage.calls > 0 and report.task_usage.calls > 0  # split by role, one model in both
    png = plot_search(report, tmp_path / "opro.png", title="OPRO on sentiment")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    before = local_lm.meter.usage
    again = OPRO(**settings).compile(sentiment_program(), trainset=train).cuecard_report
    assert (local_lm.meter.usage - before).model_calls == 0
    assert again.outcome() == report.outcome()

    same_answers_after_reload(compiled, tmp_path / "opro.json", [{"review": e.review} for e in test[:4]])
