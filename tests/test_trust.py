"""Trustworthy runs: a stored score is reused only under the same run identity; failures are not scores;
reruns and resumes are exact; a saved file is data; bad input is refused before any LM call.

Scripted models go through the real ``cuecard`` command (``main``) and the Python API; the saved-file
test runs two OpenAI-compatible servers on 127.0.0.1 and checks which one the model is sent to.
"""

import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import cuecard
import dspy
import optuna
import pytest
from cuecard.clients.testing import StubServer, scripted_lm
from cuecard.command.cli import main
from cuecard.engine.evaluate import Evaluator
from cuecard.errors import SavedFileWarning, SavedProgramError
from cuecard.metrics import exact_match
from cuecard.teleprompters import APE

HERE = Path(__file__).parent
ROOT = HERE.parent
REVIEWS = ROOT / "examples" / "data" / "reviews.jsonl"
CLASSIFY = ["--program", "classify", "--signature", "review -> sentiment", "--labels", "positive,negative"]
SMALL_APE = ["--teleprompter", "ape", "--set", "num_subsamples=2", "--set", "num_prompts_per_subsample=3", "--quiet"]
NEGATIVE_WORDS = ("bad", "awful", "terrible", "boring", "worst", "cold", "poor", "waste", "broke", "dull", "rude")


def keyword_sentiment(messages):
    text = messages[-1]["content"].lower()
    return "negative" if any(word in text for word in NEGATIVE_WORDS) else "positive"


def is_proposal_request(messages):
    return "teacher gave a student" in messages[-1]["content"]


class Models:
    """Scripted models behind ``cuecard.LM(spec)``: a task reply per spec, numbered proposals; each model's
    requests are kept by spec (``requests("A")``)."""

    def __init__(self, monkeypatch, task_replies=None, flaky=None):
        self.task_replies = task_replies or {}
        self.flaky = flaky or {}
        self.engines = {}
        self.proposals = 0
        monkeypatch.setattr(cuecard, "LM", self.make)

    def make(self, spec, **kwargs):
        def reply(messages):
            if spec in self.flaky:
                self.flaky[spec](messages)
            if is_proposal_request(messages):
                self.proposals += 1
                return f"Say whether the review is positive or negative ({spec}, idea {self.proposals % 5})."
            return self.task_replies.get(spec, keyword_sentiment)(messages)

        lm = scripted_lm(reply, name=f"scripted/{spec}")
        self.engines.setdefault(spec, []).append(lm.engine)
        return lm

    def requests(self, spec):
        return sum(len(engine.requests) for engine in self.engines.get(spec, []))

    def reset(self):
        self.engines.clear()


def compile_cli(capsys, *extra):
    code = main(["compile", *CLASSIFY, "--train", str(REVIEWS), *SMALL_APE, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def saved_report(path):
    from cuecard.teleprompters import CompileReport

    return CompileReport(**cuecard.read_block(path).report)


# ---- one run identity ------------------------------------------------------------------------------
def test_a_model_change_is_a_new_run_that_reuses_no_score(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    models = Models(monkeypatch, task_replies={"A": lambda m: "positive"})
    assert compile_cli(capsys, "--task-model", "A", "--out", "a.json")[0] == 0
    fresh_cost = models.requests("A")
    models.reset()
    code, out, err = compile_cli(capsys, "--task-model", "B", "--out", "b.json")
    assert code == 0, err
    assert models.requests("B") == fresh_cost, "model B reused scores model A stored"
    a, b = saved_report("a.json"), saved_report("b.json")
    assert a.run_name != b.run_name and b.task_model == "scripted/B"
    assert a.seed_dev_score != b.seed_dev_score  # B's own scores, not A's


def test_a_metric_change_in_a_program_file_is_a_new_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    models = Models(monkeypatch)
    source = tmp_path / "prog.py"
    program = (
        "import dspy\n"
        "program = dspy.Predict(dspy.Signature('review -> sentiment', 'Classify.'))\n"
        "def metric(example, prediction, trace=None):\n"
        "    return prediction.sentiment.strip().lower() == example.sentiment\n"
    )
    source.write_text(program)
    args = ["compile", "--program", str(source), "--train", str(REVIEWS), *SMALL_APE]
    assert main([*args, "--out", "one.json"]) == 0
    first = models.requests("local")
    models.reset()
    assert main([*args, "--out", "again.json"]) == 0
    assert models.requests("local") == 0, "the same metric must reuse every stored score"
    source.write_text(program.replace("== example.sentiment", "!= example.sentiment"))
    assert main([*args, "--out", "two.json"]) == 0
    capsys.readouterr()
    assert models.requests("local") == first, "an edited metric reused the old metric's scores"
    assert saved_report("one.json").run_name != saved_report("two.json").run_name


def test_a_label_change_is_a_new_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    models = Models(monkeypatch)
    assert compile_cli(capsys, "--out", "two.json")[0] == 0
    first = models.requests("local")
    models.reset()
    code = main(["compile", "--program", "classify", "--signature", "review -> sentiment", "--labels",
                 "positive,negative,neutral", "--train", str(REVIEWS), *SMALL_APE, "--out", "three.json"])
    capsys.readouterr()
    assert code == 0
    assert models.requests("local") == first


def test_a_prompt_model_change_does_not_merge_the_old_candidates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Models(monkeypatch)
    assert compile_cli(capsys, "--prompt-model", "P1", "--out", "p1.json")[0] == 0
    assert compile_cli(capsys, "--prompt-model", "P2", "--out", "p2.json")[0] == 0
    texts = [c.instructions["predict"] for c in saved_report("p2.json").candidates]
    assert any("(P2," in text for text in texts)
    assert not any("(P1," in text for text in texts), "candidates of the P1 run were merged into the P2 run"


def test_a_named_run_with_another_identity_is_refused_naming_what_differs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    models = Models(monkeypatch)
    assert compile_cli(capsys, "--task-model", "A", "--run-name", "mine", "--out", "a.json")[0] == 0
    models.reset()
    code, _, err = compile_cli(capsys, "--task-model", "B", "--run-name", "mine", "--out", "b.json")
    assert code == 1
    assert "task_model.model: 'scripted/B' here, 'scripted/A' stored" in err
    assert models.requests("B") == 0


# ---- exact rerun and resume --------------------------------------------------------------------------
def ape(task_lm, prompt_lm, tmp_path, **kwargs):
    return APE(metric=exact_match("sentiment"), task_lm=task_lm, prompt_lm=prompt_lm, runs_root=tmp_path / "runs",
               progress=False, num_subsamples=2, num_prompts_per_subsample=4, mc_rounds=1, retry_wait=0, **kwargs)


def proposer():
    counter = iter(range(10_000))
    return lambda messages: f"Tell whether the review is positive or negative, take {next(counter) % 6}."


def test_rerunning_a_finished_compile_makes_no_lm_call_and_gives_the_same_report(tmp_path):
    program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify."))
    data = cuecard.datasets.reviews()
    task, prompt = scripted_lm(keyword_sentiment, name="scripted/task"), scripted_lm(proposer(), name="scripted/prompt")
    first = ape(task, prompt, tmp_path).compile(program, trainset=data[:20], valset=data[20:]).cuecard_report
    calls = len(task.engine.requests) + len(prompt.engine.requests)
    again = ape(task, prompt, tmp_path).compile(program, trainset=data[:20], valset=data[20:]).cuecard_report
    assert len(task.engine.requests) + len(prompt.engine.requests) == calls, "the rerun called an LM"
    assert again.outcome() == first.outcome()
    assert again.usage == first.usage  # what the run spent, over every process
    assert again.process.model_calls == 0 and again.process.evaluations_computed == 0


def test_a_compile_stopped_by_its_cap_continues_with_a_larger_cap_and_stores_its_scores(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    models = Models(monkeypatch)
    code, out, _ = compile_cli(capsys, "--max-calls", "25", "--out", "capped.json")
    assert code == 0 and "search stopped: a cap was reached" in out
    name = saved_report("capped.json").run_name
    storage = f"sqlite:///{tmp_path / 'runs' / name / 'study.db'}"

    def stored_scores():
        study = optuna.load_study(study_name=name, storage=storage)
        return sum(1 for t in study.get_trials() for key in t.user_attrs if key.startswith("s."))

    def status():
        return optuna.load_study(study_name=name, storage=storage).user_attrs["cuecard.status"]["state"]

    assert status() == "stopped"
    at_25 = stored_scores()
    assert compile_cli(capsys, "--max-calls", "50", "--out", "capped.json")[0] == 0
    assert stored_scores() > at_25, "the continued run could not store its new scores"
    assert compile_cli(capsys, "--out", "capped.json")[0] == 0
    assert status() == "finished"
    assert main(["runs"]) == 0
    assert "finished" in capsys.readouterr().out
    # the same compile run uncapped from the start ends with the same outcome
    models.reset()
    models.proposals = 0
    assert compile_cli(capsys, "--run-dir", "fresh", "--out", "fresh.json")[0] == 0
    assert saved_report("fresh.json").outcome() == saved_report("capped.json").outcome()


def test_a_killed_compile_resumes_exactly(tmp_path):
    """A compile in its own process, killed midway, then rerun: no stored evaluation is computed again,
    and the outcome equals an uninterrupted run's."""
    worker = HERE / "compile_worker.py"
    reference = tmp_path / "reference.json"
    subprocess.run([sys.executable, str(worker), str(tmp_path / "reference"), str(reference), "0"], check=True, timeout=300)
    run_dir, out = tmp_path / "killed", tmp_path / "killed.json"
    process = subprocess.Popen([sys.executable, str(worker), str(run_dir), str(out), "0.02"], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "compiling"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run_dir / "evaluated.log").exists():
        time.sleep(0.1)
    time.sleep(1.0)
    assert process.poll() is None, "the compile finished before it could be killed"
    process.kill()
    process.wait()
    before = set((run_dir / "evaluated.log").read_text().splitlines())
    assert before
    subprocess.run([sys.executable, str(worker), str(run_dir), str(out), "0"], check=True, timeout=300)
    after = (run_dir / "evaluated.log").read_text().splitlines()
    assert len(after) == len(set(after)), "an evaluation stored before the kill was computed again"
    assert json.loads(out.read_text())["outcome"] == json.loads(reference.read_text())["outcome"]


# ---- failures are not scores ---------------------------------------------------------------------------
def test_task_failures_are_stored_as_failures_named_and_retried_by_the_next_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    calls = {"n": 0}

    def every_fifth(messages):
        if not is_proposal_request(messages):
            calls["n"] += 1
            if calls["n"] % 5 == 0:
                raise ConnectionError("provider unavailable")

    models = Models(monkeypatch, flaky={"local": every_fifth})
    code, out, _ = compile_cli(capsys, "--out", "flaky.json")
    assert code == 0
    report = saved_report("flaky.json")
    failed = report.failures["program: ConnectionError"]
    assert failed >= 5 and f"failures: program: ConnectionError (x{failed})" in out
    study = optuna.load_study(study_name=report.run_name, storage=report.storage)
    failures = [(t.number, k) for t in study.get_trials() for k in t.user_attrs if k.startswith("f.")]
    assert len(failures) == failed
    assert all(f"s.{k[2:]}" not in study.trials[n].user_attrs for n, k in failures), "a failure was stored as a score"
    models.flaky.clear()  # the provider is back
    models.reset()
    assert compile_cli(capsys, "--out", "flaky.json")[0] == 0
    assert models.requests("local") == failed, "the rerun must retry exactly the failed evaluations"
    assert saved_report("flaky.json").failures == {}


def test_prompt_model_failures_are_retried_then_skipped_and_counted_never_a_crash(tmp_path):
    program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify."))
    data = cuecard.datasets.reviews()
    attempts = {"n": 0}

    def flaky_proposer(messages):
        attempts["n"] += 1
        if attempts["n"] in (2, 3, 4) or attempts["n"] % 7 == 0:  # the 2nd proposal fails 3 times in a row
            raise ConnectionError("proposer overloaded")
        return f"Tell whether the review is positive or negative, take {attempts['n']}."

    task, prompt = scripted_lm(keyword_sentiment, name="scripted/task"), scripted_lm(flaky_proposer, name="scripted/prompt")
    compiled = ape(task, prompt, tmp_path, prompt_retries=2).compile(program, trainset=data[:20], valset=data[20:])
    report = compiled.cuecard_report
    assert report.failures == {"prompt model: ConnectionError": 1}  # retried twice, then skipped
    assert report.prompt_usage.errors == 3 + attempts["n"] // 7  # every failed attempt is counted
    assert len({c.instructions["self"] for c in report.candidates if c.origin.startswith("induced")}) == 7


def test_too_many_failures_stop_the_compile_with_their_reasons(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def down(messages):
        if not is_proposal_request(messages):
            raise TimeoutError("gateway timeout")

    Models(monkeypatch, flaky={"local": down})
    code, _, err = compile_cli(capsys, "--max-failure-share", "0.2", "--out", "x.json")
    assert code == 1
    assert "failed, more than the allowed 20%" in err and "program: TimeoutError" in err
    assert not (tmp_path / "x.json").exists()
    assert main(["runs"]) == 0
    assert "failed" in capsys.readouterr().out


def test_a_hanging_call_is_abandoned_alone_and_queued_calls_do_not_time_out():
    finished = threading.Event()

    def reply(messages):
        if "r3" in messages[-1]["content"]:
            time.sleep(3)
            finished.set()
        else:
            time.sleep(0.2)
        return "positive"

    program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify."))
    lm = scripted_lm(reply, local=False)
    lm("warm up")  # the first call of a remote-like LM checks its credentials (imports litellm)
    evaluator = Evaluator(program, exact_match("sentiment"), task_lm=lm, adapter=cuecard.PlainAdapter(),
                          num_threads=2, timeout=1.0)
    data = [dspy.Example(review=f"r{i}", sentiment="positive").with_inputs("review") for i in range(10)]
    results = evaluator.run({"self": "Classify."}, list(enumerate(data)))
    assert not finished.is_set(), "the run waited for the hung call"
    assert [r.index for r in results if r.failed] == [3]
    assert results[3].error.startswith("timeout")


# ---- a saved file is data ------------------------------------------------------------------------------
def test_a_saved_file_cannot_redirect_the_model_or_the_key(tmp_path, monkeypatch, capsys):
    """The file names an endpoint (config.api_base) and a model (lm): both are ignored; the user's
    model, endpoint and key are used, and the file's endpoint receives nothing."""
    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "cache"))  # DSPy's cache key ignores api_base
    cuecard.configure_cache(tmp_path / "cache")
    def answer(label):
        return lambda messages: f"[[ ## sentiment ## ]]\n{label}\n\n[[ ## completed ## ]]"

    with StubServer(answer("negative")) as user, StubServer(answer("positive")) as attacker:
        program = cuecard.programs.Classify("review -> sentiment", labels=["positive", "negative"])
        path = cuecard.save(program, tmp_path / "p.json")
        state = json.loads(path.read_text())
        state["predict"]["config"] = {"api_base": attacker.url, "api_key": "sk-attacker"}
        state["predict"]["lm"] = {"model": "openai/attacker", "api_base": attacker.url}
        path.write_text(json.dumps(state))
        monkeypatch.setenv("OPENAI_API_KEY", "sk-user")
        inputs = tmp_path / "in.jsonl"
        inputs.write_text('{"review": "The soup was cold."}\n')
        code = main(["run", str(path), "--input", str(inputs), "--task-model", "openai/stub", "--api-base", user.url])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert attacker.connections == 0, "the file's endpoint was called"
        assert user.requests == 1
        assert json.loads(captured.out)["sentiment"] == "negative"
        assert "ignored ['config', 'lm']" in captured.err


def test_loading_checks_the_types_of_what_it_keeps(tmp_path):
    program = cuecard.programs.Classify("review -> sentiment", labels=["positive", "negative"])
    path = cuecard.save(program, tmp_path / "p.json")
    state = json.loads(path.read_text())
    state["predict"]["signature"]["instructions"] = 12345
    path.write_text(json.dumps(state))
    with pytest.raises(SavedProgramError, match=r"predictor 'predict': signature.instructions must be a string, found int"):
        cuecard.load(path)
    state["predict"]["signature"]["instructions"] = "Classify."
    state["predict"]["demos"] = [{"review": "ok", "sentiment": {"__class__": "os.system"}}, 3]
    path.write_text(json.dumps(state))
    with pytest.raises(SavedProgramError, match="demos must be a list of JSON objects"):
        cuecard.load(path)
    state["predict"]["demos"] = []
    state["predict"]["lm"] = {"model": "openai/gpt-4o"}
    path.write_text(json.dumps(state))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = cuecard.load(path)
    assert loaded.predict.lm is None
    assert [w.category for w in caught] == [SavedFileWarning]


# ---- bad input is refused before any LM call ----------------------------------------------------------------
@pytest.mark.parametrize(
    "extra,code,message",
    [
        (["--out", "o.txt"], 2, "--out o.txt: a compiled program is saved as a .json file"),
        (["--max-calls", "0"], 2, "argument --max-calls: 0 is not a positive number"),
        (["--max-calls", "-1"], 2, "argument --max-calls: -1 is not a positive number"),
        (["--policy", "bogus"], 2, "argument --policy: invalid choice: 'bogus'"),
        (["--set", "num_prompt=3"], 2, "num_prompt: not a setting of APE"),
        (["--signature", "what is 1+1 -> answer"], 2, "--signature 'what is 1+1 -> answer': not a DSPy signature"),
    ],
)
def test_bad_input_is_named_with_the_right_exit_code_before_any_lm_call(tmp_path, monkeypatch, capsys, extra, code, message):
    monkeypatch.chdir(tmp_path)
    models = Models(monkeypatch)
    argv = ["compile", *CLASSIFY, "--train", str(REVIEWS), *SMALL_APE, "--out", "x.json", *extra]
    try:
        result = main(argv)
    except SystemExit as exc:
        result = exc.code
    assert result == code
    assert message in capsys.readouterr().err
    assert models.requests("local") == 0


def test_an_input_longer_than_the_model_context_is_refused_before_any_call(tmp_path, monkeypatch, capsys, local_lm):
    monkeypatch.chdir(tmp_path)
    rows = [json.loads(line) for line in REVIEWS.read_text().splitlines()]
    rows[7]["review"] = "very long " * 1_000_000
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    before = local_lm.meter.usage.calls
    monkeypatch.setattr(cuecard, "LM", lambda spec, **kw: local_lm)
    code = main(["compile", *CLASSIFY, "--train", str(data), *SMALL_APE, "--out", "x.json"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"--train {data}, example 8: the prompt takes" in err and "more than the 2048-token context" in err
    line = tmp_path / "line.jsonl"
    line.write_text(json.dumps({"review": rows[7]["review"]}) + "\n")
    cuecard.save(cuecard.programs.Classify("review -> sentiment", labels=["positive", "negative"]), tmp_path / "p.json")
    code = main(["run", "p.json", "--input", str(line)])
    assert code == 1 and f"{line}, line 1: the prompt takes" in capsys.readouterr().err
    assert local_lm.meter.usage.calls == before


def test_the_run_identity_and_the_record_keep_token_caps_though_their_names_say_token():
    from cuecard.clients.record import request_key

    def identity(**settings):
        return cuecard.identity.lm_identity(cuecard.LM("openai/gpt-4o-mini", api_key="sk-secret-value", **settings))

    assert identity(max_tokens=10) != identity(max_tokens=256) and identity(max_tokens=10)["settings"]["max_tokens"] == 10
    assert "sk-secret-value" not in json.dumps(identity(max_tokens=10))
    adapter = cuecard.identity.adapter_identity
    assert adapter(cuecard.PlainAdapter(short_answer_tokens=100)) != adapter(cuecard.PlainAdapter())
    assert request_key("m", {"max_tokens": 10, "api_key": "a"}) != request_key("m", {"max_tokens": 48, "api_key": "a"})
    assert request_key("m", {"max_tokens": 10, "api_key": "a"}) == request_key("m", {"max_tokens": 10, "api_key": "b"})


def test_the_run_identity_leaves_out_keys():
    lm = cuecard.LM("openai/gpt-4o-mini", api_key="sk-secret-value", api_base="http://127.0.0.1:1/v1")
    identity = cuecard.identity.lm_identity(lm)
    assert "sk-secret-value" not in json.dumps(identity)
    assert identity["settings"]["api_base"] == "http://127.0.0.1:1/v1"
    assert os.environ.get("OPENAI_API_KEY", "") not in json.dumps(identity) or not os.environ.get("OPENAI_API_KEY")
