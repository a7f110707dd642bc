"""Soak test of exact resume: a compile killed with SIGKILL again and again, resumed each time.

Part 1 (scripted LM): an APE compile (induction, multi-stage scoring, two Monte Carlo rounds) whose
task and prompt model fail on 20% of requests and hang on 5% (past a 1.5 s timeout), chosen by a hash
of each request, so an uninterrupted run and a killed one meet the same failures. The compile is
run once uninterrupted, then in a fresh run directory it is killed with SIGKILL at ``--kills`` random
points and restarted each time until it finishes. Printed: kills survived, evaluations repeated (a
score stored by one process and computed again by a later one), scores lost (stored before a kill,
missing after), evaluations that were in flight at a kill, and whether the winner and the report's
outcome equal the uninterrupted run's.

Part 2 (embedded model): the same with SmolLM2 as task and prompt model and ``--embedded-kills``
kills (each run with an empty DSPy cache of its own, so the model really answers).

    .venv/bin/python benchmarks/soak.py [--kills 20] [--embedded-kills 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
FAIL_SHARE, HANG_SHARE, HANG_SECONDS, TIMEOUT, DELAY = 0.20, 0.05, 4.0, 1.5, 0.015


# ---- the worker: one compile in its own process -------------------------------------------------------
def _unit(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12


class SoakEngine:
    """A DSPy engine with deterministic replies, failures and hangs (by a hash of the request and the attempt)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.attempts: dict[str, int] = {}

    def __deepcopy__(self, memo: dict) -> SoakEngine:
        return self

    def complete(self, request: Any) -> Any:
        from cuecard.clients.local import request_messages
        from dspy.lm15 import Message, Response, TextPart, Usage

        messages = request_messages(request)
        key = json.dumps([messages, request.config.seed, request.config.temperature])
        attempt = self.attempts[key] = self.attempts.get(key, 0) + 1
        draw = _unit(f"{key}|{attempt}")
        time.sleep(DELAY)
        if draw < HANG_SHARE:
            time.sleep(HANG_SECONDS)
        elif draw < HANG_SHARE + FAIL_SHARE:
            raise ConnectionError(f"injected {self.role} failure")
        text = self.reply(messages, request.config.seed)
        answers = os.environ.get("SOAK_ANSWERS")
        if answers and self.role == "task":
            instruction, item = self.parts(messages[-1]["content"])
            with open(answers, "a") as handle:
                handle.write(f"{os.getpid()}\t{instruction}\t{item}\n")
        return Response(
            id=f"soak-{hashlib.sha256(key.encode()).hexdigest()[:12]}",
            model=request.model,
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            usage=Usage(input_tokens=sum(len(m["content"].split()) for m in messages), output_tokens=len(text.split())),
        )

    def reply(self, messages: list[dict[str, str]], seed: int | None) -> str:
        text = messages[-1]["content"]
        if self.role == "prompt":
            return f"Say yes to items of kind {int(_unit(f'{text}|{seed}') * 40)}."
        instruction, item = self.parts(text)
        quality = 0.3 + 0.6 * _unit(instruction)
        return "yes" if _unit(f"{instruction}|{item}") < quality else "no"

    @staticmethod
    def parts(text: str) -> tuple[str, str]:
        """(instruction, item) of a task prompt in the plain adapter's layout."""
        return text.rsplit("\n\n", 1)[-1], text.split("Item: ", 1)[1].split("\n", 1)[0]

    def stream(self, request: Any) -> Any:
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass


def _scripted_models() -> tuple[Any, Any]:
    from cuecard.clients.lm import CuecardLM

    def lm(role: str) -> Any:
        return CuecardLM(f"soak/{role}", spec=f"soak/{role}", is_local=False, engine=SoakEngine(role),
                         temperature=0.0, max_tokens=32, cache=False, num_retries=0)

    return lm("task"), lm("prompt")


def _data(embedded: bool) -> tuple[list[Any], list[Any]]:
    import dspy

    if embedded:
        from cuecard.datasets import reviews

        rows = reviews()
        return rows[:12], rows[12:24]
    rows = [dspy.Example(item=f"item {i}", answer="yes").with_inputs("item") for i in range(50)]
    return rows[:20], rows[20:]


def compile_once(run_dir: str, log: str, out: str, embedded: bool) -> None:
    """One compile (resuming whatever ``run_dir`` holds); logs every stored evaluation; writes the outcome."""
    import cuecard
    import dspy
    from cuecard.engine import study
    from cuecard.metrics import exact_match
    from cuecard.teleprompters import APE

    original_store = study.Engine._store

    def logged_store(engine: Any, arm: int, results: Any) -> None:
        original_store(engine, arm, results)
        with open(log, "a") as handle:
            record = engine.arms[arm].record
            for result in results:
                item = next(iter(engine.examples[result.index].inputs().values()))
                handle.write(f"{os.getpid()}\t{record.key}\t{result.index}\t{int(result.failed)}\t"
                             f"{record.instructions['self']}\t{item}\n")

    study.Engine._store = logged_store
    train, dev = _data(embedded)
    if embedded:
        task_lm = cuecard.LM("local", max_tokens=8)
        prompt_lm = cuecard.LM("local", max_tokens=40)
        program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify the sentiment."))
        knobs: dict[str, Any] = dict(num_subsamples=2, num_prompts_per_subsample=3, num_demos=4, mc_rounds=1,
                                     mc_variations=2, mc_top_fraction=0.5)
        metric, extra = exact_match("sentiment"), {}
    else:
        task_lm, prompt_lm = _scripted_models()
        program = dspy.Predict(dspy.Signature("item -> answer", "Answer."))
        knobs = dict(num_subsamples=2, num_prompts_per_subsample=8, num_demos=4, mc_rounds=2, mc_variations=2,
                     mc_top_fraction=0.3)
        metric = exact_match("answer")
        extra = dict(timeout=TIMEOUT, num_threads=4, retry_wait=0.01, adapter=cuecard.PlainAdapter())
    print("compiling", flush=True)
    ape = APE(metric=metric, task_lm=task_lm, prompt_lm=prompt_lm, run_name="soak", run_dir=run_dir, progress=False,
              max_failure_share=0.9, seed=3, **knobs, **extra)
    compiled = ape.compile(program, trainset=train, valset=dev)
    report = compiled.cuecard_report
    Path(out).write_text(json.dumps({"winner": report.best.instructions, "outcome": report.outcome(),
                                     "computed": report.process.evaluations_computed}))


# ---- the driver ---------------------------------------------------------------------------------------
def _stored(run_dir: Path) -> dict[tuple[str, int], float]:
    """Every successful evaluation in the run's storage."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    found: dict[tuple[str, int], float] = {}
    if not (run_dir / "study.db").exists():
        return found
    try:
        study = optuna.load_study(study_name="soak", storage=f"sqlite:///{run_dir / 'study.db'}")
    except KeyError:  # killed before the study was created
        return found
    for trial in study.get_trials(deepcopy=False):
        key = trial.user_attrs.get("cuecard.candidate", {}).get("key")
        for name, value in trial.user_attrs.items():
            if name.startswith("s."):
                found[(key, int(name[2:]))] = float(value)
    return found


def _worker(run_dir: Path, log: Path, out: Path, embedded: bool, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HERE), "--worker", str(run_dir), str(log), str(out)] + (["--embedded"] if embedded else []),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )


def _count(log: Path, answers: Path | None, order: list[int]) -> tuple[int, int | None]:
    """(evaluations repeated, evaluations in flight at a kill and redone).

    Repeated: an evaluation a process computed although an earlier process had stored it. In flight:
    one a killed process computed but had not stored yet (the next process computes it again).
    """
    rank = {pid: number for number, pid in enumerate(order)}
    first_stored: dict[tuple[str, str], int] = {}
    stored_by: set[tuple[int, str, str]] = set()
    for pid, _, _, failed, instruction, item in (line.split("\t") for line in log.read_text().splitlines()):
        if failed == "0":
            first_stored.setdefault((instruction, item), rank[int(pid)])
            stored_by.add((rank[int(pid)], instruction, item))
    if answers is None:  # only the storage log: a score stored by two processes was computed twice
        counts: dict[tuple[str, str], int] = {}
        for _, instruction, item in stored_by:
            counts[(instruction, item)] = counts.get((instruction, item), 0) + 1
        return sum(n - 1 for n in counts.values()), None
    repeated = in_flight = 0
    for pid, instruction, item in (line.split("\t") for line in answers.read_text().splitlines()):
        number = rank[int(pid)]
        first = first_stored.get((instruction, item))
        if first is not None and first < number:
            repeated += 1
        elif (number, instruction, item) not in stored_by and first is not None:
            in_flight += 1
    return repeated, in_flight


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two report outcomes differ, as ``path: uninterrupted -> killed`` lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [line for key in sorted(set(a) | set(b)) for line in differences(a.get(key), b.get(key), f"{path}.{key}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [line for i, (x, y) in enumerate(zip(a, b, strict=True)) for line in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path.lstrip('.')}: {json.dumps(a)[:80]} -> {json.dumps(b)[:80]}"]


def series(kills: int, embedded: bool, seed: int, window: tuple[float, float]) -> dict[str, Any]:
    """One uninterrupted run and one run killed ``kills`` times; the figures of the comparison."""
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="cuecard-soak-"))
    answers = None if embedded else root / "answers.log"
    env = {**os.environ, "CUECARD_THREADS": os.environ.get("CUECARD_THREADS", "2")}

    def run_env(name: str, record_answers: bool) -> dict[str, str]:
        extra = {"SOAK_ANSWERS": str(answers)} if answers is not None and record_answers else {}
        return {**env, "DSPY_CACHEDIR": str(root / f"cache-{name}"), **extra}

    started = time.monotonic()
    reference = root / "reference.json"
    first = _worker(root / "reference", root / "reference.log", reference, embedded, run_env("reference", False))
    assert first.wait() == 0, "the uninterrupted run failed"
    reference_seconds = time.monotonic() - started

    run_dir, log, out = root / "killed", root / "killed.log", root / "killed.json"
    survived, lost, runs = 0, 0, []
    stored_before: dict[tuple[str, int], float] = {}
    while True:
        process = _worker(run_dir, log, out, embedded, run_env(f"killed-{len(runs)}", True))
        runs.append(process.pid)
        if survived >= kills:
            assert process.wait() == 0, "the last run failed"
            break
        process.stdout.readline()  # "compiling": imports are done
        time.sleep(rng.uniform(*window))
        if process.poll() is not None:
            continue  # it finished before the kill: run it again (it replays) and kill the next one sooner
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        survived += 1
        stored_now = _stored(run_dir)
        lost += sum(1 for key, value in stored_before.items() if stored_now.get(key) != value)
        stored_before = stored_now
    final = _stored(run_dir)
    lost += sum(1 for key, value in stored_before.items() if final.get(key) != value)
    repeated, in_flight = _count(log, answers, runs)
    a, b = json.loads(reference.read_text()), json.loads(out.read_text())
    return {
        "model": "embedded SmolLM2" if embedded else "scripted (20% errors, 5% hangs)",
        "kills": survived,
        "runs": len(runs),
        "repeated": repeated,
        "lost": lost,
        "in_flight": "n/a" if in_flight is None else in_flight,
        "stored": len(final),
        "same_winner": a["winner"] == b["winner"],
        "same_outcome": a["outcome"] == b["outcome"],
        "differences": differences(a["outcome"], b["outcome"]),
        "reference_seconds": reference_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the scripted compile (default 20)")
    parser.add_argument("--embedded-kills", type=int, default=2, help="SIGKILLs of the embedded-model compile (default 2; 0 skips it)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill times")
    parser.add_argument("--worker", nargs=3, metavar=("RUN_DIR", "LOG", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--embedded", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        compile_once(*args.worker, embedded=args.embedded)
        return 0
    rows = [series(args.kills, False, args.seed, (0.3, 3.0))]
    if args.embedded_kills:
        rows.append(series(args.embedded_kills, True, args.seed, (5.0, 25.0)))
    print("| model | kills survived | runs | evaluations repeated | scores lost | in flight at a kill (redone) "
          "| stored | same winner | same report outcome | uninterrupted s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['kills']}/{row['kills']} | {row['runs']} | {row['repeated']} | {row['lost']} | "
              f"{row['in_flight']} | {row['stored']} | {row['same_winner']} | {row['same_outcome']} | {row['reference_seconds']:.0f} |")
    for row in rows:
        if row["differences"]:
            print(f"\n{row['model']}: the outcomes differ in {len(row['differences'])} places (a timeout depends on the "
                  "machine's load: run the soak on an idle machine)")
            print("\n".join(f"  {line}" for line in row["differences"][:12]))
    return 0 if all(r["repeated"] == 0 and r["lost"] == 0 and r["same_outcome"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
