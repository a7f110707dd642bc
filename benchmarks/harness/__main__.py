"""``python -m benchmarks.harness``: compare methods on tasks under one LM-call cap and print the table."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from .methods import METHOD_NAMES
from .run import DEFAULT_DATA, DEFAULT_TASKS, HarnessConfig, run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.harness",
        description=(
            "Compile one program per task with each method (cuecard's APE, ProTeGi, OPRO, PE2 and DSPy's "
            "COPRO, MIPROv2, GEPA) under the same cap on LM calls, score each result on a held-out test split, "
            "and write results.json, results.md and accuracy_vs_calls.png to --out. Cells already stored "
            "there with the same settings are reused, so a killed run resumes."
        ),
        epilog="Example: python -m benchmarks.harness --seeds 3 --cap 80 --task-model local:/path/qwen.gguf",
    )
    parser.add_argument("--task", dest="tasks", action="append", metavar="SPEC",
                        help=f"ii:NAME, bbh:NAME or jsonl:PATH:INPUT[,INPUT]:OUTPUT; repeatable (default: {' '.join(DEFAULT_TASKS)})")
    parser.add_argument("--methods", default=",".join(METHOD_NAMES), help=f"comma-separated subset of {','.join(METHOD_NAMES)}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--cap", type=int, default=80, help="LM requests per compile, task + prompt, cached or not (default 80)")
    parser.add_argument("--train", type=int, default=20, dest="n_train", help="train examples per seed (default 20)")
    parser.add_argument("--dev", type=int, default=10, dest="n_dev", help="dev examples per seed (default 10)")
    parser.add_argument("--test", type=int, default=30, dest="n_test", help="test examples, the same for every seed (default 30)")
    parser.add_argument("--task-model", default="local", help="'local' (embedded), a .gguf path, or a litellm model string")
    parser.add_argument("--prompt-model", default=None, help="the model that writes instructions (default: the task model)")
    parser.add_argument("--max-tokens", type=int, default=32, help="cap on the task model's answer tokens (default 32)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the shared benchmark data folder")
    parser.add_argument("--out", default="runs/bench", help="where cells, the LM cache and the outputs go (default runs/bench)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = HarnessConfig(
            tasks=args.tasks or list(DEFAULT_TASKS),
            methods=[m.strip() for m in args.methods.split(",") if m.strip()],
            seeds=args.seeds,
            cap=args.cap,
            n_train=args.n_train,
            n_dev=args.n_dev,
            n_test=args.n_test,
            task_model=args.task_model,
            prompt_model=args.prompt_model or args.task_model,
            max_tokens=args.max_tokens,
            data=args.data,
            out=args.out,
        )
    except ValidationError as exc:
        print(f"error: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    try:
        paths = run(config, log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("interrupted: finished cells are stored; rerun the same command to resume", file=sys.stderr)
        return 130
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
