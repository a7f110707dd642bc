"""``CuecardLM.__call__`` and ``acall`` take the same steps: the run's record (replay, claim, give back),
the caps, the usage meter and the stored failures, through the real DSPy call path with scripted engines."""

import asyncio

import pytest
from cuecard import Limits, track
from cuecard.clients.lm import CuecardLM
from cuecard.clients.record import MemoryRecord, StoredReply, recording
from cuecard.clients.testing import ScriptedEngine


class LoggedRecord(MemoryRecord):
    """A record that logs what the LM asks of it, and can be given claims back as the run's record can."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, str]] = []

    def get(self, key: str) -> StoredReply | None:
        self.log.append(("get", key))
        return super().get(key)

    def put(self, key: str, reply: StoredReply) -> None:
        self.log.append(("put", key))
        super().put(key, reply)

    def abandon(self, key: str) -> None:
        self.log.append(("abandon", key))


class AsyncScriptedEngine:
    """The async counterpart of a :class:`ScriptedEngine`: the same replies, awaited."""

    def __init__(self, engine: ScriptedEngine) -> None:
        self.engine = engine

    def __deepcopy__(self, memo: dict) -> "AsyncScriptedEngine":
        return self

    async def complete(self, request):
        await asyncio.sleep(0)  # a real suspension, as a network call has
        return self.engine.complete(request)

    async def aclose(self) -> None:
        pass


def reply(messages: list[dict[str, str]]) -> str:
    text = messages[-1]["content"]
    if "boom" in text:
        raise RuntimeError("engine down for boom")
    return f"answer to {text}"


def scripted_pair() -> CuecardLM:
    engine = ScriptedEngine(reply)
    return CuecardLM(
        "scripted/paths", spec="scripted/paths", is_local=True, engine=engine,
        async_engine=AsyncScriptedEngine(engine), temperature=0.0, max_tokens=32, cache=False, num_retries=0,
    )


# each step: (prompt, n); a step's outcome is its outputs or the error it raised
STEPS = [("first", 1), ("first", 1), ("second", 2), ("boom", 1), ("third", 2)]


def run(ask) -> dict:
    """The steps through one path (``ask(lm, prompt, n)``), under a cap of 4 model calls, then a replay
    refused by a cap of 1 request; what the LM, the record and the blocks saw."""
    lm, record, outcomes = scripted_pair(), LoggedRecord(), []

    def step(prompt: str, n: int) -> None:
        try:
            outcomes.append(ask(lm, prompt, n))
        except Exception as exc:  # the error is compared, not only its type
            outcomes.append((type(exc).__name__, str(exc)))

    with recording(record), track("capped", Limits(max_model_calls=4)) as block:
        for prompt, n in STEPS:
            step(prompt, n)
        with track("one request", Limits(max_calls=1)) as small:
            step("first", 1)
            step("first", 1)
    return {
        "outcomes": outcomes,
        "record": {key: reply.model_dump() for key, reply in record.replies.items()},
        "record log": record.log,
        "meter": lm.meter.usage.model_dump(exclude={"lm_seconds"}),
        "block": block.usage.model_dump(exclude={"lm_seconds"}),
        "small block": small.usage.model_dump(exclude={"lm_seconds"}),
        "under way": block._in_flight,
        "engine requests": len(lm.engine.requests),
        "history": len(lm.history),
        "seconds metered": lm.meter.usage.lm_seconds > 0,
    }


def sync_ask(lm: CuecardLM, prompt: str, n: int):
    return lm(prompt, n=n)


def async_ask(lm: CuecardLM, prompt: str, n: int):
    return asyncio.run(lm.acall(prompt, n=n))


def test_the_sync_and_async_paths_store_meter_and_refuse_alike():
    sync, asynchronous = run(sync_ask), run(async_ask)
    for what in sync:
        assert asynchronous[what] == sync[what], what
    # and what they agree on is the steps' meaning, not an empty run
    outcomes = sync["outcomes"]
    assert outcomes[0] == outcomes[1] == ["answer to first"]
    assert outcomes[2] == ["answer to second"] * 2
    assert outcomes[3][1].endswith("engine down for boom")
    assert outcomes[4][0] == "BudgetExhausted" and "cap of 4 LM calls" in outcomes[4][1]
    assert outcomes[5] == ["answer to first"]
    assert outcomes[6][0] == "BudgetExhausted" and "cap of 1 LM requests" in outcomes[6][1]
    assert [reply["requests"] for reply in sync["record"].values()] == [1, 2]
    assert [action for action, _ in sync["record log"]] == (
        ["get", "put", "get", "get", "put", "get", "abandon", "get", "abandon", "get", "get"]
    )
    meter = sync["meter"]
    assert (meter["calls"], meter["model_calls"], meter["replayed"], meter["errors"]) == (6, 3, 2, 1)
    assert sync["block"]["model_calls"] == 3 and sync["under way"] == 0
    assert sync["small block"]["replayed"] == 1
    assert sync["engine requests"] == 4 and sync["history"] == 2 and sync["seconds metered"]


@pytest.mark.parametrize("ask", [sync_ask, async_ask], ids=["sync", "async"])
def test_a_reply_recorded_by_one_path_is_replayed_by_the_other(ask):
    lm, record = scripted_pair(), LoggedRecord()
    other = async_ask if ask is sync_ask else sync_ask
    with recording(record):
        first = ask(lm, "shared", 1)
        again = other(lm, "shared", 1)
    assert again == first and len(lm.engine.requests) == 1
    assert [action for action, _ in record.log] == ["get", "put", "get"] and len(set(record.replies)) == 1
    assert lm.meter.usage.replayed == 1
