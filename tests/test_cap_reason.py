"""One "cap reached" value from the usage meter to the report, and one count of what the caps leave a process.

The cap's :class:`~cuecard.stopping.StopReason` is made where the cap is met (the meter refusing a model
call) and the exception, the policy's allocation, the search context and the report all hold that same
object. What the caps leave a process is counted in one place (``Block.room``), other workers'
reservations in the run's shared count included. Real SQLite files; scripted LMs on the real call path.
"""

import threading
import time

import pytest
from cuecard.clients.testing import BernoulliTask, scripted_lm
from cuecard.clients.usage import Limits
from cuecard.engine.evaluate import Evaluator
from cuecard.engine.policies import Policy
from cuecard.engine.study import Engine
from cuecard.errors import BudgetExhausted
from cuecard.metrics import exact_match
from cuecard.reporting.report import CompileReport
from cuecard.stopping import StopKind
from cuecard.teleprompters import APE
from sentiment_cases import REVIEWS, level_task, sentiment_program


@pytest.fixture
def caps_met(monkeypatch):
    """Every cap refusal: (the exception, whether the usage meter's ``start_calls`` made it)."""
    import traceback

    made = []
    init = BudgetExhausted.__init__

    def spy(self, reason):
        init(self, reason)
        made.append((self, any(frame.name == "start_calls" for frame in traceback.extract_stack())))

    monkeypatch.setattr(BudgetExhausted, "__init__", spy)
    return made


@pytest.fixture
def allocations(monkeypatch):
    seen = []
    run = Policy.run

    def spy(self, arms, budget=None):
        allocation = run(self, arms, budget)
        seen.append(allocation)
        return allocation

    monkeypatch.setattr(Policy, "run", spy)
    return seen


def test_the_caps_stop_reason_travels_unchanged_from_the_meter_to_the_report(tmp_path, caps_met, allocations):
    """A cap of 40 model calls met while scoring: the meter's refusal is the report's stop reason, the same object,
    through the evaluator, the engine, the policy's allocation and the search context; saved and loaded, the
    same fields."""
    ape = APE(
        metric=exact_match("sentiment"), task_lm=scripted_lm(level_task, name="scripted/task"),
        prompt_lm=scripted_lm(lambda m: f"Level {len(m[-1]['content']) % 7 + 2}: label the review.", name="scripted/proposer"),
        storage=f"sqlite:///{tmp_path / 'run.db'}", progress=False, limits=Limits(max_model_calls=40),
        num_subsamples=2, num_prompts_per_subsample=3,
    )
    report = ape.compile(sentiment_program(), trainset=REVIEWS[:20], valset=REVIEWS[20:35]).cuecard_report

    reason = report.stop_reason
    assert reason.kind == StopKind.CAP and report.capped is reason
    assert (reason.limit, reason.limit_value) == ("max_model_calls", 40) and "cap of 40 LM calls that reach a model" in reason.detail
    carried = [(exc, in_meter) for exc, in_meter in caps_met if exc.reason is reason]
    assert carried, "the report's reason is no cap refusal's"
    assert carried[0][1], "the reason was made elsewhere than the usage meter"
    assert str(carried[0][0]) == reason.detail
    assert any(allocation.capped is reason for allocation in allocations), "the allocation rebuilt the reason"
    assert report.usage.model_calls == 40
    loaded = CompileReport.model_validate_json(report.model_dump_json())
    assert loaded.stop_reason == reason and loaded.capped == reason
    older = report.model_dump(mode="json", exclude={"capped", "stop_reason"})  # saved when the cap was a line of text
    older = CompileReport.model_validate({**older, "stopped": reason.detail})
    assert older.capped.detail == reason.detail and older.stop_reason.kind == StopKind.CAP


def shared_engine(storage, cap):
    task = BernoulliTask([0.5, 0.6], pool_size=10, seed=1)
    lm = scripted_lm(lambda m: "[[ ## answer ## ]]\nyes\n\n[[ ## completed ## ]]", name="scripted/remote", local=False)
    engine = Engine(Evaluator(task.program, task.metric, task_lm=lm, num_threads=1), task.examples, name="shared", storage=storage,
                    progress=False, limits=Limits(max_model_calls=cap))
    return engine, lm


def test_the_room_left_counts_another_workers_reservation(tmp_path):
    """Two engines on one SQLite run with a cap of 10 model calls: while the other holds 7 (reserved, under way),
    each has the 3 the run has free; once this one reserved them, its reservation not used yet is its own to use
    and the other's room is what it holds and has not used."""
    storage = f"sqlite:///{tmp_path / 'run.db'}"
    mine, lm = shared_engine(storage, 10)
    other, _ = shared_engine(storage, 10)
    assert mine.claims.shared and other.claims.shared
    with mine.session():  # the other worker's calls are not made in this block: it reserves on its own
        assert mine.block.room() == (None, 10)
        other.block.start_calls(7)  # reserved in the run's count, the calls under way
        assert mine.block.room().model_calls == 3 == other.block.room().model_calls  # the 3 the run has free
        lm("one call")  # reserves a batch (the 3 the run has left), uses one
        assert mine.block.usage.model_calls == 1 and mine.block.room().model_calls == 2
        assert other.block.room().model_calls == 0
        other.block.end_calls(7)  # ended without reaching a model: the reservation stays the other's
        assert mine.block.room().model_calls == 2 and other.block.room().model_calls == 7
    assert mine.block.room(model_calls=False) == (None, None)


def test_proposals_sent_together_are_no_more_than_the_room_another_worker_leaves(tmp_path, monkeypatch):
    """Near a cap of 10 model calls while another worker holds 7: six proposals asked together go out as a group
    of three (the first three, all answered), then one more alone, which the cap refuses; none is sent only to
    be refused in a group."""
    import cuecard.teleprompters.proposing as proposing

    groups = []
    run_together = proposing.run_with_deadlines

    def spy(calls, **kwargs):
        groups.append(len(calls))
        return run_together(calls, **kwargs)

    monkeypatch.setattr(proposing, "run_with_deadlines", spy)
    lock, flight = threading.Lock(), {"now": 0, "most": 0}

    def propose(messages):
        with lock:
            flight["now"] += 1
            flight["most"] = max(flight["most"], flight["now"])
        time.sleep(0.05)
        with lock:
            flight["now"] -= 1
        return "Say the mood."

    prompt_lm = scripted_lm(propose, name="scripted/proposer", local=False)
    ape = APE(metric=exact_match("sentiment"), task_lm=scripted_lm(level_task), prompt_lm=prompt_lm, num_threads=16)
    storage = f"sqlite:///{tmp_path / 'run.db'}"
    mine, _ = shared_engine(storage, 10)
    other, _ = shared_engine(storage, 10)

    class Ctx:  # what asking the prompt model needs of a search context
        engine, samples = mine, 0

        def next_sample_index(self):
            self.samples += 1
            return self.samples

        def fail(self, reason):
            raise AssertionError(reason)

    requests = [[{"role": "user", "content": f"Request {i}."}] for i in range(6)]
    with mine.session():
        other.block.start_calls(7)
        with pytest.raises(BudgetExhausted, match="cap of 10 LM calls that reach a model"):
            ape.ask_many(Ctx(), requests, temperature=0.8)
        other.block.end_calls(7)
    assert groups == [3] and flight["most"] == 3
    # the first three requests of the serial order, sent together: they may reach the model in any order
    assert sorted(messages[-1]["content"] for messages in prompt_lm.engine.requests) == ["Request 0.", "Request 1.", "Request 2."]


def test_one_process_alone_has_the_room_it_had(tmp_path):
    """Alone on a SQLite run and in memory, the room is the cap minus what the run spent (earlier processes included)."""
    for storage in (f"sqlite:///{tmp_path / 'alone.db'}", ":memory:"):
        engine, lm = shared_engine(storage, 10)
        with engine.session():
            for i in range(4):
                lm(f"call {i}")
            block = engine.block
            assert block.room().model_calls == 6 == 10 - (block.usage + block.spent_before).model_calls
    again, lm = shared_engine(f"sqlite:///{tmp_path / 'alone.db'}", 10)  # resumed: the 4 spent count
    with again.session():
        assert again.block.room().model_calls == 6
        lm("call 4")
        assert again.block.room().model_calls == 5
