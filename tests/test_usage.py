"""The usage meter and blocks of work, through the real DSPy call path with a scripted engine."""

import threading

import dspy
import pytest
from cuecard import BudgetExhausted, Limits, PlainAdapter, track
from cuecard.clients.testing import scripted_lm


def test_meter_counts_calls_and_tokens():
    lm = scripted_lm(lambda messages: "positive answer")
    lm("one")
    lm("two")
    usage = lm.meter.usage
    assert usage.calls == 2 and usage.model_calls == 2 and usage.cache_hits == 0
    assert usage.completion_tokens == 4
    assert usage.prompt_tokens > 0
    assert usage.lm_seconds > 0


def test_cache_hit_is_counted_and_reaches_no_model(fresh_cache):
    lm = scripted_lm(lambda messages: "ok", cache=True)
    lm("same prompt")
    lm("same prompt")
    usage = lm.meter.usage
    assert usage.calls == 2 and usage.cache_hits == 1 and usage.model_calls == 1
    assert len(lm.engine.requests) == 1


def test_blocks_nest_and_split_by_model():
    task = scripted_lm(lambda m: "a", name="scripted/task")
    proposer = scripted_lm(lambda m: "b", name="scripted/proposer")
    with track("compile") as outer:
        task("x")
        with track("proposal") as inner:
            proposer("y")
            proposer("z")
    assert outer.usage.calls == 3
    assert inner.usage.calls == 2
    assert set(outer.by_model) == {"scripted/task", "scripted/proposer"}
    task("outside")
    assert outer.usage.calls == 3


def test_errors_are_counted():
    def fail(messages):
        raise RuntimeError("engine down")

    lm = scripted_lm(fail)
    with pytest.raises(Exception, match="engine down"):
        lm("x")
    assert lm.meter.usage.errors == 1 and lm.meter.usage.model_calls == 0


def test_call_cap_stops_before_the_model():
    lm = scripted_lm(lambda m: "a")
    with track("capped", Limits(max_model_calls=2)) as block:
        lm("1")
        lm("2")
        with pytest.raises(BudgetExhausted, match="cap of 2 LM calls that reach a model"):
            lm("3")
    assert block.usage.model_calls == 2
    assert len(lm.engine.requests) == 2


def test_meter_is_thread_safe():
    lm = scripted_lm(lambda m: "a")

    def work():
        for i in range(25):
            lm(f"prompt {threading.get_ident()} {i}")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lm.meter.usage.calls == 100


def test_copies_share_the_meter():
    lm = scripted_lm(lambda m: "a")
    hot = lm.copy(temperature=0.9)
    hot("x")
    assert lm.meter.usage.calls == 1


def test_parse_failures_reach_open_blocks():
    lm = scripted_lm(lambda m: "")
    with track() as block, dspy.context(lm=lm, adapter=PlainAdapter()):
        dspy.Predict("q -> a")(q="?")
    assert block.usage.parse_failures == 1


def test_a_call_asking_for_n_completions_counts_n_requests_and_is_refused_when_they_would_pass_a_cap():
    lm = scripted_lm(lambda messages: "x")
    with track("n", Limits(max_calls=4)) as block:
        assert len(lm("first", n=3)) == 3
        with pytest.raises(BudgetExhausted, match="cap of 4 LM requests"):
            lm("second", n=2)
        lm("third")
    assert (block.usage.calls, block.usage.model_calls) == (4, 4)
    assert len(lm.engine.requests) == 4


def test_calls_under_way_in_other_threads_count_against_the_cap_on_model_calls():
    """Six threads ask a slow model at once under a cap of 3 model calls: three reach it, three are refused
    (a cap checked only on finished calls lets all six through)."""
    import contextvars
    import time

    lm = scripted_lm(lambda m: time.sleep(0.3) or "a", local=False)
    refused = []
    with track("capped", Limits(max_model_calls=3)) as block:

        def ask(i: int) -> None:
            try:
                lm(f"question {i}")
            except BudgetExhausted:
                refused.append(i)

        threads = [threading.Thread(target=contextvars.copy_context().run, args=(ask, i)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert block.usage.model_calls == len(lm.engine.requests) == 3
    assert len(refused) == 3
