"""Run a program with a candidate's instructions on examples and score each example in [0, 1].

Two objectives: execution accuracy (the user's metric on the program's prediction) and the
log-probability of the gold output (APE's "log-prob" score, reported as the per-token probability
``exp(mean log-prob)`` so that it lives in [0, 1] like every other score).

An LM error, a timeout, a context overflow or an exception in the metric is a *failure*, not a
score: the example's result carries the reason (and a score of 0 that the decision in progress
counts), the engine stores it as a failure and a later run retries it. Past ``max_failure_share``
of failed examples (after ``min_examples_for_failure_check``) :meth:`Evaluator.check_failures`
raises :class:`EvaluationFailed` naming the commonest reasons. A reached budget cap is not a
failure: it propagates as :class:`~cuecard.errors.BudgetExhausted`.

Example:
    >>> import dspy
    >>> from cuecard.clients.testing import scripted_lm
    >>> program = dspy.Predict(dspy.Signature("review -> sentiment", "Say positive."))
    >>> evaluator = Evaluator(program, lambda ex, pred, trace=None: pred.sentiment == ex.sentiment,
    ...                       task_lm=scripted_lm(lambda messages: "positive"))
    >>> data = [dspy.Example(review="nice", sentiment="positive").with_inputs("review")]
    >>> [r.score for r in evaluator.run({"self": "Say positive."}, list(enumerate(data)))]
    [1.0]
"""

from __future__ import annotations

import contextvars
import functools
import math
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import dspy
from pydantic import BaseModel, Field

from ..clients.adapter import adapter_for
from ..clients.lm import score_logprob
from ..clients.usage import track
from ..errors import BudgetExhausted, ConfigError, ContextOverflowError, EvaluationFailed
from ..metrics import score_to_float
from ..program import apply_instructions, check_candidate, predictors
from ..redact import redact_text
from .deadlines import TIMED_OUT, run_with_deadlines

Objective = Literal["metric", "logprob"]
Metric = Callable[..., Any]


class ExampleScore(BaseModel):
    """One example's score for one candidate; ``error`` says why it failed (its 0 is not a score)."""

    index: int
    score: float
    error: str | None = None
    output: dict[str, str] | None = None
    prediction: dict[str, Any] | None = Field(
        None, description="the prediction's fields as JSON values, when JSON holds them exactly (a metric can re-score it)"
    )
    requests: int = Field(0, description="LM requests the example took (cached or not)")

    @property
    def failed(self) -> bool:
        return self.error is not None


def failure_reason(error: str) -> str:
    """The reason of a failure without its details: ``"program: ConnectionError"``, ``"timeout"``."""
    head, _, rest = error.partition(": ")
    kind = rest.split(":", 1)[0].strip() if rest and head not in ("timeout", "context overflow") else ""
    return f"{head}: {kind}" if kind else head


_OVERFLOW = ("exceed context window", "context length", "context window", "maximum context", "too many tokens")


class TracedRun(BaseModel):
    """One run of a program on one example with every predictor's inputs and outputs, by predictor name."""

    model_config = {"arbitrary_types_allowed": True}

    prediction: Any = None
    steps: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    error: str | None = None


class Evaluator:
    """Scores candidates of one program on examples, on one task LM.

    Args:
        program: the user's DSPy program (never modified).
        metric: ``metric(example, prediction, trace=None)`` returning bool, int or float in [0, 1].
        task_lm: the LM the program runs on.
        adapter: the DSPy adapter (default: :func:`cuecard.adapter_for` the task LM).
        objective: ``"metric"`` (execution accuracy) or ``"logprob"`` (gold output's probability;
            single-predictor programs on a model that can score text).
        num_threads: parallel examples for remote LMs; local models are always serialised.
        timeout: seconds an example may take from its start; a late one is abandoned (only it) and
            fails with reason "timeout".
        max_failure_share: share of failed examples above which :meth:`check_failures` stops the run.
    """

    def __init__(
        self,
        program: dspy.Module,
        metric: Metric | None,
        *,
        task_lm: dspy.LM,
        adapter: dspy.Adapter | None = None,
        objective: Objective = "metric",
        num_threads: int = 16,
        timeout: float | None = None,
        max_failure_share: float = 0.5,
        min_examples_for_failure_check: int = 10,
    ) -> None:
        if objective not in ("metric", "logprob"):
            raise ConfigError(f"objective must be 'metric' or 'logprob', got {objective!r}")
        if objective == "metric" and metric is None:
            raise ConfigError("objective='metric' needs a metric")
        if objective == "logprob" and len(predictors(program)) != 1:
            raise ConfigError("objective='logprob' scores one predictor's gold output; this program has several")
        if not 0 < max_failure_share <= 1:
            raise ConfigError(f"max_failure_share must be in (0, 1], got {max_failure_share}")
        self.program = program
        self.metric = metric
        self.task_lm = task_lm
        self.adapter = adapter or adapter_for(task_lm)
        self.objective = objective
        self.num_threads = 1 if getattr(task_lm, "is_local", False) else max(1, num_threads)
        self.timeout = timeout
        self.max_failure_share = max_failure_share
        self.min_examples_for_failure_check = min_examples_for_failure_check
        self._lock = threading.Lock()
        self.evaluated = 0
        self.failures: Counter[str] = Counter()

    # ---- checks that cost no LM call ---------------------------------------------------------
    def check_metric(self, example: dspy.Example) -> None:
        """Call the metric on the gold outputs as if predicted; a None or string result is a clear error."""
        if self.objective != "metric":
            return
        gold = dspy.Prediction(**example.labels())
        try:
            value = self.metric(example, gold, None)
        except Exception:
            return  # a metric may need fields only a real prediction has; judged at run time
        try:
            score_to_float(value)
        except (TypeError, ValueError) as exc:
            name = getattr(self.metric, "__name__", type(self.metric).__name__)
            raise TypeError(f"The metric {name} returned {value!r} for a gold answer: {exc}") from exc

    # ---- running ------------------------------------------------------------------------------
    def run(self, candidate: Mapping[str, str], examples: Sequence[tuple[int, dspy.Example]]) -> list[ExampleScore]:
        """Score ``candidate`` on ``(index, example)`` pairs; results come back in the same order."""
        results, stop = self.run_partial(candidate, examples)
        if stop is not None:
            raise stop
        return results

    def run_partial(
        self, candidate: Mapping[str, str], examples: Sequence[tuple[int, dspy.Example]]
    ) -> tuple[list[ExampleScore], BudgetExhausted | None]:
        """Like :meth:`run`, but a cap reached midway returns the examples finished before it with the stop."""
        results, stop = self.run_many([(candidate, examples)])
        return results[0], stop

    def run_many(
        self,
        jobs: Sequence[tuple[Mapping[str, str], Sequence[tuple[int, dspy.Example]]]],
        *,
        claim: Callable[[int, int], bool] | None = None,
        on_done: Callable[[int, ExampleScore], None] | None = None,
    ) -> tuple[list[list[ExampleScore]], BudgetExhausted | None]:
        """Score several candidates, each on its ``(index, example)`` pairs, as one pool on the
        evaluator's threads (a stage of a search keeps every thread busy, not one candidate's few
        examples); each job's results in its order, and the stop of a cap reached midway.

        ``claim(job, index)``, asked on a thread just before it would score a pair, may say no (another
        process does it; the pair is left out of the results); ``on_done(job, result)`` gets each
        result as it is finished, on its thread (a result given up after ``timeout`` is only returned).

        Example:
            >>> evaluator.run_many([({"self": "A."}, pairs), ({"self": "B."}, pairs)])  # doctest: +SKIP
            ([[...], [...]], None)
        """
        programs = []
        for candidate, _ in jobs:
            check_candidate(self.program, candidate)
            programs.append(apply_instructions(self.program, candidate))
        calls = [
            functools.partial(contextvars.copy_context().run, self._claimed_score, claim, on_done, job, program, index, example)
            for job, (program, (_, examples)) in enumerate(zip(programs, jobs, strict=True))
            for index, example in examples
        ]
        if self.timeout is None and (self.num_threads == 1 or len(calls) <= 1):
            outcomes = []
            for call in calls:
                outcomes.append(call())
                if isinstance(outcomes[-1], BudgetExhausted):
                    break
        else:
            outcomes = run_with_deadlines(calls, threads=self.num_threads, timeout=self.timeout)
        outcomes += [None] * (len(calls) - len(outcomes))
        results: list[list[ExampleScore]] = []
        stop = None
        position = 0
        for _, examples in jobs:
            done: list[ExampleScore] = []
            for index, _ in examples:
                outcome = outcomes[position]
                position += 1
                if outcome is None:
                    continue  # not run: a cap was reached before it, or another process claimed it
                if isinstance(outcome, BudgetExhausted):
                    stop = stop or outcome
                elif outcome is TIMED_OUT:
                    done.append(ExampleScore(index=index, score=0.0, error=f"timeout: no answer within {self.timeout:g} s"))
                else:
                    done.append(outcome)
            results.append(done)
        self._account([result for done in results for result in done])
        return results, stop

    def _claimed_score(
        self,
        claim: Callable[[int, int], bool] | None,
        on_done: Callable[[int, ExampleScore], None] | None,
        job: int,
        program: dspy.Module,
        index: int,
        example: dspy.Example,
    ) -> ExampleScore | BudgetExhausted | None:
        if claim is not None and not claim(job, index):
            return None
        outcome = self._score_or_stop(program, index, example)
        if on_done is not None and isinstance(outcome, ExampleScore):
            on_done(job, outcome)
        return outcome

    def _score_or_stop(self, program: dspy.Module, index: int, example: dspy.Example) -> ExampleScore | BudgetExhausted:
        with track() as counted:
            try:
                result = self._score(program, index, example)
            except BudgetExhausted as exc:
                return exc
        return result.model_copy(update={"requests": counted.usage.calls})

    def trace(self, candidate: Mapping[str, str], example: dspy.Example) -> TracedRun:
        """Run ``candidate`` on one example and record what each predictor saw and said (DSPy's trace)."""
        program = apply_instructions(self.program, candidate)
        names = {id(predictor): name for name, predictor in program.named_predictors()}
        with dspy.context(lm=self.task_lm, adapter=self.adapter, trace=[]):
            try:
                prediction = program(**example.inputs())
            except BudgetExhausted:
                raise
            except Exception as exc:
                return TracedRun(error=f"{type(exc).__name__}: {exc}"[:300])
            steps = [
                (names.get(id(predictor), "?"), dict(inputs), dict(outputs.items()))
                for predictor, inputs, outputs in dspy.settings.trace
            ]
        return TracedRun(prediction=prediction, steps=steps)

    def _score(self, program: dspy.Module, index: int, example: dspy.Example) -> ExampleScore:
        try:
            with dspy.context(lm=self.task_lm, adapter=self.adapter):
                if self.objective == "logprob":
                    return ExampleScore(index=index, score=self._logprob_score(program, example))
                prediction = program(**example.inputs())
        except BudgetExhausted:
            raise
        except Exception as exc:
            return ExampleScore(index=index, score=0.0, error=describe_error(exc))
        output = {key: str(value) for key, value in prediction.items()} if hasattr(prediction, "items") else None
        try:
            score = score_to_float(self.metric(example, prediction, None))
        except BudgetExhausted:
            raise  # a metric that calls a model (a judge) met the cap: the search stops, the example is not failed
        except Exception as exc:
            return ExampleScore(index=index, score=0.0, error=f"metric: {type(exc).__name__}: {exc}"[:300], output=output)
        return ExampleScore(index=index, score=score, output=output, prediction=exact_fields(prediction))

    def _logprob_score(self, program: dspy.Module, example: dspy.Example) -> float:
        _, predictor = predictors(program)[0]
        signature = predictor.signature
        messages = self.adapter.format(signature, [dict(d) for d in predictor.demos], dict(example.inputs()))
        labels = {name: example[name] for name in signature.output_fields}
        if hasattr(self.adapter, "format_assistant_message"):
            answer = self.adapter.format_assistant_message(signature, labels)
        else:
            answer = self.adapter.format_assistant_message_content(signature, labels)
        return math.exp(score_logprob(self.task_lm, messages, answer).mean)

    def _account(self, results: Sequence[ExampleScore]) -> None:
        with self._lock:
            self.evaluated += len(results)
            for result in results:
                if result.error:
                    self.failures[failure_reason(result.error)] += 1

    def check_failures(self) -> None:
        """Raise :class:`EvaluationFailed` when failures passed ``max_failure_share`` of the evaluations."""
        with self._lock:
            failed = sum(self.failures.values())
            if self.evaluated >= self.min_examples_for_failure_check and failed / self.evaluated > self.max_failure_share:
                raise EvaluationFailed(
                    f"{failed} of {self.evaluated} example evaluations failed, more than the allowed "
                    f"{self.max_failure_share:.0%}. Commonest reasons: {describe_failures(self.failures)}"
                )


def exact_fields(prediction: Any) -> dict[str, Any] | None:
    """A prediction's fields as JSON values, or None when JSON cannot hold one exactly (an object, a tuple).

    >>> exact_fields(dspy.Prediction(answer="4", confidence=0.5))
    {'answer': '4', 'confidence': 0.5}
    """
    if not hasattr(prediction, "items"):
        return None
    fields = dict(prediction.items())
    return fields if all(_exact_json(value) for value in fields.values()) else None


def _exact_json(value: Any, depth: int = 0) -> bool:
    if depth > 20:
        return False
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if type(value) is list:
        return all(_exact_json(item, depth + 1) for item in value)
    if type(value) is dict:
        return all(isinstance(key, str) and _exact_json(item, depth + 1) for key, item in value.items())
    return False


def describe_error(exc: BaseException, where: str = "program") -> str:
    """``"program: ConnectionError: model unreachable"``: the original error under DSPy's wrappers,
    with ``"context overflow"`` for an input longer than the model's window."""
    cause = exc
    while type(cause).__module__.startswith("dspy") and (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    text = str(cause) or str(exc)
    if any(marker in text.lower() for marker in _OVERFLOW):
        where = "context overflow"
    return f"{where}: {type(cause).__name__}: {redact_text(text)}"[:300]


def check_context(
    program: dspy.Module,
    lm: Any,
    adapter: dspy.Adapter,
    examples: Sequence[dspy.Example],
    labels: Sequence[str] | None = None,
    program_label: str = "the program",
) -> None:
    """Refuse, before any LM call, an example whose prompt cannot fit the model's context window.

    A program whose own instructions and demos leave no room is refused first, naming
    ``program_label`` (a saved file, say) and the predictor (:func:`check_instructions`).

    The first predictor's prompt is rendered as the adapter sends it; the model's tokenizer counts
    it when the text is near the limit (a byte never makes more than one token, so shorter texts
    pass unmeasured). Models whose window is unknown are not checked.

    Raises:
        ContextOverflowError: naming the example (``labels[i]``), its longest field and the window.
    """
    window = lm.context_window() if hasattr(lm, "context_window") else None
    if not window:
        return
    check_instructions(program, lm, adapter, where=program_label)
    _, predictor = predictors(program)[0]
    signature = predictor.signature
    reserve = min(int((getattr(lm, "kwargs", None) or {}).get("max_tokens") or 256), window // 4)
    limit = window - reserve
    demos = [dict(demo) for demo in predictor.demos]
    for number, example in enumerate(examples):
        inputs = {name: example[name] for name in signature.input_fields if name in example}
        if not inputs:
            continue
        messages = adapter.format(signature, demos, inputs)
        size, tokens = _prompt_size(lm, messages, window, limit)
        if size is None:
            continue
        longest = max(inputs, key=lambda name: len(str(inputs[name])))
        label = labels[number] if labels is not None else f"example {number + 1}"
        amount = f"{tokens} tokens" if tokens is not None else f"about {size // 4} tokens or more"
        raise ContextOverflowError(
            f"{label}: the prompt takes {amount} ({longest!r} has {len(str(inputs[longest])):,} characters), more than "
            f"the {window}-token context of {getattr(lm, 'model', 'the model')} leaves for it ({limit} with {reserve} "
            "kept for the answer); shorten or remove that example"
        )



def _prompt_size(lm: Any, messages: list[dict[str, Any]], window: int, limit: int) -> tuple[int | None, int | None]:
    """``(bytes, tokens)`` of a prompt that may not fit ``limit`` tokens, or ``(None, None)`` when it fits.

    The byte count (an upper bound on tokens) decides cheaply; the model's own tokenizer counts only prompts
    not too large to tokenize (tokens is None past 8 windows of bytes: too long either way).
    """
    size = sum(len(str(m.get("content", "")).encode("utf-8")) for m in messages) + 16 * len(messages)
    if size <= limit:
        return None, None
    tokens = lm.count_tokens(messages) if size <= 8 * window and hasattr(lm, "count_tokens") else None
    if tokens is not None and tokens <= limit:
        return None, None
    return size, tokens

def check_instructions(program: dspy.Module, lm: Any, adapter: dspy.Adapter, where: str = "the program") -> None:
    """Refuse, before any LM call, a predictor whose instruction and demos alone (empty inputs) cannot
    fit the model's context window, naming ``where`` (the program's file) and the predictor.

    Raises:
        ContextOverflowError: ``"p.json, predictor 'self': its instruction (52,428,800 characters) ..."``.
    """
    window = lm.context_window() if hasattr(lm, "context_window") else None
    if not window:
        return
    reserve = min(int((getattr(lm, "kwargs", None) or {}).get("max_tokens") or 256), window // 4)
    limit = window - reserve
    for name, predictor in predictors(program):
        signature = predictor.signature
        messages = adapter.format(signature, [dict(demo) for demo in predictor.demos], dict.fromkeys(signature.input_fields, ""))
        size, tokens = _prompt_size(lm, messages, window, limit)
        if size is None:
            continue
        amount = f"{tokens} tokens" if tokens is not None else f"about {size // 4} tokens or more"
        demos = f" and its {len(predictor.demos)} demo(s) take" if predictor.demos else " takes"
        raise ContextOverflowError(
            f"{where}, predictor {name!r}: its instruction ({len(signature.instructions or ''):,} characters){demos} "
            f"{amount} with no input at all, more than the {window}-token context of "
            f"{getattr(lm, 'model', 'the model')} leaves ({limit} with {reserve} kept for the answer); shorten that instruction"
        )


def describe_failures(failures: Mapping[str, int], limit: int = 3) -> str:
    """``"program: ConnectionError (x13); timeout (x2)"`` for the commonest reasons."""
    ordered = sorted(failures.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return "; ".join(f"{reason} (x{count})" for reason, count in ordered)
