"""The harness run: tasks x methods x seeds under one LM-call cap, resumable, written as JSON/Markdown/PNG."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import cuecard
import dspy
from cuecard.clients.adapter import adapter_for
from cuecard.clients.usage import Limits, Usage, track
from cuecard.engine.evaluate import Evaluator
from cuecard.errors import BudgetExhausted
from cuecard.identity import data_fingerprint, digest, lm_identity, metric_identity
from cuecard.program import apply_instructions, get_instructions, predictors
from cuecard.reporting.report import CandidateSummary, CompileReport
from cuecard.teleprompters.proposing import ANSWER_FORM_ORIGIN
from pydantic import BaseModel, Field, field_validator

from ..models import resolve_model_spec
from .methods import (
    DEFAULT_METHODS,
    DSPY_METHOD_NAMES,
    DSPY_REFERENCES,
    METHOD_NAMES,
    MethodRun,
    method_code_hash,
    runners_for,
)
from .methods.common import stop_reason
from .results import WITH_ANSWER_FORM, WITH_DEMOS, CellResult, CellStore, one_line, provenance, write_outputs
from .tasks import DEFAULT_SEED_INSTRUCTION, Task, bbh, instruction_induction, jsonl_task

logging.getLogger("dspy.clients.lm").setLevel(logging.ERROR)  # "response was truncated": answers are capped on purpose

HARNESS_VERSION = 1
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
DEFAULT_TASKS = ("ii:sentiment", "ii:larger_animal", "bbh:boolean_expressions")


class HarnessConfig(BaseModel):
    """Settings of one harness run (every cell's fingerprint is derived from them)."""

    tasks: list[str] = Field(default_factory=lambda: list(DEFAULT_TASKS), description="ii:NAME, bbh:NAME or jsonl:PATH:INPUT[,INPUT]:OUTPUT")
    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    seeds: int = Field(3, ge=1, description="seeds 0..N-1")
    cap: int = Field(80, ge=1, description="LM requests (task + prompt, cached or not) each compile may make")
    n_train: int = Field(20, ge=1, description="train examples per seed")
    n_dev: int = Field(10, ge=1, description="dev examples per seed")
    n_test: int = Field(30, ge=1, description="test examples, the same for every seed")
    task_model: str = Field("local", description="'local' (the embedded model), a .gguf path, or a litellm model string")
    prompt_model: str = Field("local", description="the model that writes instructions")
    max_tokens: int = Field(32, ge=1, description="cap on the task model's answer tokens")
    seeds_from: Literal["generic", "terse"] = Field(
        "terse", description="the seed instruction: 'generic' (\"Answer the question.\" for every task) or 'terse' (per task)"
    )
    prompt_max_tokens: int = Field(200, ge=8, description="default cap on the prompt model's tokens")
    data: str = Field(str(DEFAULT_DATA), description="the shared benchmark data folder")
    out: str = Field("runs/bench", description="where cells, the LM cache and the outputs go")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        unknown = [m for m in methods if m not in METHOD_NAMES]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHOD_NAMES)}")
        return methods

    @field_validator("tasks")
    @classmethod
    def _known_task_kinds(cls, tasks: list[str]) -> list[str]:
        for spec in tasks:
            kind = spec.split(":", 1)[0]
            if kind not in ("ii", "bbh", "jsonl") or ":" not in spec:
                raise ValueError(f"task {spec!r}: expected ii:NAME, bbh:NAME or jsonl:PATH:INPUT[,INPUT]:OUTPUT")
        return tasks


def load_task(spec: str, data: str | Path, seeds: str = "terse") -> Task:
    """A task from its spec string (see :class:`HarnessConfig`); data files are read in place under ``data``.

    ``seeds``: ``"generic"`` starts every program from "Answer the question." (the method must find the
    task from the examples); ``"terse"`` from the task's terse instruction, the kind a user writes first.
    """
    generic = DEFAULT_SEED_INSTRUCTION if seeds == "generic" else None
    kind, rest = spec.split(":", 1)
    if kind == "ii":
        return instruction_induction(rest, Path(data) / "instruction_induction", seed_instruction=generic)
    if kind == "bbh":
        return bbh(rest, Path(data) / "bbh", seed_instruction=generic)
    path, inputs, output = rest.rsplit(":", 2)
    return jsonl_task(path, inputs=inputs.split(","), output=output, seed_instruction=generic)


class Models:
    """The task and prompt LMs as two objects, so their meters split a run's calls even when both are one model."""

    def __init__(self, task: dspy.LM, prompt: dspy.LM) -> None:
        if task is prompt:
            raise ValueError("give the task and prompt models as two objects (their meters split the calls)")
        self.task, self.prompt = task, prompt

    @classmethod
    def from_config(cls, config: HarnessConfig) -> Models:
        return cls(
            cuecard.LM(resolve_model_spec(config.task_model), max_tokens=config.max_tokens),
            cuecard.LM(resolve_model_spec(config.prompt_model), max_tokens=config.prompt_max_tokens),
        )


def accuracy(program: dspy.Module, examples: Sequence[dspy.Example], metric: Callable[..., Any], task_lm: dspy.LM) -> float:
    """Mean metric of ``program`` on ``examples`` through cuecard's evaluator (a failed example scores 0)."""
    evaluator = Evaluator(program, metric, task_lm=task_lm, adapter=adapter_for(task_lm), max_failure_share=1.0)
    scores = evaluator.run(get_instructions(program), list(enumerate(examples)))
    return sum(s.score for s in scores) / len(scores)


def task_identity(task: Task) -> dict[str, Any]:
    """What identifies a task's results: its program, metric, seed instruction and examples."""
    return {
        "name": task.name,
        "signature": task.signature,
        "seed_instruction": task.seed_instruction,
        "metric": metric_identity(task.metric),
        "pool": data_fingerprint(task.pool),
        "test_pool": data_fingerprint(task.test_pool) if task.test_pool is not None else None,
        "human": digest(task.human_instructions),
    }


def fingerprint(config: HarnessConfig, task: Task, method: str, seed: int | None, models: Models) -> str:
    """What a stored cell must match to be reused: the settings that change results, the models and their
    answer-changing settings, the task's metric and data, and the method's code (the run identity's parts)."""
    settings = config.model_dump(exclude={"tasks", "methods", "seeds", "out", "data", "task_model", "prompt_model"})
    models_used = {"task": lm_identity(models.task) if method != "majority" else None,
                   "prompt": lm_identity(models.prompt) if method not in ("human", "majority") else None}
    blob = json.dumps(
        [HARNESS_VERSION, settings, task_identity(task), models_used, method, method_code_hash(method), seed],
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_method(
    method: str,
    task: Task,
    seed: int,
    config: HarnessConfig,
    models: Models,
    workdir: Path,
    runner: Callable[..., tuple[dspy.Module, MethodRun]],
) -> CellResult:
    """Compile with one method under the cap, then score the result on dev and test (outside the cap)."""
    splits = task.splits(seed, config.n_train, config.n_dev, config.n_test)
    cell = CellResult(task=task.name, method=method, seed=seed, fingerprint=fingerprint(config, task, method, seed, models))
    task_before, prompt_before = models.task.meter.usage, models.prompt.meter.usage
    started = time.perf_counter()
    compiled = None
    with track(f"{task.name}/{method}/seed{seed}", Limits(max_calls=config.cap)) as block:
        try:
            # DSPy's optimizers bind cuecard's adapter to the program only: their own calls keep DSPy's defaults
            adapter = None if method in (*DSPY_METHOD_NAMES, *DSPY_REFERENCES) else adapter_for(models.task)
            with dspy.context(lm=models.task, adapter=adapter):
                compiled, info = runner(
                    task.program(), train=splits.train, dev=splits.dev, metric=task.metric, task_lm=models.task,
                    prompt_lm=models.prompt, cap=config.cap, seed=seed, workdir=workdir,
                )
            cell.knobs, cell.planned_calls, cell.notes, cell.proposals = info.knobs, info.planned_calls, info.notes, info.proposals
        except BudgetExhausted as exc:
            cell.error = f"stopped by the harness cap before it finished ({one_line(exc)})"
        except Exception as exc:  # a method that cannot run on this model gets its reason in the table
            cell.error = one_line(exc)
    cell.seconds = time.perf_counter() - started
    cell.usage = block.usage
    cell.task_usage = models.task.meter.usage - task_before
    cell.prompt_usage = models.prompt.meter.usage - prompt_before
    if cell.usage.calls >= config.cap and compiled is not None:
        cell.notes.append(f"reached the cap of {config.cap} calls: requests beyond it were refused")
    report = getattr(compiled, "cuecard_report", None)
    if report is not None and config.cap - cell.usage.calls > 0.1 * config.cap:  # counted as the cap counts: replies replayed too
        cell.notes.append(f"stopped with {config.cap - cell.usage.calls} of {config.cap} calls unspent: {stop_reason(report)}")
    if compiled is not None:
        cell.instructions = get_instructions(compiled)
        cell.dev_accuracy = accuracy(compiled, splits.dev, task.metric, models.task)
        cell.test_accuracy = accuracy(compiled, splits.test, task.metric, models.task)
        cell.test_size = len(splits.test)
        record_provenance(cell, compiled, task, splits.test, models)
    return cell


def record_provenance(cell: CellResult, compiled: dspy.Module, task: Task, test: Sequence[dspy.Example], models: Models) -> None:
    """Where the winner came from, the do-no-harm decision with its paired differences, and, when the check
    kept the seed, the search's own best scored on test too (what another acceptance rule would have returned)."""
    report = getattr(compiled, "cuecard_report", None)
    if report is None:  # DSPy's optimizers: the seed's instructions, or their own, and the demos they chose
        same = list(cell.instructions.values()) == [task.seed_instruction]
        demos = any(predictor.demos for _, predictor in predictors(compiled))
        cell.winner_source = ("seed" if same else f"own step: {cell.method}") + (WITH_DEMOS if demos else "")
        return
    cell.winner_source = winner_source(report, report.best)
    searched = report.search_best or report.best
    cell.search_best_source = winner_source(report, searched)
    cell.acceptance = report.acceptance.model_dump() if report.acceptance is not None else None
    if report.search_best is not None:
        program = apply_instructions(compiled, report.search_best.instructions)
        cell.search_best_test_accuracy = accuracy(program, test, task.metric, models.task)
    readings = [c for c in report.candidates if c.origin == "task-reading" and c.dev_score is not None]
    if cell.winner_source.startswith("own step") and readings:
        reading = max(readings, key=lambda c: (c.dev_examples, c.dev_score))
        cell.best_reading_test_accuracy = accuracy(apply_instructions(compiled, reading.instructions), test, task.metric, models.task)


def winner_source(report: CompileReport, candidate: CandidateSummary) -> str | None:
    """Where ``candidate`` came from (:func:`provenance`); the answer-form check's variant is named by the candidate
    it appended its sentence to, e.g. ``"seed + answer form"``."""
    if candidate.origin == ANSWER_FORM_ORIGIN:
        parent = next((c for c in report.candidates if c.key == candidate.parent), None)
        if parent is not None:
            return f"{provenance(parent.origin, parent.round)}{WITH_ANSWER_FORM}"
    return provenance(candidate.origin, candidate.round)


def run_human(task: Task, config: HarnessConfig, models: Models) -> CellResult:
    """Each human-written instruction scored on the task's test split (shared by all seeds)."""
    test = task.splits(0, config.n_train, config.n_dev, config.n_test).test
    cell = CellResult(task=task.name, method="human", seed=None, fingerprint=fingerprint(config, task, "human", None, models))
    started = time.perf_counter()
    cell.human_accuracies = [accuracy(task.program(text), test, task.metric, models.task) for text in task.human_instructions]
    cell.seconds, cell.test_size = time.perf_counter() - started, len(test)
    if not task.human_instructions:
        cell.notes.append("this task has no human-written instructions")
    return cell


def most_common_answer(task: Task, examples: Sequence[dspy.Example]) -> dict[str, Any]:
    """The output fields' values given most often in ``examples`` (the first of them on a tie)."""
    outputs = list(dspy.Signature(task.signature).output_fields)
    answers = Counter(json.dumps([example[name] for name in outputs], default=str) for example in examples)
    return dict(zip(outputs, json.loads(answers.most_common(1)[0][0]), strict=True))


def run_majority(task: Task, seed: int, config: HarnessConfig, models: Models) -> CellResult:
    """The seed's train split's most common answer, given for every dev and test example, scored by the
    task's metric with no LM: the floor a search that learns only the answer's form can reach."""
    splits = task.splits(seed, config.n_train, config.n_dev, config.n_test)
    cell = CellResult(task=task.name, method="majority", seed=seed, fingerprint=fingerprint(config, task, "majority", seed, models))
    answer = most_common_answer(task, splits.train)

    def score(examples: Sequence[dspy.Example]) -> float:
        return sum(float(task.metric(example, dspy.Prediction(**answer))) for example in examples) / len(examples)

    cell.test_accuracy, cell.dev_accuracy, cell.test_size = score(splits.test), score(splits.dev), len(splits.test)
    cell.notes.append("always answers " + ", ".join(f"{name}={one_line(value, 40)!r}" for name, value in answer.items()))
    return cell


def run(
    config: HarnessConfig,
    *,
    log: Callable[[str], None] = print,
    tasks: Sequence[Task] | None = None,
    models: Models | None = None,
    report_only: bool = False,
) -> dict[str, Path]:
    """Run every (task, method, seed) cell not already stored under ``config.out``; write the outputs.

    ``tasks`` and ``models`` replace the ones ``config`` names (tasks built in code, LMs built by the caller);
    otherwise the LM cache goes to ``<out>/lm-cache``, shared by every method of the run. With
    ``report_only`` no LM is loaded: the outputs are rewritten from the stored cells and missing ones are
    logged. Returns the written paths (empty when no cell is stored).

    Example:
        >>> run(HarnessConfig(tasks=["ii:sentiment"], methods=["seed", "ape"], seeds=1, cap=40))  # doctest: +SKIP
    """
    out = Path(config.out)
    store = CellStore(out)
    tasks = list(tasks) if tasks is not None else [load_task(spec, config.data, config.seeds_from) for spec in config.tasks]
    if models is None:
        if not report_only:
            cuecard.configure_cache(out / "lm-cache")
        models = Models.from_config(config)  # building them loads no model: the fingerprints need their identity
    runners = {} if report_only else runners_for(config.methods)
    plan = cell_plan(tasks, config.methods, config.seeds)
    cells: list[CellResult] = []
    paths: dict[str, Path] = {}
    try:
        for number, (task, method, seed) in enumerate(plan, start=1):
            label = f"[{number}/{len(plan)}] {task.name} / {method}" + ("" if seed is None else f" / seed {seed}")
            cell = store.get(task.name, method, seed, fingerprint(config, task, method, seed, models))
            if cell is not None:
                log(f"{label}: stored ({describe(cell)})")
            elif report_only:
                log(f"{label}: missing (not run yet with these settings)")
                continue
            else:
                if method == "human":
                    cell = run_human(task, config, models)
                elif method == "majority":
                    cell = run_majority(task, seed, config, models)
                else:
                    workdir = out / "runs" / f"{task.name}__{method}__seed{seed}"
                    cell = run_method(method, task, seed, config, models, workdir, runners[method])
                store.put(cell)
                log(f"{label}: {describe(cell)}")
            cells.append(cell)
    finally:
        if cells:
            paths = write_outputs(out, config.model_dump(), cells)
    return paths


def cell_plan(tasks: Sequence[Task], methods: Sequence[str], seeds: int) -> list[tuple[Task, str, int | None]]:
    """The cells in run order: seed by seed, so a run cut short has whole seeds of every method.

    The human baseline does not depend on the seed: it is one cell per task, in the first seed.
    """
    plan: list[tuple[Task, str, int | None]] = []
    for seed in range(seeds):
        for task in tasks:
            for method in methods:
                if method != "human":
                    plan.append((task, method, seed))
                elif seed == 0:
                    plan.append((task, method, None))
    return plan


def describe(cell: CellResult) -> str:
    if cell.method == "human":
        accs = cell.human_accuracies
        return f"{len(accs)} annotations, mean {100 * sum(accs) / len(accs):.1f}%" if accs else "no annotations"
    if cell.error:
        return f"failed after {cell.usage.calls} calls: {cell.error}"
    usage: Usage = cell.usage
    return (
        f"test {100 * (cell.test_accuracy or 0):.1f}%, dev {100 * (cell.dev_accuracy or 0):.1f}%, "
        f"{usage.calls} calls ({usage.model_calls} reached a model), {cell.seconds:.0f} s"
    )
