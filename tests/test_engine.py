"""The shared evaluation engine: instructions, evaluator, study, budgets, bad input, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dspy
import optuna
import pytest
from cuecard import BudgetExhausted, Limits
from cuecard.clients.testing import BernoulliTask, scripted_lm
from cuecard.engine.evaluate import EvaluationFailed, Evaluator
from cuecard.engine.policies import UCB, FullEvaluation, MultiStage, SuccessiveHalving
from cuecard.engine.study import Engine, RunConfigMismatch, StorageError
from cuecard.program import apply_instructions, check_examples, get_instructions

HERE = Path(__file__).parent


class TwoStage(dspy.Module):
    def __init__(self):
        super().__init__()
        self.summarize = dspy.Predict(dspy.Signature("text -> summary", "Summarize."))
        self.classify = dspy.ChainOfThought(dspy.Signature("summary -> label", "Label it."))

    def forward(self, text):
        return self.classify(summary=self.summarize(text=text).summary)


def make_engine(task, **kwargs):
    kwargs.setdefault("storage", ":memory:")
    kwargs.setdefault("progress", False)
    engine = Engine(Evaluator(task.program, task.metric, task_lm=task.lm), task.examples, **kwargs)
    for arm in range(len(task.accuracies)):
        engine.add_candidate(task.candidate(arm), origin="test", round=arm % 2, parent=None if arm == 0 else "p0")
    return engine


# ---- instructions of a program ------------------------------------------------------------------
def test_instructions_of_a_multi_stage_program_and_no_mutation():
    program = TwoStage()
    assert get_instructions(program) == {"summarize": "Summarize.", "classify.predict": "Label it."}
    changed = apply_instructions(program, {"summarize": "Shorten.", "classify.predict": "Tag it."})
    assert get_instructions(changed) == {"summarize": "Shorten.", "classify.predict": "Tag it."}
    assert get_instructions(program) == {"summarize": "Summarize.", "classify.predict": "Label it."}


def test_a_candidate_that_does_not_fit_names_the_predictors():
    with pytest.raises(ValueError, match=r"unknown predictor\(s\) \['oops'\].*no instruction for \['summarize'\]"):
        apply_instructions(TwoStage(), {"oops": "x", "classify.predict": "y"})


def test_examples_missing_an_input_are_named():
    examples = [dspy.Example(text="a").with_inputs("text"), dspy.Example(other="b").with_inputs("other")]
    with pytest.raises(ValueError, match=r"trainset\[1\] has no value for \['text'\]"):
        check_examples(TwoStage(), examples)
    with pytest.raises(ValueError, match="empty"):
        check_examples(TwoStage(), [])


# ---- evaluator -----------------------------------------------------------------------------------
def sentiment_setup(reply, metric):
    program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify."))
    data = [dspy.Example(review=f"r{i}", sentiment="positive").with_inputs("review") for i in range(4)]
    return Evaluator(program, metric, task_lm=scripted_lm(reply)), list(enumerate(data))


@pytest.mark.parametrize("result,expected", [(True, 1.0), (0, 0.0), (1, 1.0), (0.25, 0.25)])
def test_metric_results_bool_int_float(result, expected):
    evaluator, data = sentiment_setup(lambda m: "positive", lambda e, p, t=None: result)
    assert [r.score for r in evaluator.run({"self": "Classify."}, data)] == [expected] * 4


@pytest.mark.parametrize("bad", [None, "yes"])
def test_metric_returning_none_or_string_is_caught_before_any_call(bad):
    evaluator, data = sentiment_setup(lambda m: "positive", lambda e, p, t=None: bad)
    with pytest.raises(TypeError, match="must return bool, int or float"):
        evaluator.check_metric(data[0][1])
    assert evaluator.task_lm.meter.usage.calls == 0


def test_metric_exception_scores_zero_with_reason():
    def metric(example, prediction, trace=None):
        raise KeyError("missing")

    evaluator, data = sentiment_setup(lambda m: "positive", metric)
    results = evaluator.run({"self": "Classify."}, data[:1])
    assert results[0].score == 0.0 and "metric: KeyError" in results[0].error


def test_lm_errors_are_failures_with_reasons_then_too_many_stop_the_run():
    def flaky(messages):
        raise ConnectionError("model unreachable")

    evaluator, data = sentiment_setup(flaky, lambda e, p, t=None: True)
    evaluator.min_examples_for_failure_check = 4
    results = evaluator.run({"self": "Classify."}, data[:3])
    assert all(r.failed and "unreachable" in r.error for r in results)
    evaluator.check_failures()  # 3 examples: too few to judge
    evaluator.run({"self": "Classify."}, data[3:])
    with pytest.raises(EvaluationFailed, match=r"4 of 4 .*program: ConnectionError \(x4\)"):
        evaluator.check_failures()


# ---- study --------------------------------------------------------------------------------------
def test_candidates_are_trials_with_lineage_and_running_scores(tmp_path):
    task = BernoulliTask([0.9, 0.2], pool_size=10, seed=1)
    engine = make_engine(task, storage=f"sqlite:///{tmp_path / 's.db'}", name="lineage")
    engine.allocate(FullEvaluation(n_examples=6))
    study = optuna.load_study(study_name="lineage", storage=f"sqlite:///{tmp_path / 's.db'}")
    trials = study.get_trials()
    assert len(trials) == 2
    record = trials[1].user_attrs["cuecard.candidate"]
    assert record["instructions"] == {"self": "arm 1"} and record["parent"] == "p0" and record["round"] == 1
    outcomes = [float(task.outcome(1, i)) for i in range(6)]
    assert trials[1].intermediate_values == {k: pytest.approx(sum(outcomes[:k]) / k) for k in range(1, 7)}


def test_a_known_candidate_keeps_its_arm_and_its_scores():
    task = BernoulliTask([0.9], pool_size=8, seed=2)
    engine = make_engine(task)
    engine.allocate(FullEvaluation(n_examples=8))
    calls = task.lm.meter.usage.calls
    assert engine.add_candidate(task.candidate(0)) == 0
    engine.allocate(FullEvaluation(n_examples=8))
    assert task.lm.meter.usage.calls == calls


def test_a_search_context_needs_no_teleprompter():
    """The context a search works with is given the engine, the policy, the seed and the metric: built from
    those alone, it scores a step with its policy (or one given) and the shared induction reads its metric."""
    from cuecard.teleprompters.context import SearchContext
    from cuecard.teleprompters.induction import collect_traces

    task = BernoulliTask([0.9, 0.2], pool_size=12, seed=3)
    engine = make_engine(task)
    train = [dspy.Example(item=f"item {i}", answer="yes").with_inputs("item") for i in range(20, 28)]
    ctx = SearchContext(task.program, engine, train, policy=FullEvaluation(n_examples=6), seed=0, metric=task.metric)
    with engine.session():
        step = ctx.allocate()
        assert step.policy == "full" and sorted(e.n for e in step.ranking) == [6, 6]
        closing = ctx.allocate([step.best.arm], policy=FullEvaluation(n_examples=12))
        assert closing.policy == "full" and closing.best.n == 12
        assert ctx.ranking_so_far().policy == "full"
        traces = collect_traces(ctx, "self")  # the seed (arm 0) run on train, kept where the metric passed
    assert traces and [t.item for t in traces] == [e.item for i, e in zip(range(20, 28), train, strict=True) if task.outcome(0, i)]


def test_a_scorer_of_your_own_needs_only_run_and_one_lacking_members_is_named():
    """The engine scores through the Scorer protocol: a scorer that subclasses it writes only ``run`` (the rest
    keep their defaults), the engine calls its failure check after a stage, and one that implements part of it
    is refused at once, naming what it lacks."""
    from cuecard.engine.evaluate import ExampleScore
    from cuecard.engine.study import Scorer
    from cuecard.errors import ConfigError, EvaluationFailed

    class Parity(Scorer):
        """Scores 1 where the example index and the instruction's length have the same parity."""

        def __init__(self):
            self.scored = 0

        def run(self, candidate, examples):
            self.scored += len(examples)
            return [ExampleScore(index=i, score=float(i % 2 == len(candidate["self"]) % 2)) for i, _ in examples]

    class Strict(Parity):
        def check_failures(self):
            raise EvaluationFailed("every evaluation is suspect")

    data = [dspy.Example(q=str(i), a="yes").with_inputs("q") for i in range(6)]
    scorer = Parity()
    engine = Engine(scorer, data, storage=":memory:", progress=False)
    even, odd = engine.add_candidate({"self": "ab"}), engine.add_candidate({"self": "abc"})
    with engine.session():
        ranking = engine.allocate(FullEvaluation(n_examples=6)).ranking
    assert {e.arm: e.mean for e in ranking} == {even: 0.5, odd: 0.5} and scorer.scored == 12
    assert engine.scores(even) == {i: float(i % 2 == 0) for i in range(6)}
    assert engine.identity.program is None and engine.identity.objective == "metric"
    strict = Engine(Strict(), data, storage=":memory:", progress=False)
    strict.add_candidate({"self": "ab"})
    with pytest.raises(EvaluationFailed, match="suspect"):
        strict.allocate(FullEvaluation(n_examples=2))

    class RunOnly:
        def run(self, candidate, examples):
            return []

    with pytest.raises(ConfigError, match=r"RunOnly lacks program, metric, objective, task_lm, adapter, num_threads, run_partial, trace, check_failures"):
        Engine(RunOnly(), data, storage=":memory:", progress=False)


def test_storage_that_cannot_be_opened_is_named():
    task = BernoulliTask([0.5], pool_size=4)
    with pytest.raises(StorageError, match="nosuchdb"):
        make_engine(task, storage="postgresql+nosuchdriver://u@127.0.0.1/nosuchdb")


def test_same_run_name_with_other_config_or_data_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'runs.db'}"
    task = BernoulliTask([0.5, 0.6], pool_size=6)
    make_engine(task, storage=storage, name="r", identity={"policy": "ucb"})
    with pytest.raises(RunConfigMismatch, match=r"extras.config.policy: 'full' here, 'ucb' stored"):
        make_engine(task, storage=storage, name="r", identity={"policy": "full"})
    with pytest.raises(RunConfigMismatch, match="the dev examples differ"):
        make_engine(BernoulliTask([0.5, 0.6], pool_size=7), storage=storage, name="r", identity={"policy": "ucb"})


def test_budgets_smaller_than_one_evaluation_are_refused_before_any_call():
    task = BernoulliTask([0.5], pool_size=4)
    with pytest.raises(ValueError, match="smaller than one example evaluation"):
        make_engine(task, max_evaluations=0)
    with pytest.raises(ValueError, match="smaller than one example evaluation"):
        make_engine(task, limits=Limits(max_model_calls=1), calls_per_example=2)
    assert task.lm.meter.usage.calls == 0


def test_the_lm_call_cap_is_never_exceeded_and_the_run_stops_cleanly():
    task = BernoulliTask([0.8] + [0.5] * 7, pool_size=50, seed=3)
    engine = make_engine(task, limits=Limits(max_model_calls=37))
    allocation = engine.allocate(UCB(), budget=400)
    assert task.lm.meter.usage.model_calls == 37
    assert "cap of 37 LM calls that reach a model" in allocation.capped.detail
    assert (allocation.capped.limit, allocation.capped.limit_value) == ("max_model_calls", 37)
    assert allocation.ranking  # best result so far
    with pytest.raises(BudgetExhausted), engine.session():
        task.lm("one more")


def test_evaluation_cap_is_honoured():
    task = BernoulliTask([0.8] + [0.5] * 7, pool_size=50, seed=3)
    engine = make_engine(task, max_evaluations=25)
    allocation = engine.allocate(FullEvaluation(n_examples=10))
    assert engine.evaluations == 25 and allocation.capped.limit == "max_evaluations"


def test_dry_run_estimate_bounds_the_real_cost():
    task = BernoulliTask([0.3 + 0.5 * i / 29 for i in range(30)], pool_size=100, seed=4)
    engine = make_engine(task)
    estimate = engine.estimate(MultiStage(), 30)
    assert task.lm.meter.usage.calls == 0
    allocation = engine.allocate(MultiStage())
    assert allocation.evaluations <= estimate.evaluations
    assert estimate.lm_calls == estimate.evaluations


def test_finish_closes_trials_with_their_states(tmp_path):
    storage = f"sqlite:///{tmp_path / 'f.db'}"
    task = BernoulliTask([0.9, 0.1, 0.5, 0.4], pool_size=40, seed=5)
    engine = make_engine(task, storage=storage, name="f")
    allocation = engine.allocate(SuccessiveHalving(), budget=80)
    pruned = [e.arm for e in allocation.ranking if e.pruned]
    engine.finish(pruned)
    states = {t.number: t.state for t in optuna.load_study(study_name="f", storage=storage).get_trials()}
    assert {states[a] for a in pruned} == {optuna.trial.TrialState.PRUNED}
    assert states[allocation.best.arm] == optuna.trial.TrialState.COMPLETE


# ---- resume after SIGKILL -----------------------------------------------------------------------
def scored_pairs(storage):
    study = optuna.load_study(study_name="resume", storage=storage)
    pairs = set()
    for trial in study.get_trials():
        arm = int(trial.user_attrs["cuecard.candidate"]["instructions"]["self"].split()[1])
        pairs.update((arm, int(k[2:])) for k in trial.user_attrs if k.startswith("s."))
    return pairs


def test_a_killed_run_resumes_without_redoing_finished_evaluations(tmp_path):
    sys.path.insert(0, str(HERE))
    import resume_worker

    uninterrupted = resume_worker.run(":memory:", 0.0)

    storage = f"sqlite:///{tmp_path / 'resume.db'}"
    out = tmp_path / "first.json"
    process = subprocess.Popen([sys.executable, str(HERE / "resume_worker.py"), storage, str(out), "0.02"])
    deadline = time.monotonic() + 120
    before = set()
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        try:
            before = scored_pairs(storage)
        except Exception:
            continue
        if len(before) >= 100:
            break
    assert process.poll() is None, "the worker finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()
    before = scored_pairs(storage)
    assert 100 <= len(before) < 320

    second = tmp_path / "second.json"
    subprocess.run([sys.executable, str(HERE / "resume_worker.py"), storage, str(second)], check=True, timeout=300)
    result = json.loads(second.read_text())
    redone = before & {tuple(p) for p in result["pairs"]}
    assert not redone, f"finished evaluations were redone: {sorted(redone)[:5]}"
    assert len(before) + len(result["pairs"]) == len(scored_pairs(storage))
    assert result["best"] == uninterrupted["best"]
    assert result["ranking"] == uninterrupted["ranking"]


# ---- two processes on one storage ----------------------------------------------------------------
def test_two_processes_on_one_storage_share_the_work_without_evaluating_twice(tmp_path):
    sys.path.insert(0, str(HERE))
    import share_worker

    alone = share_worker.run(":memory:", 0.0)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    go = tmp_path / "go"
    outs = [tmp_path / f"worker{i}.json" for i in range(2)]
    workers = [subprocess.Popen([sys.executable, str(HERE / "share_worker.py"), storage, str(out), str(go), "0.02"])
               for out in outs]
    deadline = time.monotonic() + 120
    while not all(Path(f"{out}.ready").exists() for out in outs) and time.monotonic() < deadline:
        time.sleep(0.1)
    go.touch()  # both start together
    for worker in workers:
        assert worker.wait(timeout=300) == 0
    first, second = (json.loads(out.read_text()) for out in outs)

    mine, theirs = {tuple(p) for p in first["pairs"]}, {tuple(p) for p in second["pairs"]}
    assert len(mine) == len(first["pairs"]) and len(theirs) == len(second["pairs"])
    assert not mine & theirs, f"evaluated by both processes: {sorted(mine & theirs)[:5]}"
    everything = {tuple(p) for p in alone["pairs"]}  # what one process alone evaluates
    assert len(everything) == len(share_worker.ACCURACIES) * 20  # full evaluation: 20 examples each
    assert mine | theirs == everything
    assert mine and theirs, "one process did all the work"
    # both see the same result, the one a single process gets alone
    assert first["ranking"] == second["ranking"] == alone["ranking"]
    assert first["means"] == second["means"] == alone["means"]
    study = optuna.load_study(study_name="shared", storage=storage)
    trials = [t for t in study.get_trials() if "cuecard.candidate" in t.user_attrs]
    assert len(trials) == len(share_worker.ACCURACIES), "a candidate got two trials"
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_optuna_is_a_version_the_storage_module_was_written_against():
    """framework/engine/store.py is the one module that touches Optuna's storage objects (their private
    ``_study_id``/``_trial_id`` included); it names the major versions it was checked against."""
    from cuecard.engine.store import TESTED_OPTUNA

    major = int(optuna.__version__.split(".")[0])
    assert TESTED_OPTUNA[0] <= major < TESTED_OPTUNA[1], (
        f"optuna {optuna.__version__} is outside {TESTED_OPTUNA}: check framework/engine/store.py against it"
    )
