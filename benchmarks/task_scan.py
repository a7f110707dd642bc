"""Which benchmark tasks leave headroom for better prompts? Seed, terse seed and human instructions scored.

For each Instruction Induction and BIG-Bench Hard task, scores on the harness's test split
(``task.splits(0, 20, 15, 40).test``, the 40 examples the benchmark uses) with the harness's
``accuracy``: the generic seed "Answer the question.", the task's terse seed instruction
(``task.program()``), and each human-written annotation (Instruction Induction only: BBH has none).
The task model is Qwen2.5-Coder-1.5B-Instruct by default (``--model``; fetch it first with
``python benchmarks/models.py fetch qwen1.5b``), capped at 32 answer tokens as in the harness.

Every (task, instruction) result is appended as one JSON line to ``--out`` with the model's answers,
and results already there are skipped, so a killed scan resumes with the same command. DSPy's cache
lives in ``--cache`` (the benchmark's cache folder by default), so later benchmark runs reuse these
answers. Prints a Markdown table sorted by headroom (human mean minus seed). Run it from the
repository root, one model process at a time:

    CUECARD_THREADS=2 .venv/bin/python benchmarks/task_scan.py
    .venv/bin/python benchmarks/task_scan.py --tasks ii:sum,bbh:navigate --out runs/scan-small.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable for `benchmarks.*`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cuecard  # noqa: E402
import dspy  # noqa: E402

from benchmarks.harness.run import DEFAULT_DATA, accuracy, load_task  # noqa: E402
from benchmarks.harness.tasks import DEFAULT_SEED_INSTRUCTION, Task, task_halves  # noqa: E402
from benchmarks.models import resolve_model_spec  # noqa: E402

II_TASKS = tuple(
    f"ii:{name}"
    for name in (
        "antonyms", "first_word_letter", "larger_animal", "negation",
        "sentiment", "singular_to_plural", "sum", "word_in_context",
    )
)
BBH_TASKS = tuple(
    f"bbh:{name}"
    for name in (
        "boolean_expressions", "date_understanding", "navigate",
        "object_counting", "sports_understanding", "web_of_lies",
    )
)
SPLIT = (0, 20, 15, 40)
"""``task.splits(seed, n_train, n_dev, n_test)`` as the benchmark calls it; only the 40 test examples are used."""


class RecordingMetric:
    """The task's metric, keeping each example's gold, answer, score and why the model stopped.

    The evaluator runs a local model's examples one by one, so the LM's last history entry is the call
    that produced the prediction at hand; ``finish`` is ``"length"`` when the token cap cut the answer.
    """

    def __init__(self, metric: Callable[..., Any], field: str, lm: dspy.LM) -> None:
        self.metric, self.field, self.lm = metric, field, lm
        self.answers: list[dict[str, Any]] = []

    def __call__(self, example: dspy.Example, prediction: dspy.Prediction, trace: Any = None) -> Any:
        answer = prediction.get(self.field) if hasattr(prediction, "get") else None
        history = getattr(self.lm, "history", None) or [{}]
        finish = getattr(history[-1].get("response"), "finish_reason", None)
        entry = {"gold": example.get(self.field), "answer": None if answer is None else str(answer), "finish": finish}
        self.answers.append(entry)
        score = self.metric(example, prediction, trace)
        entry["score"] = float(score)
        return score


def instructions(task: Task, humans: int | None = None, terse: bool = True) -> Iterator[tuple[str, int, str]]:
    """``(kind, index, text)`` to score: the generic seed, the terse seed when it differs (and ``terse``), and
    the first ``humans`` annotations (all of them when ``None``)."""
    yield "seed", 0, DEFAULT_SEED_INSTRUCTION
    if terse and task.seed_instruction != DEFAULT_SEED_INSTRUCTION:
        yield "terse", 0, task.seed_instruction
    for index, text in enumerate(task.human_instructions[:humans]):
        yield "human", index, text


def entry_key(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record["task"], record["model"], record["max_tokens"], record.get("examples", SPLIT[3]),
            record["kind"], record["index"], record["instruction"])


def read_records(path: Path) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The results stored by earlier runs (a torn last line from a killed run is ignored)."""
    records: dict[tuple[Any, ...], dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[entry_key(record)] = record
    return records


def score_one(task: Task, test: list[dspy.Example], text: str, task_lm: dspy.LM) -> dict[str, Any]:
    """Accuracy of ``text`` on ``test`` through the harness's ``accuracy``, with the answers and the cost."""
    program = task.program(text)
    field = next(iter(program.signature.output_fields))
    recorder = RecordingMetric(task.metric, field, task_lm)
    before = task_lm.meter.usage
    started = time.perf_counter()
    value = accuracy(program, test, recorder, task_lm)
    usage = task_lm.meter.usage - before
    return {
        "accuracy": value,
        "n": len(test),
        "seconds": round(time.perf_counter() - started, 2),
        "model_calls": usage.model_calls,
        "cache_hits": usage.cache_hits,
        "completion_tokens": usage.completion_tokens,
        "truncated": sum(entry["finish"] == "length" for entry in recorder.answers),
        "failed": len(test) - len(recorder.answers),
        "answers": recorder.answers,
    }


def table(records: list[dict[str, Any]], specs: list[str]) -> str:
    """The Markdown table: one row per task, sorted by headroom (tasks without annotations last)."""
    rows = []
    for spec in specs:
        mine = [r for r in records if r["task"] == spec]
        seed = next((100 * r["accuracy"] for r in mine if r["kind"] == "seed"), None)
        terse = next((100 * r["accuracy"] for r in mine if r["kind"] == "terse"), None)
        humans = [100 * r["accuracy"] for r in mine if r["kind"] == "human"]
        mean = sum(humans) / len(humans) if humans else None
        headroom = mean - seed if mean is not None and seed is not None else None
        rows.append((spec, seed, terse, mean, max(humans) if humans else None, len(humans), headroom))
    rows.sort(key=lambda row: (row[6] is None, -(row[6] or 0.0)))

    def cell(value: float | None, sign: bool = False) -> str:
        return "–" if value is None else f"{value:+.1f}" if sign else f"{value:.1f}"

    lines = [
        '| task | seed % ("Answer the question.") | terse seed % | human mean % | human best % | annotations | headroom (pts) |',
        "|---|---|---|---|---|---|---|",
    ]
    for spec, seed, terse, mean, best, count, headroom in rows:
        lines.append(
            f"| {spec} | {cell(seed)} | {cell(terse)} | {cell(mean)} | {cell(best)} | {count or '–'} | {cell(headroom, True)} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/task_scan.py",
        description=__doc__.split("\n\n")[0] + " " + " ".join(__doc__.split("\n\n")[1].split()),
        epilog="Example: CUECARD_THREADS=2 .venv/bin/python benchmarks/task_scan.py --tasks ii:sum,bbh:navigate",
    )
    parser.add_argument("--tasks", default=",".join(II_TASKS + BBH_TASKS),
                        help="comma-separated task specs, or 'tuning' / 'report' for a half of the visible tasks "
                             "(default: the 8 Instruction Induction and 6 BBH tasks)")
    parser.add_argument("--humans", type=int, default=None, metavar="N",
                        help="score only the first N human annotations of each task (default: all)")
    parser.add_argument("--examples", type=int, default=SPLIT[3], metavar="N",
                        help=f"score the first N of the {SPLIT[3]} test examples (default: %(default)s)")
    parser.add_argument("--no-terse", action="store_true", help="leave out the terse seed instructions")
    parser.add_argument("--model", default="qwen1.5b",
                        help="task model: qwen1.5b, qwen0.5b, a .gguf path or a litellm model (default: qwen1.5b)")
    parser.add_argument("--max-tokens", type=int, default=32, help="cap on answer tokens, as the harness (default: 32)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help=f"the shared benchmark data (default: {DEFAULT_DATA})")
    parser.add_argument("--cache", default="runs/bench-cache/lm-cache", help="DSPy's cache folder (default: %(default)s)")
    parser.add_argument("--out", default="runs/task-scan.jsonl", help="results, one JSON line each (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.tasks in ("tuning", "report"):
        specs = task_halves(args.data)[args.tasks]
    else:
        specs = [spec.strip() for spec in args.tasks.split(",") if spec.strip()]
    if not 1 <= args.examples <= SPLIT[3]:
        print(f"error: --examples must be between 1 and {SPLIT[3]}, not {args.examples}", file=sys.stderr)
        return 2
    try:
        tasks = {spec: load_task(spec, args.data) for spec in specs}  # bad specs and missing data fail before any call
        model_file = resolve_model_spec(args.model)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cuecard.configure_cache(args.cache)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stored = read_records(out)
    plan = [(spec, kind, index, text) for spec, task in tasks.items() for kind, index, text in instructions(task, args.humans, not args.no_terse)]
    task_lm: dspy.LM | None = None
    try:
        for number, (spec, kind, index, text) in enumerate(plan, start=1):
            record: dict[str, Any] = {
                "task": spec, "model": args.model, "max_tokens": args.max_tokens, "examples": args.examples,
                "kind": kind, "index": index, "instruction": text,
            }
            label = f"[{number}/{len(plan)}] {spec} {kind}" + (f" {index + 1}" if kind == "human" else "")
            if entry_key(record) in stored:
                continue
            if task_lm is None:
                task_lm = cuecard.LM(model_file, max_tokens=args.max_tokens)
            task = tasks[spec]
            record.update(score_one(task, task.splits(*SPLIT).test[: args.examples], text, task_lm))
            with out.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            stored[entry_key(record)] = record
            print(
                f"{label}: {100 * record['accuracy']:.1f}% ({record['model_calls']} model calls, "
                f"{record['truncated']} cut by the token cap, {record['seconds']:.0f} s) {text[:70]!r}",
                flush=True,
            )
    except KeyboardInterrupt:
        print(f"interrupted: finished entries are in {out}; rerun the same command to resume", file=sys.stderr)
        return 130
    mine = [r for r in stored.values() if r["model"] == args.model and r["max_tokens"] == args.max_tokens
            and r.get("examples", SPLIT[3]) == args.examples]
    print(f"\ntask model {args.model} ({Path(model_file).name}), max_tokens={args.max_tokens} given to the LM, "
          f"the first {args.examples} of the {SPLIT[3]} test examples per task\n")
    print(table(mine, specs))
    in_entries = sum(r["seconds"] for r in mine if r["task"] in tasks)
    print(f"\nscan time: {in_entries / 60:.1f} min scoring (all entries, resumed runs included); "
          f"this run {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
