"""Searches that go on to their cap size their last step to the room left instead of stopping short of it."""

import random

import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.clients.usage import Limits
from cuecard.engine.stopping import StopKind
from cuecard.metrics import exact_match
from cuecard.teleprompters import APE, OPRO, PE2
from sentiment_cases import REVIEWS, level_task, sentiment_program


def proposer_reply(messages):
    """Readings of the task are weak (level 3) and proposals below 8, so a search always has errors to learn from."""
    text = "\n".join(m["content"] for m in messages)
    if "What was the instruction?" in text:
        return "Level 3: label the review."
    return f"Level {random.Random(text).randint(2, 7)}: label the review."


def compile_on_plan(cls, cap):
    teleprompter = cls(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task), prompt_lm=scripted_lm(proposer_reply, name="p"),
                       storage=":memory:", progress=False, limits=Limits(max_calls=cap), **cls.plan(cap, 20, 15))
    return teleprompter.compile(sentiment_program(), trainset=REVIEWS[:20], valset=REVIEWS[20:35]).cuecard_report


@pytest.mark.parametrize(("cls", "cap"), [(OPRO, 100), (PE2, 120)])
def test_the_last_step_is_sized_to_the_room_left(cls, cap):
    """A full step (4 OPRO proposals, 3 PE2 ones) no longer fits, a smaller one does: it runs, and the cap
    is spent to 90% or the search says why it stopped after it."""
    report = compile_on_plan(cls, cap)
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
    ape.acceptance_reserve = lambda ctx: 10  # the seed's check still needs 10 requests
    cost = lambda n: 8 * n  # noqa: E731
    assert ape.step_size(ctx, 0, 1, 4, cost) == 4  # within the planned steps: a full one
    assert ape.step_size(ctx, 1, 1, 4, cost) == 3 and "3 of 4 new candidates" in ctx.notes[-1]  # 40 - 10 = 30 >= 24
    ctx.room_left = 17
    assert ape.step_size(ctx, 1, 1, 4, cost) == 0 and ctx.stopped[0] == StopKind.NO_ROOM and ctx.stopped[1].startswith("17 requests left")
    assert APE(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task)).step_size(ctx, 1, 1, 4, cost) == 0  # no until_cap
