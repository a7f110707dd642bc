"""Searches that go on to their cap size their last step to the room left instead of stopping short of it."""

import random

import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.clients.usage import Limits
from cuecard.errors import TeleprompterConfigError
from cuecard.metrics import exact_match
from cuecard.stopping import StopKind
from cuecard.teleprompters import APE, OPRO, PE2, ProTeGi
from sentiment_cases import REVIEWS, Pipeline, level_task, pipeline_task, sentiment_program


def proposer_reply(messages):
    """Readings of the task are weak (level 3) and proposals below 8, so a search always has errors to learn from."""
    text = "\n".join(m["content"] for m in messages)
    if "What was the instruction?" in text:
        return "Level 3: label the review."
    return f"Level {random.Random(text).randint(2, 7)}: label the review."


def compile_on_plan(cls, cap, **settings):
    teleprompter = cls(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task), prompt_lm=scripted_lm(proposer_reply, name="p"),
                       storage=":memory:", progress=False, limits=Limits(max_calls=cap), **{**cls.plan(cap, 20, 15), **settings})
    return teleprompter.compile(sentiment_program(), trainset=REVIEWS[:20], valset=REVIEWS[20:35]).cuecard_report


@pytest.mark.parametrize(("cls", "cap"), [(OPRO, 100), (PE2, 120)])
def test_the_last_step_is_sized_to_the_room_left(cls, cap):
    """A full step (4 OPRO proposals, 3 PE2 ones) no longer fits, a smaller one does: it runs, and the cap
    is spent to 90% or the search says why it stopped after it."""
    report = compile_on_plan(cls, cap, answer_form=False)  # the step sizing alone (tests/test_answer_form.py: with it)
    sized = [n for n in report.notes if "sized to the room left" in n]
    assert sized and " of " in sized[0], report.notes
    assert report.usage.calls <= cap
    said_why = report.stop_reason.kind != StopKind.FINISHED  # a cap, no room, no improvement...: said once, in the stop reason
    assert report.usage.calls >= 0.9 * cap or said_why, (report.usage.calls, report.notes)


def test_step_size_takes_the_most_candidates_that_fit_and_says_why_it_stops():
    ape = APE(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task), until_cap=True)

    class Ctx:
        notes = []
        room_left = 40
        stopped = None

        def room(self):
            return self.room_left

        def note(self, text):
            self.notes.append(text)

        def stop(self, kind, detail=""):
            self.stopped = (kind, detail)

    ctx = Ctx()
    ape.closing_reserve = lambda ctx: 10  # the checks after the search still need 10 requests
    cost = lambda n: 8 * n  # noqa: E731
    assert ape.step_size(ctx, 0, 1, 4, cost) == 4  # within the planned steps: a full one
    assert ape.step_size(ctx, 1, 1, 4, cost) == 3 and "3 of 4 new candidates" in ctx.notes[-1]  # 40 - 10 = 30 >= 24
    ctx.room_left = 17
    assert ape.step_size(ctx, 1, 1, 4, cost) == 0 and ctx.stopped[0] == StopKind.NO_ROOM and ctx.stopped[1].startswith("17 requests left")
    assert APE(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task)).step_size(ctx, 1, 1, 4, cost) == 0  # no until_cap


def test_a_method_gives_only_its_plan_shapes_and_step_calls_and_the_shared_plan_sizes_them():
    """plan() and the step cost are written once (planning.py): a method with one knob family and its own
    arithmetic gets the largest n under the cap, the next shape when the first fits nowhere, and step costs."""
    from cuecard.teleprompters import Teleprompter, TeleprompterConfig

    class ToyConfig(TeleprompterConfig):
        steps: int = 1
        width: int = 1

    class Toy(Teleprompter):
        name = "toy"
        Config = ToyConfig

        def planned_calls(self, n_train, n_dev, predictors):
            return 2 * self.config.steps, self.config.steps * self.config.width * n_dev, 0

        def step_calls(self, n_train, n_dev, predictors, size=None):
            return 2, (self.config.width if size is None else size) * n_dev, n_train

        @classmethod
        def plan_shapes(cls, n_train, n_dev):
            return [lambda steps: {"steps": steps, "width": 4}, lambda steps: {"steps": steps, "width": 1}]

        def search(self, ctx):
            raise AssertionError("planning makes no search")

    def requests(steps, width, n_dev, predictors):  # the toy's own arithmetic, written out, and the answer-form check
        return 2 * steps + (steps * width + 1) * n_dev * predictors

    for cap, n_dev, predictors in ((100, 5, 1), (100, 5, 2), (500, 15, 1), (20, 5, 1)):
        plan = Toy.plan(cap, n_train=10, n_dev=n_dev, predictors=predictors)
        width = 4 if requests(1, 4, n_dev, predictors) <= cap else 1  # the first shape, unless no n of it fits
        steps = max(s for s in range(1, 101) if requests(s, width, n_dev, predictors) <= cap)
        assert plan == {"steps": steps, "width": width, "until_cap": True}, (cap, n_dev, predictors)
    assert Toy.plan(3, n_train=10, n_dev=5) == {}  # nothing fits
    toy = Toy(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task), width=3)
    assert toy.step_cost(10, 5, 2) == 2 + (3 * 5 + 10) * 2 and toy.step_cost(10, 5, 2, size=1) == 2 + (5 + 10) * 2
    assert Teleprompter.plan(100, 10, 5) == {} and APE.plan(100, 20, 15)["until_cap"] is True


def test_protegi_sizes_a_last_round_to_the_room_a_full_one_does_not_fit_in():
    """Past its planned round, a full ProTeGi round (every beam prompt, every gradient, a bandit selection and the
    beam's closing evaluation) no longer fits under the cap; a round on the best prompt alone, with fewer gradients
    and its children scored on every dev example, does: it runs instead of the search stopping short."""
    from cuecard.teleprompters import ProTeGi

    wording = iter(range(10_000))

    def fresh_proposals(messages):  # every proposal worded anew, so no child is a duplicate
        return f"Level {random.Random(messages[-1]['content']).randint(2, 9)}: label the review (wording {next(wording)})."

    def compile_protegi(cap):
        protegi = ProTeGi(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task), prompt_lm=scripted_lm(fresh_proposals, name="p"),
                          storage=":memory:", progress=False, limits=Limits(max_calls=cap), **ProTeGi.plan(100, 20, 15))
        return protegi.compile(sentiment_program(), trainset=REVIEWS[:20], valset=REVIEWS[20:35]).cuecard_report

    report = compile_protegi(130)
    assert [h["round"] for h in report.history] == [1, 2]
    sized = [n for n in report.notes if "sized to the room left" in n]
    assert sized and "1 of 2 gradient(s) on the best prompt only" in sized[0], report.notes
    last = [c for c in report.candidates if c.round == 2]
    assert last and {c.parent for c in last} == {report.history[0]["beam"][0]}  # the best prompt's children only
    assert all(c.dev_examples == report.dev_size for c in last)
    assert report.usage.calls <= 130
    # a cap too tight even for that: the stop says what the smallest round would have taken
    tight = compile_protegi(100)
    assert [h["round"] for h in tight.history] == [1]
    assert tight.stop_reason.kind == StopKind.NO_ROOM and "or the smallest (one gradient on the best prompt" in tight.stop_reason.detail


@pytest.mark.parametrize("empty_steps", [1, 2])
def test_a_step_that_gives_nothing_new_is_asked_again_with_until_cap_and_two_in_a_row_stop(empty_steps):
    """A small prompt model often repeats an instruction the search has: with until_cap the step is asked again
    (new samples) rather than ending the search with the cap unspent; two empty steps in a row end it, saying so."""
    proposals = {"asked": 0}

    def repeats_then_new(messages):
        text = "\n".join(m["content"] for m in messages)
        if "What was the instruction?" in text:
            return "Level 3: label the review."
        if "<START>" not in text:  # PE2's reasoning request: its proposal request asks for the tagged prompt
            return "The prompt should name a higher level."
        proposals["asked"] += 1
        if proposals["asked"] <= 3 * empty_steps:  # every proposal of the first steps repeats a known instruction
            return "<START>Level 3: label the review.<END>"
        return f"<START>Level {4 + proposals['asked'] % 5}: label the review (draft {proposals['asked']}).<END>"

    def compile_pe2(until_cap):
        proposals["asked"] = 0
        knobs = {**PE2.plan(160, 20, 15), "until_cap": until_cap}
        pe2 = PE2(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task), prompt_lm=scripted_lm(repeats_then_new, name="p"),
                  storage=":memory:", progress=False, limits=Limits(max_calls=160), **knobs)
        return pe2.compile(sentiment_program(), trainset=REVIEWS[:20], valset=REVIEWS[20:35]).cuecard_report

    stopped = compile_pe2(until_cap=False)
    assert stopped.stop_reason.kind == StopKind.NOTHING_NEW and stopped.stop_reason.detail.startswith("step 1 gave no usable new prompt")
    assert not [c for c in stopped.candidates if c.origin == "pe2"]
    spent = compile_pe2(until_cap=True)
    assert sum("until_cap asks again" in note for note in spent.notes) == 1, spent.notes
    if empty_steps == 1:
        assert [c for c in spent.candidates if c.origin == "pe2"], "the step asked again gave new prompts"
        assert spent.usage.calls > stopped.usage.calls
    else:
        assert spent.stop_reason.kind == StopKind.NOTHING_NEW and "2 steps in a row gave nothing new" in spent.stop_reason.detail


@pytest.mark.parametrize("cls", [APE, OPRO, PE2, ProTeGi])
def test_every_method_compiles_a_two_predictor_pipeline_on_its_plan_under_the_cap(cls):
    """The sized steps, readings and proposals of each method run per predictor of a pipeline: the compile
    ends within the cap, with every candidate naming both predictors and some candidate editing each."""
    cap = 200
    teleprompter = cls(metric=exact_match("sentiment"), task_lm=scripted_lm(pipeline_task), prompt_lm=scripted_lm(proposer_reply, name="p"),
                       storage=":memory:", progress=False, limits=Limits(max_calls=cap), **cls.plan(cap, 20, 15, predictors=2))
    report = teleprompter.compile(Pipeline(), trainset=REVIEWS[:20], valset=REVIEWS[20:35]).cuecard_report
    assert report.usage.calls <= cap
    assert all(set(c.instructions) == {"summarize", "label"} for c in report.candidates)
    seed = {"summarize": "Summarize.", "label": "Label."}
    assert {name for c in report.candidates for name, text in c.instructions.items() if text != seed[name]} == set(seed)


@pytest.mark.parametrize("cls", [APE, OPRO, PE2, ProTeGi])
@pytest.mark.parametrize(("n_train", "n_dev", "predictors"), [(20, 15, 1), (12, 8, 2)])
def test_the_smallest_plan_is_the_least_cap_a_plan_fits(cls, n_train, n_dev, predictors):
    smallest = cls.smallest_plan(n_train, n_dev, predictors)
    knobs = cls.plan(smallest, n_train, n_dev, predictors)
    assert knobs and cls.fits(knobs, smallest, n_train, n_dev, predictors) <= smallest
    assert cls.plan(smallest - 1, n_train, n_dev, predictors) == {}


@pytest.mark.parametrize("cls", [APE, OPRO, PE2, ProTeGi])
def test_auto_under_a_cap_no_plan_fits_stops_before_any_lm_call_and_says_what_fits(cls):
    task, proposer = scripted_lm(pipeline_task), scripted_lm(proposer_reply, name="p")
    smallest = cls.smallest_plan(12, 8, predictors=2)
    teleprompter = cls(metric=exact_match("sentiment"), task_lm=task, prompt_lm=proposer, storage=":memory:", progress=False,
                       auto="light", limits=Limits(max_calls=smallest - 1))
    with pytest.raises(TeleprompterConfigError) as raised:
        teleprompter.compile(Pipeline(), trainset=REVIEWS[:12], valset=REVIEWS[12:20])
    message = str(raised.value)
    assert f"a cap of {smallest - 1} LM requests is too small" in message and f"the smallest plan takes {smallest}" in message
    assert "12 train and 8 dev examples with 2 predictor(s)" in message
    assert task.engine.requests == [] and proposer.engine.requests == []
