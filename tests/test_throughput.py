"""Throughput in one process: a stage's (candidate, example) pairs are scored as one pool across
candidates, and independent proposal requests go out together, with the results of the serial order.

Scripted LMs with a fixed latency go through the real DSPy + cuecard call path (as a remote model:
threads are used); the engine stores into a real SQLite file. Speed figures are in
``benchmarks/compile_throughput.py``, not here: these tests check order, results and concurrency.
"""

import os
import threading
import time

import cuecard
import pytest
from cuecard.clients.testing import BernoulliTask, scripted_lm
from cuecard.engine.evaluate import Evaluator
from cuecard.engine.policies import FullEvaluation, MultiStage
from cuecard.engine.study import Engine
from cuecard.metrics import exact_match
from cuecard.teleprompters import APE
from sentiment_cases import REVIEWS, sentiment_program


class InFlight:
    """Wraps a reply function with a latency and counts the calls in flight (the most at once)."""

    def __init__(self, reply, latency=0.03):
        self.reply, self.latency = reply, latency
        self.now = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, messages):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self.latency)
            return self.reply(messages)
        finally:
            with self.lock:
                self.now -= 1


def bernoulli_engine(tmp_path, name, threads, limits=None, n_arms=9, pool=24):
    task = BernoulliTask([0.3 + 0.05 * i for i in range(n_arms)], pool_size=pool, seed=3)
    counter = InFlight(lambda messages: f"[[ ## answer ## ]]\n{task._reply(messages)}\n\n[[ ## completed ## ]]")
    lm = scripted_lm(counter, name="scripted/remote-bernoulli", local=False)
    engine = Engine(
        Evaluator(task.program, task.metric, task_lm=lm, num_threads=threads), task.examples, name="pooled",
        storage=f"sqlite:///{tmp_path / name}", progress=False, limits=limits,
    )
    for arm in range(n_arms):
        engine.add_candidate(task.candidate(arm))
    return engine, counter, lm


def outcome(engine, allocation):
    return (
        [(e.arm, e.mean, e.n, e.pruned) for e in allocation.ranking],
        allocation.capped,
        [engine.scores(arm) for arm in range(len(engine.arms))],
        engine.evaluations,
    )


def test_a_stage_is_scored_as_one_pool_across_candidates_with_the_serial_results(tmp_path):
    policy = MultiStage(min_examples=4, reduction=3, survivors=3, final_examples=12)
    serial, serial_calls, _ = bernoulli_engine(tmp_path, "serial.db", threads=1)
    pooled, pooled_calls, _ = bernoulli_engine(tmp_path, "pooled.db", threads=16)
    expected = outcome(serial, serial.allocate(policy))
    assert outcome(pooled, pooled.allocate(policy)) == expected
    assert expected[0][0][3] is False and sum(e[3] for e in expected[0]) == 6  # six of nine arms pruned
    assert serial_calls.most == 1
    # one candidate's part of any stage is at most 8 examples (4, then 12 - 4): more at once is a pool
    assert pooled_calls.most > 8
    stored = {key: {i: s.score for i, s in arm.stored.items()} for key, arm in ((a.record.key, a) for a in pooled.arms)}
    assert stored == {a.record.key: {i: s.score for i, s in a.stored.items()} for a in serial.arms}


@pytest.mark.parametrize("cap", [13, 22])
def test_a_cap_cuts_a_pooled_stage_where_the_serial_order_stops_and_a_rerun_takes_the_same_path(tmp_path, cap):
    limits = cuecard.Limits(max_calls=cap)
    serial, _, _ = bernoulli_engine(tmp_path, "serial.db", threads=1, limits=limits)
    pooled, counter, _ = bernoulli_engine(tmp_path, "pooled.db", threads=16, limits=limits)
    expected = outcome(serial, serial.allocate(FullEvaluation(n_examples=4)))
    got = outcome(pooled, pooled.allocate(FullEvaluation(n_examples=4)))
    assert got == expected and "cap of" in got[1].detail
    assert pooled.block.usage.calls == cap and counter.most > 4
    rerun, rerun_calls, lm = bernoulli_engine(tmp_path, "pooled.db", threads=16, limits=limits)
    assert outcome(rerun, rerun.allocate(FullEvaluation(n_examples=4))) == expected
    assert rerun.computed == 0 and rerun.read_back == cap and rerun_calls.most == 0


def test_independent_proposals_go_out_together_with_the_serial_replies(tmp_path):
    def propose(messages):
        text = messages[-1]["content"]
        return f"Say the mood of the review ({len(text) % 7})."

    def compile_with(threads):
        proposer = InFlight(propose, latency=0.3)
        task = InFlight(lambda messages: "[[ ## sentiment ## ]]\npositive\n\n[[ ## completed ## ]]", latency=0.0)
        ape = APE(
            metric=exact_match("sentiment"), task_lm=scripted_lm(task, name="scripted/task", local=False),
            prompt_lm=scripted_lm(proposer, name="scripted/proposer", local=False), num_subsamples=3,
            num_prompts_per_subsample=2, num_demos=3, storage=f"sqlite:///{tmp_path / f'ape{threads}.db'}",
            progress=False, num_threads=threads, policy=FullEvaluation(n_examples=6),
        )
        report = ape.compile(sentiment_program(), trainset=REVIEWS[:20]).cuecard_report
        return proposer, [(c.instructions, c.origin, c.dev_score, c.dev_examples) for c in report.candidates], report.usage.calls

    serial, serial_candidates, serial_calls = compile_with(1)
    pooled, pooled_candidates, pooled_calls = compile_with(16)
    assert pooled_candidates == serial_candidates and pooled_calls == serial_calls
    assert serial.most == 1 and pooled.most == 6  # three subsamples, two samples each


def test_proposals_sent_together_stop_at_the_cap_like_one_at_a_time():
    proposer = InFlight(lambda messages: "Level 7 please.", latency=0.3)
    prompt_lm = scripted_lm(proposer, name="scripted/proposer", local=False)
    compiled = APE(
        metric=exact_match("sentiment"), task_lm=scripted_lm(lambda m: "negative", name="scripted/task", local=False),
        prompt_lm=prompt_lm, storage=":memory:", progress=False,
        limits=cuecard.Limits(max_calls=12), num_subsamples=2, num_prompts_per_subsample=30,
    ).compile(sentiment_program(), trainset=REVIEWS[:20])
    report = compiled.cuecard_report
    assert report.usage.calls == 12 == len(prompt_lm.engine.requests)
    assert proposer.most > 4  # the twelve requests the cap affords went out together, not one at a time
    assert report.stop_reason.by_cap and "cap of 12 LM requests" in report.stop_reason.text


def test_a_claim_held_by_another_worker_is_no_database_error(postgres_url):
    """Two workers claiming the same pairs on a real PostgreSQL: the loser gets False without a
    duplicate-key error, so the server rolls back no more transactions than when nobody loses a claim
    (before, each lost claim was a rolled-back INSERT and an ERROR line in the server's log)."""
    import psycopg
    from cuecard.engine.sharing import SQLClaims

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute('CREATE DATABASE "claims_no_error"')
    url = postgres_url.rsplit("/", 1)[0] + "/claims_no_error"

    def rollbacks():
        time.sleep(1.5)  # closed connections' server processes have reported their statistics
        with psycopg.connect(url, autocommit=True) as connection:
            return connection.execute("SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]

    def two_workers(run, contended):
        first, second = SQLClaims(url, run), SQLClaims(url, run)
        try:
            won = [first.claim("key", i) for i in range(20)]
            lost = [second.claim("key", i if contended else 100 + i) for i in range(20)]
        finally:
            first.close()
            second.close()
        return won, lost

    two_workers("warm-up", False)  # the table exists
    start = rollbacks()
    won, lost = two_workers("alone", False)
    assert all(won) and all(lost)
    baseline = rollbacks() - start
    start = rollbacks()
    won, lost = two_workers("contended", True)
    assert all(won) and not any(lost)
    assert rollbacks() - start == baseline


def fresh_postgres(postgres_url, name):
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return postgres_url.rsplit("/", 1)[0] + "/" + name


class Statements:
    """Counts the SQL statements and commits SQLAlchemy sends while it is entered (every engine of the process);
    with ``this_thread_only``, only those of the thread that entered it (a claims heartbeat runs in its own)."""

    def __init__(self, this_thread_only=False):
        self.this_thread_only = this_thread_only

    def __enter__(self):
        import sqlalchemy as sa

        self.statements, self.commits, self.thread = [], 0, threading.get_ident()
        self._hooks = [(sa.engine.Engine, "before_cursor_execute", self._statement), (sa.engine.Engine, "commit", self._commit)]
        for target, name, hook in self._hooks:
            sa.event.listen(target, name, hook)
        return self

    def _statement(self, conn, cursor, statement, *args):
        if not self.this_thread_only or threading.get_ident() == self.thread:
            self.statements.append(" ".join(statement.split()[:3]))

    def _commit(self, conn):
        if not self.this_thread_only or threading.get_ident() == self.thread:
            self.commits += 1

    def __exit__(self, *exc):
        import sqlalchemy as sa

        for target, name, hook in self._hooks:
            sa.event.remove(target, name, hook)


def test_a_chunk_of_work_is_claimed_in_one_statement_and_a_dead_owners_share_is_taken_over(postgres_url):
    """Eight pairs claimed in one statement, alone (one round trip: no BEGIN and COMMIT around it); the second
    worker wins none of them and learns their owners in one statement too; a pair whose owner is gone (a
    dead process of this host) is taken over."""
    from cuecard.engine.sharing import SQLClaims

    url = fresh_postgres(postgres_url, "claim_chunks")
    first, second = SQLClaims(url, "chunks"), SQLClaims(url, "chunks")
    try:
        work = [("key", i) for i in range(8)]
        with Statements(this_thread_only=True) as sql:
            assert first.claim_many(work) == set(work)
        assert len(sql.statements) == 1 and sql.commits == 0  # no transaction around it
        with Statements(this_thread_only=True) as sql:
            assert second.claim_many(work + [("key", 8)]) == {("key", 8)}
        assert len(sql.statements) == 1 and sql.commits == 0
        first.owner = first.owner.replace(f":{os.getpid()}:", ":999999999:")  # as if its process had died
        assert first.claim_many([("other", 0)]) == {("other", 0)}
        assert second.claim_many([("other", 0), ("key", 0)]) == {("other", 0)}, "a dead owner's claim was not taken over"
        assert ("other", 0) in second.taken
    finally:
        first.close()
        second.close()


def test_a_waiting_worker_wakes_when_another_stores_scores(postgres_url):
    """A worker waiting for others' scores on PostgreSQL wakes on their notification, well before its timeout
    (before, it slept its whole back-off, up to 2 s, at every wait)."""
    from cuecard.engine.sharing import SQLClaims

    url = fresh_postgres(postgres_url, "wake_up")
    waiting, storing = SQLClaims(url, "wake"), SQLClaims(url, "wake")
    try:
        waiting.wait(0.01)  # listening from now on
        timer = threading.Timer(0.3, storing.notify)
        start = time.monotonic()
        timer.start()
        waiting.wait(30.0)
        assert time.monotonic() - start < 20.0, "the wait ran to its timeout: no notification arrived"
        timer.join()
    finally:
        waiting.close()
        storing.close()


def test_one_worker_claims_and_stores_a_stage_by_chunks(tmp_path, monkeypatch):
    """A shared run (a SQLite file other processes could join) scored on 4 threads: pairs are claimed a chunk
    per statement and a chunk's scores, details and running scores are written in one statement each (before:
    an INSERT per claim and per attribute, and a read of the whole trial per chunk to report running scores)."""
    from cuecard.engine import study

    monkeypatch.setattr(study, "STORE_EVERY", 600.0)  # chunks by size only, however slow the machine
    engine, _, _ = bernoulli_engine(tmp_path, "shared.db", threads=4, n_arms=6, pool=24)
    assert engine.claims.shared
    with Statements() as sql:
        allocation = engine.allocate(FullEvaluation(n_examples=24))
    assert engine.computed == 6 * 24 and allocation.best is not None
    claims = sum(1 for statement in sql.statements if statement.startswith("INSERT INTO cuecard_claims"))
    scores = sum(1 for statement in sql.statements if statement.startswith("INSERT INTO trial_user_attributes"))
    assert 0 < claims <= engine.computed / 2, f"{claims} claim statements for {engine.computed} evaluations"
    assert 0 < scores <= engine.computed / 2, f"{scores} score statements for {engine.computed} evaluations"
    steps = [engine.store.storage.get_trial(arm.trial_id).intermediate_values for arm in engine.arms]
    assert all(sorted(values) == list(range(1, 25)) for values in steps), "a running score was not stored"
    assert steps[0][24] == pytest.approx(engine.mean(0))


def test_a_stage_told_to_the_pruner_at_once_records_the_rungs_one_at_a_time_would(tmp_path):
    """The engine tells Optuna's pruner about a stage's arms in one read and one write (record_rungs); the trials
    end with the same rung values and the pruner's verdicts are the same as asking arm after arm."""
    import optuna
    from cuecard.engine.store import RunStore

    values = [0.2, 0.9, 0.5, 0.7, 0.1, 0.6, 0.4]
    outcomes = []
    for way in ("one at a time", "at once"):
        store = RunStore(f"sqlite:///{tmp_path / way.replace(' ', '_')}.db", "rungs")
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=3, reduction_factor=3, min_early_stopping_rate=0)
        ids = [store.new_trial({}) for _ in values]
        for step in (3, 9):
            store.write_trials({trial: ({}, {step: value - step / 100}) for trial, value in zip(ids, values, strict=True)})
            if way == "one at a time":
                pruned = {trial for trial in ids if store.should_prune(trial, pruner)}
            else:
                pruned = store.record_rungs(ids, pruner)
            rungs = [{k: v for k, v in store.storage.get_trial(trial).system_attrs.items() if k.startswith("completed_rung")}
                     for trial in ids]
            outcomes.append((way, step, [ids.index(t) for t in sorted(pruned)], rungs))
    alone, together = outcomes[:2], outcomes[2:]
    assert [o[1:] for o in alone] == [o[1:] for o in together]
    assert alone[0][2] and alone[0][3][0], "nothing pruned or recorded: the check would not tell the two ways apart"


def test_on_postgresql_one_statement_requests_store_what_optunas_api_stores(postgres_url):
    """On PostgreSQL the store sends its frequent requests as one statement each (store_postgres.OneStatement).
    Run side by side with Optuna's own API on the same server, the trials and the study end up the same as
    Optuna reads them back: new trials (numbered alike), scores, running values (a NaN and an infinity included), a closed trial left
    untouched, trials closed as complete or pruned (with their last running value, an infinity included), study
    attributes; the narrow reads agree; a store wakes a process listening on the run."""
    import math

    import optuna
    import psycopg
    from cuecard.engine.store import RunStore

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute('CREATE DATABASE "one_statement"')
    url = postgres_url.rsplit("/", 1)[0] + "/one_statement"

    def build(store: RunStore) -> dict[str, object]:
        ids = [store.new_trial({"candidate": {"key": f"k{n}"}, "instruction": f"text {n}"}) for n in range(3)]
        store.close_many([(ids[2], "COMPLETE", 0.5)])
        store.write_trials({ids[0]: ({"s.0": 1.0, "x.0": {"output": {"a": "b"}}}, {1: 1.0}),
                            ids[1]: ({"s.0": 0.0, "f.1": "timeout"}, {1: float("nan"), 2: float("inf")}),
                            ids[2]: ({"s.0": 1.0}, {1: 1.0})})
        closed = store.write_trials({ids[0]: ({"s.1": 0.0}, {1: 0.25, 2: 0.5})}, notify=None)
        pruned = [store.new_trial({}) for _ in range(2)]
        store.write_trials({pruned[0]: ({}, {1: 0.25, 2: 0.75})})
        closed |= store.close_many([(ids[1], "PRUNED", None), (pruned[0], "PRUNED", None), (pruned[1], "PRUNED", None),
                                    (ids[2], "COMPLETE", 0.9)])
        store.set_study_attr("status", {"state": "running"})
        store.set_study_attr("status", {"state": "finished", "n": 2})
        read = store.storage
        ids = ids + pruned
        trials = [read.get_trial(trial_id) for trial_id in ids]
        return {
            "closed": {ids.index(i) for i in closed},
            "states": [(t.number, t.state.name, t.values, t.datetime_start is not None, t.datetime_complete is not None) for t in trials],
            "attrs": [t.user_attrs for t in trials],
            "steps": [{step: "nan" if math.isnan(v) else v for step, v in t.intermediate_values.items()} for t in trials],
            "study": read.get_study_user_attrs(store._study_id),
            "via store": store.study_attrs(),
            "candidates": [(t.number, t.state, t.attrs) for t in store.trials_with("candidate")],
            "scores": {ids.index(i): (t.state, t.attrs) for i, t in store.score_attrs(ids, ("s.", "f.")).items()},
        }

    optuna_api = RunStore(url, "optuna api")
    optuna_api._one_statement = None
    one = RunStore(url, "one statement")
    assert one._one_statement is not None, "PostgreSQL did not get the one-statement requests"
    expected, found = build(optuna_api), build(one)
    assert found == expected
    assert expected["steps"][1] == {1: "nan", 2: math.inf} and expected["attrs"][2] == {"candidate": {"key": "k2"}, "instruction": "text 2"}
    assert expected["states"] == [(0, "RUNNING", None, True, False), (1, "PRUNED", [math.inf], True, True), (2, "COMPLETE", [0.5], True, True),
                                  (3, "PRUNED", [0.75], True, True), (4, "PRUNED", None, True, True)]

    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute('LISTEN "woken"')
        trial = one.new_trial({})
        assert one.write_trials({trial: ({"s.0": 1.0}, {1: 1.0})}, notify="woken") == set()
        assert [n.channel for n in listener.notifies(timeout=5, stop_after=1)] == ["woken"]
    assert optuna.load_study(study_name="one statement", storage=one.storage).trials[-1].user_attrs == {"s.0": 1.0}


def test_on_postgresql_trials_created_at_once_by_several_workers_get_distinct_numbers(postgres_url):
    """Creating a trial on PostgreSQL is one transaction of two statements (the study's row locked, then the trial
    inserted with its number and attributes); four workers creating trials at once still number them 0..N-1."""
    from concurrent.futures import ThreadPoolExecutor

    import psycopg
    from cuecard.engine.store import RunStore

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute('CREATE DATABASE "numbering"')
    url = postgres_url.rsplit("/", 1)[0] + "/numbering"
    stores = [RunStore(url, "numbering") for _ in range(4)]

    def create(store):
        return [store.new_trial({"candidate": {"key": f"{id(store)}-{n}"}}) for n in range(10)]

    with ThreadPoolExecutor(4) as pool:
        created = [trial for trials in pool.map(create, stores) for trial in trials]
    numbers = sorted(t.number for t in stores[0].trials())
    assert len(set(created)) == 40 and numbers == list(range(40))
