"""Scale-out: one compile run by several worker processes on one storage (PostgreSQL, or a SQLite file).

Each worker is ``tests/scaleout_worker.py``: the same APE compile on the same run, with scripted
task and prompt models (a fixed latency per task call). The reference is the same compile run by
one process alone on a fresh run. Checked here: the workers split the evaluations (each one stored
once, none computed twice), end with the reference's outcome, close every trial, ask the prompt
model each proposal once overall, survive a worker killed with SIGKILL, share a cap on requests, share a
cap on model calls (reserved in the run's count before they are made; a killed worker's reservation is
given back) and report the same run-wide usage in every worker's report and saved file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import scaleout_worker as worker  # noqa: E402

DELAY = 0.03
"""Seconds each task-model call takes in the workers."""
CAP = 300
MODEL_CAP = 60
"""The cap on model calls shared by three workers (the small compile needs about 170)."""


# ---- helpers ------------------------------------------------------------------------------------------
def read_log(path: Path) -> list[tuple[str, int]]:
    """The (candidate key, example) pairs a worker computed and stored itself, in order (complete lines
    only: a worker killed while writing leaves half a line)."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]
    return [(key, int(index)) for key, index in (line.split() for line in lines)]


def fresh_database(postgres_url: str, name: str) -> str:
    """A new, empty database on the test server (each test gets a fresh run under the same run name)."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return postgres_url.rsplit("/", 1)[0] + "/" + name


class Workers:
    """Worker processes started together on one storage: each signals it has imported, then one file
    releases them all at once."""

    def __init__(
        self, storage: str, folder: Path, count: int, size: str = "small", cap: int | None = None, kind: str = "requests"
    ) -> None:
        self.folder = folder
        self.outs = [folder / f"worker{i}.json" for i in range(count)]
        go = folder / "go"
        extra = [str(cap), kind] if cap else []
        self.stderr = [(folder / f"worker{i}.err").open("w") for i in range(count)]
        self.processes = [
            subprocess.Popen(
                [sys.executable, str(HERE / "scaleout_worker.py"), storage, str(out), str(go), str(DELAY), size, *extra],
                stdout=subprocess.DEVNULL, stderr=err,
            )
            for out, err in zip(self.outs, self.stderr, strict=True)
        ]
        deadline = time.monotonic() + 120
        try:
            while not all(Path(f"{out}.ready").exists() for out in self.outs):
                assert time.monotonic() < deadline, "the workers did not start"
                assert all(p.poll() is None for p in self.processes), self.errors()
                time.sleep(0.05)
        except BaseException:
            self.kill()
            raise
        go.touch()

    def errors(self) -> str:
        return "\n".join((self.folder / f"worker{i}.err").read_text()[-1500:] for i in range(len(self.outs)))

    def log(self, i: int) -> list[tuple[str, int]]:
        return read_log(Path(f"{self.outs[i]}.log"))

    def stored_so_far(self) -> int:
        return sum(len(self.log(i)) for i in range(len(self.outs)))

    def wait(self, which: list[int] | None = None) -> list[dict]:
        which = list(range(len(self.outs))) if which is None else which
        try:
            for i in which:
                code = self.processes[i].wait(timeout=180)
                assert code == 0, f"worker {i} exited with {code}:\n{self.errors()}"
        finally:
            self.kill()  # none is left running, whatever happened
        return [json.loads(self.outs[i].read_text()) for i in which]

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for handle in self.stderr:
            handle.close()


def study_state(storage: str) -> tuple[set[tuple[str, int]], Counter]:
    """The run as stored: every (candidate key, example) with a score, and the trials' states."""
    from cuecard.engine.store import database_url

    rdb = optuna.storages.RDBStorage(database_url(storage))
    try:
        trials = optuna.load_study(study_name=worker.RUN_NAME, storage=rdb).get_trials(deepcopy=False)
    finally:
        rdb.engine.dispose()  # no connection left open: the test server then stops at once
    scored: set[tuple[str, int]] = set()
    states: Counter = Counter()
    for trial in trials:
        record = trial.user_attrs.get("cuecard.candidate")
        states[trial.state.name if record else f"{trial.state.name} without a candidate record"] += 1
        if record:
            scored.update((record["key"], int(name[2:])) for name in trial.user_attrs if name.startswith("s."))
    return scored, states


def check_split_once(logs: list[list[tuple[str, int]]]) -> set[tuple[str, int]]:
    """No evaluation computed twice, in one worker or across workers; returns every pair computed."""
    everything: set[tuple[str, int]] = set()
    for number, pairs in enumerate(logs):
        assert len(set(pairs)) == len(pairs), f"worker {number} computed an evaluation twice"
        twice = everything & set(pairs)
        assert not twice, f"computed by two workers: {sorted(twice)[:3]}"
        everything |= set(pairs)
    return everything


def check_shared_run(storage: str, workers: Workers, results: list[dict], alone: dict) -> None:
    """What every scale-out run must show against one process alone on a fresh run."""
    logs = [workers.log(i) for i in range(len(results))]
    computed = check_split_once(logs)
    assert computed == set(alone["pairs"]), "the workers together did not compute what one process alone computes"
    assert sum(1 for pairs in logs if pairs) >= 2, "one worker did all the work"
    for result, pairs in zip(results, logs, strict=True):
        assert result["task_requests"] == len(pairs), "a task-model request was not an evaluation stored once"
        assert result["outcome"] == alone["outcome"]
    assert sum(r["prompt_requests"] for r in results) == alone["prompt_requests"], "a proposal was asked twice (or never)"
    scored, states = study_state(storage)
    assert scored == computed
    assert set(states) <= {"COMPLETE", "PRUNED"} and sum(states.values()) == len(alone["outcome"]["candidates"]), states


# ---- the reference: one process alone --------------------------------------------------------------------
def run_alone(folder: Path, size: str = "small", max_calls: int | None = None) -> dict:
    """The compile by one process alone on a fresh (in-memory) run, in this process, without latency."""
    log = folder / f"alone-{size}-{max_calls}.log"
    result = worker.run(":memory:", log, 0.0, size, max_calls)
    result["pairs"] = read_log(log)
    assert len(result["pairs"]) == len(set(result["pairs"])) == result["task_requests"]
    return result


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """The small compile by one process alone: what every group of workers must reproduce."""
    return run_alone(tmp_path_factory.mktemp("alone"))


# ---- the tests -------------------------------------------------------------------------------------------
def test_three_workers_on_postgresql_split_the_work_and_agree_with_one_alone(postgres_url, alone, tmp_path):
    """Three workers started together: each evaluation once, the outcome of one process alone, trials closed."""
    storage = fresh_database(postgres_url, "three_workers")
    workers = Workers(storage, tmp_path, 3)
    results = workers.wait()
    check_shared_run(storage, workers, results, alone)
    assert all(r["computed"] < len(alone["pairs"]) for r in results)


def test_a_worker_killed_midway_leaves_its_work_to_the_others(postgres_url, alone, tmp_path):
    """SIGKILL on one of three workers once about half the evaluations are stored: the two others take
    over its claims at once (same host), store every evaluation once and end with the same outcome."""
    storage = fresh_database(postgres_url, "killed_worker")
    workers = Workers(storage, tmp_path, 3)
    half = len(alone["pairs"]) // 2
    deadline = time.monotonic() + 120
    try:
        while workers.stored_so_far() < half:
            assert time.monotonic() < deadline, "the workers stored too little in 120 s"
            assert all(p.poll() is None for p in workers.processes), "a worker ended before half the work was stored"
            time.sleep(0.05)
        victim = workers.processes[0]
        assert victim.poll() is None
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
    except BaseException:
        workers.kill()
        raise
    survivors = workers.wait([1, 2])
    assert not workers.outs[0].exists(), "the killed worker finished"
    killed, *others = (workers.log(i) for i in range(3))
    assert 0 < len(killed) < len(alone["pairs"])
    computed = check_split_once([killed, *others])
    scored, states = study_state(storage)
    assert scored == set(alone["pairs"]), "the run's stored scores differ from what one process alone stores"
    # a batch the victim stored but was killed before logging is in the study, not in its log: only its
    # last batch may be missing, and it is in the victim's pending log
    in_flight = set(read_log(Path(f"{workers.outs[0]}.log.pending"))) - set(killed)
    assert scored - computed <= in_flight and computed <= scored
    assert set(states) <= {"COMPLETE", "PRUNED"} and sum(states.values()) == len(alone["outcome"]["candidates"]), states
    for result in survivors:
        assert result["outcome"] == alone["outcome"]


def test_two_workers_on_one_sqlite_file(alone, tmp_path):
    """The same checks as on PostgreSQL, with two workers sharing a SQLite file."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    workers = Workers(storage, tmp_path, 2)
    check_shared_run(storage, workers, workers.wait(), alone)


def test_a_cap_on_requests_holds_for_all_workers_together(postgres_url, tmp_path):
    """``Limits(max_calls=300)`` on a compile that needs far more: three workers together make at most 300
    requests (all their scripted models' requests counted) and stop where one process alone stops."""
    uncapped = run_alone(tmp_path, "large")
    assert uncapped["task_requests"] + uncapped["prompt_requests"] > 1.3 * CAP, "the compile must need clearly more"
    capped_alone = run_alone(tmp_path, "large", CAP)
    assert capped_alone["outcome"]["capped"], "the cap did not stop the compile"
    storage = fresh_database(postgres_url, "capped")
    workers = Workers(storage, tmp_path, 3, "large", cap=CAP)
    results = workers.wait()
    real = sum(r["task_requests"] + r["prompt_requests"] for r in results)
    assert real <= CAP, f"{real} requests reached the models, over the shared cap of {CAP}"
    for result in results:
        assert result["outcome"] == capped_alone["outcome"]
    computed = check_split_once([workers.log(i) for i in range(3)])
    assert computed == set(capped_alone["pairs"])


def check_model_cap(storage: str, tmp_path: Path, count: int = 3) -> None:
    """``Limits(max_model_calls=60)`` over ``count`` workers of a compile that needs about 170 calls: together
    they make at most 60 + ``count`` calls (one under way per worker), and every worker's report and saved
    file give the same run-wide usage, the calls they made together."""
    workers = Workers(storage, tmp_path, count, "small", cap=MODEL_CAP, kind="model")
    results = workers.wait()
    made = sum(r["task_requests"] + r["prompt_requests"] for r in results)
    assert made <= MODEL_CAP + count, f"{made} calls reached the models, over the shared cap of {MODEL_CAP} + {count}"
    assert all(r["outcome"]["capped"] for r in results), "the cap did not stop every worker"
    reported = [r["usage"] for r in results]
    assert all(usage == reported[0] for usage in reported), f"the workers report different run-wide usage: {reported}"
    assert all(r["saved_usage"] == r["usage"] for r in results), "a saved file holds another usage than its report"
    assert reported[0]["model_calls"] == made, "the run-wide usage is not the calls the workers made together"
    check_split_once([workers.log(i) for i in range(count)])


def test_a_cap_on_model_calls_holds_over_three_workers_on_postgresql(postgres_url, tmp_path):
    check_model_cap(fresh_database(postgres_url, "model_cap"), tmp_path)


def test_a_cap_on_model_calls_holds_over_three_workers_on_sqlite(tmp_path):
    check_model_cap(f"sqlite:///{tmp_path / 'study.db'}", tmp_path)


KILLED_RESERVER = """
import os, signal, sys
from cuecard.engine.sharing import SQLClaims
claims = SQLClaims(sys.argv[1], "reserving")
claims.join_spend(0)
print(claims.reserve(5, 10, 0), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def check_killed_reservation(storage: str) -> None:
    """A process that reserved 5 of 10 model calls and was killed: the next process to need them gets all 10
    (the dead one's unused reservation is given back), and does not wait for the dead one to finish."""
    from cuecard.engine.sharing import SQLClaims

    done = subprocess.run([sys.executable, "-c", KILLED_RESERVER, storage], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-1500:]
    assert done.stdout.split() == ["5"]
    claims = SQLClaims(storage, "reserving")
    try:
        claims.join_spend(0)
        assert claims.run_reserved() == 5, "the killed process's reservation was not in the run's count"
        assert claims.others_working() == [], "a dead process counts as working on the run"
        assert claims.reserve(10, 10, 0) == 10, "the killed process's reservation was not given back"
        assert claims.run_reserved() == 10
        assert claims.reserve(1, 10, 10) == 0, "the count passed its cap"
    finally:
        claims.close()


def test_a_killed_workers_reservation_is_given_back_on_sqlite(tmp_path):
    check_killed_reservation(f"sqlite:///{tmp_path / 'study.db'}")


def test_a_killed_workers_reservation_is_given_back_on_postgresql(postgres_url):
    check_killed_reservation(fresh_database(postgres_url, "killed_reservation"))
