"""What would a fixed answer-form sentence have done to the stored winners? A what-if over harness cells.

On exact-match tasks the task model often computes the right answer and writes it inside a sentence
("185 - 90 = 95" where the gold is "95"), and the prompt models rarely propose an instruction that
fixes the form. A clause about the outputs' form in a meta-prompt leaked into the proposals (APE's
``ape-form-clause`` ablation row); a sentence appended to a candidate by the engine itself cannot leak.
Before building such a step, this script measures what it could give: for every stored cell of the
named methods, the cell's winner W and the task's seed S are scored on the cell's dev and the task's
test split as they are and with :data:`FORM_SENTENCE` appended, and the table shows

- the winner as stored (W, replayed from the run's LM cache: it must equal the cell's stored test score),
- W with the sentence always appended,
- a dev-gated step: W with the sentence when that scores higher on the cell's 15 dev examples than W
  (what a search would see), otherwise W,

per half of the visible tasks (:func:`benchmarks.harness.tasks.task_halves`): decide on the tuning half,
read the report half. The sentence was written before any result was read; it names the program's
output field(s) and nothing about any task.

Run (the settings must be the run's own, so that W replays from its LM cache)::

    CUECARD_THREADS=2 .venv/bin/python benchmarks/form_variants.py runs/terse-R --seeds-from terse \\
        --task ii:antonyms --task bbh:boolean_expressions --methods ape,opro,protegi,pe2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cuecard
import dspy
from cuecard.program import apply_instructions

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.results import CellResult
from benchmarks.harness.run import DEFAULT_DATA, HarnessConfig, Models, accuracy, load_task
from benchmarks.harness.tasks import half_of, task_halves

FORM_SENTENCE = "Reply with the {fields} only, nothing else."
"""The sentence appended, written before any result was read; ``{fields}`` is the program's output field names."""


def with_form(instructions: str, program: dspy.Module) -> str:
    """``instructions`` with :data:`FORM_SENTENCE` appended for the program's output fields."""
    fields = " and ".join(name.replace("_", " ") for name in program.signature.output_fields)
    return f"{instructions.rstrip()} {FORM_SENTENCE.format(fields=fields)}"


def stored_cells(out: Path, task: str, methods: list[str], seeds: int) -> list[CellResult]:
    """The stored cells of ``task`` for ``methods`` and seeds ``0..seeds-1`` that finished with instructions."""
    found = []
    for method in methods:
        for seed in range(seeds):
            path = out / "cells" / f"{task}__{method}__seed{seed}.json"
            if path.exists():
                cell = CellResult.model_validate_json(path.read_text())
                if cell.error is None and cell.instructions:
                    found.append(cell)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a harness --out folder (its cells and LM cache)")
    parser.add_argument("--task", action="append", required=True, help="a task spec, as the harness takes it")
    parser.add_argument("--methods", default="ape,opro,protegi,pe2")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--seeds-from", choices=["generic", "terse"], default="terse")
    parser.add_argument("--task-model", default="qwen1.5b")
    parser.add_argument("--train", type=int, default=20)
    parser.add_argument("--dev", type=int, default=15)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    args = parser.parse_args(argv)
    config = HarnessConfig(tasks=args.task, methods=["seed"], task_model=args.task_model, prompt_model=args.task_model,
                           n_train=args.train, n_dev=args.dev, n_test=args.test, seeds_from=args.seeds_from,
                           data=args.data, out=str(args.out))
    cuecard.configure_cache(args.out / "lm-cache")
    models = Models.from_config(config)
    methods = args.methods.split(",")
    halves = task_halves(args.data)
    rows = []
    for spec in args.task:
        task = load_task(spec, args.data, args.seeds_from)
        half = half_of(task.name, halves) or "other"
        for cell in stored_cells(args.out, task.name, methods, args.seeds):
            splits = task.splits(cell.seed, args.train, args.dev, args.test)
            program = task.program()
            scores = {}
            for label, instructions in (("W", cell.instructions), ("W+form", {k: with_form(v, program) for k, v in cell.instructions.items()})):
                candidate = apply_instructions(program, instructions)
                scores[label] = (accuracy(candidate, splits.dev, task.metric, models.task),
                                 accuracy(candidate, splits.test, task.metric, models.task))
            gated = scores["W+form"] if scores["W+form"][0] > scores["W"][0] else scores["W"]
            replayed = abs(scores["W"][1] - (cell.test_accuracy or 0.0)) < 1e-9
            rows.append((half, task.name, cell.method, cell.seed, scores["W"], scores["W+form"], gated, replayed,
                         next(iter(cell.instructions.values()))))
            print(f"{half} {task.name} {cell.method} seed {cell.seed}: test W {scores['W'][1]:.3f} (stored "
                  f"{cell.test_accuracy:.3f}), W+form {scores['W+form'][1]:.3f}, gated {gated[1]:.3f}; dev "
                  f"{scores['W'][0]:.3f} / {scores['W+form'][0]:.3f}", flush=True)
    print(table(rows))
    return 0


def table(rows: list[tuple]) -> str:
    """The Markdown table, per half: each cell's test %, then the means per method."""
    lines = ["| half | task | method | seed | W test | W+form test | gated test | W dev | W+form dev | W replayed | winner |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for half, task, method, seed, w, form, gated, replayed, text in rows:
        lines.append(f"| {half} | {task} | {method} | {seed} | {100 * w[1]:.1f} | {100 * form[1]:.1f} | "
                     f"{100 * gated[1]:.1f} | {100 * w[0]:.1f} | {100 * form[0]:.1f} | {'yes' if replayed else 'NO'} | "
                     f"{text[:60]!r} |")
    lines += ["", "| half | method | cells | W | W+form | gated |", "|---|---|---|---|---|---|"]
    for half in sorted({row[0] for row in rows}):
        for method in sorted({row[2] for row in rows if row[0] == half}):
            mine = [row for row in rows if row[0] == half and row[2] == method]

            def mean(index: int, rows: list[tuple] = mine) -> float:
                return 100 * sum(row[index][1] for row in rows) / len(rows)

            lines.append(f"| {half} | {method} | {len(mine)} | {mean(4):.1f} | {mean(5):.1f} | {mean(6):.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
