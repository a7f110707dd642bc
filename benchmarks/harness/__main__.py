"""``python -m benchmarks.harness``: compare methods on tasks under one LM-call cap and print the table."""

from __future__ import annotations

import argparse
import sys

from cuecard.command.cli import ctrl_c_interrupts
from pydantic import ValidationError

from .methods import DEFAULT_METHODS, METHOD_NAMES, PE2_ABLATIONS
from .run import DEFAULT_TASKS, HarnessConfig, run

# flag -> config field, for the flags that map one to one (help and default come from the field)
FIELD_FLAGS = {
    "--seeds": "seeds",
    "--cap": "cap",
    "--train": "n_train",
    "--dev": "n_dev",
    "--test": "n_test",
    "--task-model": "task_model",
    "--max-tokens": "max_tokens",
    "--seeds-from": "seeds_from",
    "--data": "data",
    "--out": "out",
}


def _field_flag(parser: argparse.ArgumentParser, flag: str, field: str) -> None:
    info = HarnessConfig.model_fields[field]
    kind = int if info.annotation is int else str
    parser.add_argument(flag, dest=field, type=kind, default=info.default, metavar="N" if kind is int else None, help=f"{info.description} (default: {info.default})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.harness",
        description=(
            "Compile one program per task with each method (cuecard's APE, ProTeGi, OPRO, PE2 and DSPy's "
            "COPRO, MIPROv2, GEPA) under the same cap on LM calls, score each result on a held-out test split, "
            "and write results.json, results.md and accuracy_vs_calls.png to --out. Cells already stored "
            "there with the same settings are reused, so a killed run resumes: rerun the same command."
        ),
        epilog="Example: python -m benchmarks.harness --seeds 3 --cap 80 --task-model /path/to/qwen.gguf",
    )
    parser.add_argument("--task", dest="tasks", action="append", metavar="SPEC",
                        help=f"ii:NAME, bbh:NAME or jsonl:PATH:INPUT[,INPUT]:OUTPUT; repeatable (default: {' '.join(DEFAULT_TASKS)})")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, from {','.join(METHOD_NAMES)} (default: all but the PE2 ablations "
                             f"{', '.join(PE2_ABLATIONS)}, which switch one meta-prompt component off each)")
    for flag, field in FIELD_FLAGS.items():
        _field_flag(parser, flag, field)
    parser.add_argument("--prompt-model", default=None, help="the model that writes instructions (default: the task model)")
    parser.add_argument("--report-only", action="store_true",
                        help="make no LM call: rewrite the outputs from the cells stored in --out and name the missing ones")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = HarnessConfig(
            tasks=args.tasks or list(DEFAULT_TASKS),
            methods=[m.strip() for m in args.methods.split(",") if m.strip()],
            prompt_model=args.prompt_model or args.task_model,
            **{field: getattr(args, field) for field in FIELD_FLAGS.values()},
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        print(f"error: {'.'.join(map(str, error['loc']))}: {error['msg']}", file=sys.stderr)
        return 2
    try:
        with ctrl_c_interrupts():  # SIGINT stops a run even when the command was started with it ignored
            paths = run(config, log=lambda line: print(line, flush=True), report_only=args.report_only)
    except KeyboardInterrupt:
        print("interrupted: finished cells are stored; rerun the same command to resume", file=sys.stderr)
        return 130
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not paths:
        print("no cell stored yet: nothing to report", file=sys.stderr)
        return 1
    print()
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
