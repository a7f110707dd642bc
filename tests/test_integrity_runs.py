"""Runs you can trust, round 3: a metric whose behaviour changed is noticed before any stored score is
reused; ``cuecard runs`` describes the stored state as it is; ``--budget`` runs stay within their
printed estimate; secrets in storage and endpoint URLs never leave the process.

Scripted models go through the real ``cuecard`` command (``main``) and the Python API, on real SQLite
files (and a real PostgreSQL server where its binaries are installed).
"""

import json
import sys
from pathlib import Path

import cuecard
import dspy
import optuna
import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.command.cli import main
from cuecard.engine.evaluate import ExampleScore
from cuecard.engine.study import STATUS, Engine, Scorer
from cuecard.errors import RunConfigMismatch
from cuecard.teleprompters import APE

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from test_trust import REVIEWS, SMALL_APE, Models, keyword_sentiment, proposer, saved_report  # noqa: E402

PROGRAM = (
    "import dspy\n"
    "THRESH = {thresh}\n"
    "program = dspy.Predict(dspy.Signature('review -> sentiment', 'Classify.'))\n"
    "def metric(example, prediction, trace=None):\n"
    "    return len(prediction.sentiment) >= THRESH and prediction.sentiment == example.sentiment\n"
)


# ---- 1: a metric whose behaviour changed ---------------------------------------------------------------
def test_a_metric_reading_an_edited_module_constant_refuses_the_stored_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    models = Models(monkeypatch)
    source = tmp_path / "prog.py"
    source.write_text(PROGRAM.format(thresh=1))
    args = ["compile", "--program", str(source), "--train", str(REVIEWS), *SMALL_APE]
    assert main([*args, "--out", "one.json"]) == 0
    first = saved_report("one.json")
    assert first.seed_dev_score > 0
    models.reset()
    assert main([*args, "--out", "same.json"]) == 0, "an unchanged metric must reuse its run"
    assert models.requests("local") == 0
    capsys.readouterr()

    source.write_text(PROGRAM.format(thresh=100))  # the metric's code is the same; what it reads is not
    models.reset()
    code = main([*args, "--out", "two.json"])
    err = capsys.readouterr().err
    assert code == 1, "a changed metric reused the stored scores"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "the metric 'metric' no longer gives the scores stored" in lines[0]
    assert "dev example" in lines[0] and "stored 1, now 0" in lines[0] and "--new-run" in lines[0]
    assert models.requests("local") == 0 and not (tmp_path / "two.json").exists()

    assert main([*args, "--new-run", "--out", "two.json"]) == 0
    second = saved_report("two.json")
    assert models.requests("local") > 0 and second.run_name.startswith(first.run_name + "-")
    assert second.seed_dev_score == 0.0 and second.best.instructions == second.seed_instructions
    assert main([*args, "--run-name", second.run_name, "--out", "three.json"]) == 0, "the new run resumes by name"


def test_a_metric_class_source_is_read_once_and_survives_the_ast_race_of_python_3_11(monkeypatch):
    """CPython 3.11.7 can fail a parse beside another thread's with this SystemError (seen in CI, from
    inspect.getsource of a metric class); the identity retries the read, and reads each object once."""
    import inspect

    from cuecard import identity

    class LengthMetric:
        def __call__(self, example, prediction, trace=None):
            return len(prediction.sentiment) > 0

    real_getsource, calls = inspect.getsource, []

    def racing_getsource(obj):
        calls.append(obj)
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=153, after=130)")
        return real_getsource(obj)

    monkeypatch.setattr(inspect, "getsource", racing_getsource)
    first = identity.metric_identity(LengthMetric())
    assert identity.metric_identity(LengthMetric()) == first
    assert calls.count(LengthMetric) == 2, "one failed read, one retry, then the stored source"
    assert "return len(prediction.sentiment) > 0" in identity._source(LengthMetric)

    def broken_getsource(obj):
        raise SystemError("another error")

    monkeypatch.setattr(inspect, "getsource", broken_getsource)
    with pytest.raises(SystemError, match="another error"):  # only the race is retried
        identity._source(type("Unread", (), {}))


def test_a_metric_reading_a_file_is_checked_by_behaviour_through_the_python_api(tmp_path):
    program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify."))
    data = cuecard.datasets.reviews()
    wanted = tmp_path / "wanted.txt"
    wanted.write_text("positive negative")

    def metric(example, prediction, trace=None):
        return prediction.sentiment in wanted.read_text().split() and prediction.sentiment == example.sentiment

    def compile_(**kwargs):
        task, prompt = scripted_lm(keyword_sentiment, name="scripted/task"), scripted_lm(proposer(), name="scripted/prompt")
        teleprompter = APE(metric=metric, task_lm=task, prompt_lm=prompt, runs_root=tmp_path / "runs", progress=False,
                           num_subsamples=2, num_prompts_per_subsample=3, **kwargs)
        report = teleprompter.compile(program, trainset=data[:20], valset=data[20:]).cuecard_report
        return report, len(task.engine.requests)

    first, _ = compile_()
    compile_(metric_version="v1")
    wanted.write_text("neutral")
    with pytest.raises(RunConfigMismatch, match=r"the metric '.*metric' no longer gives the scores stored in it"):
        compile_()
    with pytest.raises(RunConfigMismatch, match="no longer gives"):  # a version names the metric; the check still runs
        compile_(metric_version="v1")
    again, calls = compile_(fresh=True)
    assert calls > 0 and again.run_name != first.run_name and again.seed_dev_score == 0.0
    wanted.write_text("positive negative")
    assert compile_()[1] == 0, "with the metric as it was, the stored run is reused"


def test_a_metric_that_calls_a_model_is_not_rescored_and_its_rerun_makes_no_call(tmp_path):
    program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify."))
    data = cuecard.datasets.reviews()[:12]
    judge = scripted_lm(lambda messages: "yes", name="scripted/judge")

    def judged(example, prediction, trace=None):
        return judge(f"Is {prediction.sentiment} right for {example.review}?")[0] == "yes"

    task = scripted_lm(keyword_sentiment, name="scripted/task")
    scorer = cuecard.engine.evaluate.Evaluator(program, judged, task_lm=task)
    engine = Engine(scorer, data, name="judged", storage=f"sqlite:///{tmp_path / 'j.db'}", progress=False)
    engine.evaluate(engine.add_candidate({"self": "Classify."}), range(len(data)))
    asked = len(judge.engine.requests)
    again = Engine(scorer, data, name="judged", storage=f"sqlite:///{tmp_path / 'j.db'}", progress=False)
    assert len(judge.engine.requests) == asked, "the check called the metric's model"
    assert again.evaluate(again.add_candidate({"self": "Classify."}), range(len(data))) == [1.0] * len(data)


def test_stored_predictions_keep_what_rebuilds_them_exactly():
    from cuecard.engine.study import _stored_score

    long = "x" * 5000
    kept = _stored_score(ExampleScore(index=0, score=1.0, output={"a": long}, prediction={"a": long}))
    assert kept.output["a"].endswith("...") and kept.rebuilt() == {"a": long}
    typed = _stored_score(ExampleScore(index=0, score=1.0, output={"n": "3"}, prediction={"n": 3}))
    assert typed.rebuilt() == {"n": 3}
    plain = _stored_score(ExampleScore(index=0, score=1.0, output={"a": "yes"}, prediction={"a": "yes"}))
    assert plain.prediction is None and plain.rebuilt() == {"a": "yes"}  # kept once
    assert _stored_score(ExampleScore(index=0, score=1.0, output={"a": "obj"})).rebuilt() is None


# ---- 5: `cuecard runs` says what is stored -----------------------------------------------------------------
class FailsOnce(Scorer):
    """A scorer that fails example ``index`` the first time it is asked, and scores 1 otherwise."""

    def __init__(self, index):
        self.index, self.failed = index, False

    def run(self, candidate, examples):
        results = []
        for index, _ in examples:
            if index == self.index and not self.failed:
                self.failed = True
                results.append(ExampleScore(index=index, score=0.0, error="program: ConnectionError: down"))
            else:
                results.append(ExampleScore(index=index, score=1.0, output={"a": "yes"}))
        return results


def test_cuecard_runs_counts_the_failures_the_trials_still_hold(tmp_path, capsys):
    data = [dspy.Example(q=str(i), a="yes").with_inputs("q") for i in range(4)]
    storage = f"sqlite:///{tmp_path / 'runs' / 'shared' / 'study.db'}"
    scorer = FailsOnce(2)
    first = Engine(scorer, data, name="shared", storage=storage, progress=False, identity={"k": 1})
    second = Engine(scorer, data, name="shared", storage=storage, progress=False, identity={"k": 1})
    first.evaluate(first.add_candidate({"self": "Answer."}), range(4))  # example 2 fails in the first worker
    second.evaluate(second.add_candidate({"self": "Answer."}), range(4))  # the second retries it: a score
    second.finish()
    first.finish()  # the first worker ends last
    study = optuna.load_study(study_name="shared", storage=storage)
    trial = study.get_trials()[0]
    assert "s.2" in trial.user_attrs
    assert main(["runs", "--run-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "left open" not in out, out
    assert (study.user_attrs[STATUS].get("reason") or "") == ""


def test_cuecard_runs_names_failures_still_open(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    calls = {"n": 0}

    def every_fifth(messages):
        if "teacher gave a student" not in messages[-1]["content"]:
            calls["n"] += 1
            if calls["n"] % 5 == 0:
                raise ConnectionError("provider unavailable")

    models = Models(monkeypatch, flaky={"local": every_fifth})
    classify = ["--program", "classify", "--signature", "review -> sentiment", "--labels", "positive,negative"]
    assert main(["compile", *classify, "--train", str(REVIEWS), *SMALL_APE, "--out", "f.json"]) == 0
    failed = saved_report("f.json").failures["program: ConnectionError"]
    capsys.readouterr()
    assert main(["runs"]) == 0
    assert f"{failed} failed evaluation(s) left open" in capsys.readouterr().out
    models.flaky.clear()
    assert main(["compile", *classify, "--train", str(REVIEWS), *SMALL_APE, "--out", "f.json"]) == 0
    capsys.readouterr()
    assert main(["runs"]) == 0
    assert "left open" not in capsys.readouterr().out


# ---- 6: a --budget run stays within its printed estimate -----------------------------------------------
class Engineers:
    """Scripted models behind ``cuecard.LM(spec)``: "P" proposes a new "Level N" instruction on every call, in
    the tags its request asks for; "T" answers review i right when its prompt says "Level N" and i's hash
    % 10 < N, so better levels score better and the search goes on as long as its settings let it."""

    def __init__(self, monkeypatch):
        import itertools

        self.counter = itertools.count(1)
        monkeypatch.setattr(cuecard, "LM", lambda spec, **kwargs: scripted_lm(
            self.propose if spec == "P" else self.answer, name=f"scripted/{spec}"))

    def propose(self, messages):
        text, n = "\n".join(m["content"] for m in messages), next(self.counter)
        if "<INS>" in text:
            return f"<INS>Level {n % 10} answer, take {n}.</INS>"
        if "<START>" in text:
            return f"<START>Level {n % 10} answer, take {n}.<END>"
        return f"Level {n % 10} answer, take {n}."

    @staticmethod
    def answer(messages):
        import re
        import zlib

        level = re.search(r"Level (\d+)", "\n".join(m["content"] for m in messages))
        if level and zlib.crc32(messages[-1]["content"].encode()) % 10 < int(level.group(1)):
            return keyword_sentiment(messages)
        return "positive"


@pytest.mark.parametrize("preset", ["light", "medium"])  # heavy (2400 requests a method) takes minutes here
@pytest.mark.parametrize("method", ["ape", "protegi", "opro", "pe2"])  # BPO cannot estimate before running
def test_a_budget_run_spends_no_more_than_its_printed_estimate(tmp_path, monkeypatch, capsys, preset, method):
    monkeypatch.chdir(tmp_path)
    Engineers(monkeypatch)
    args = ["compile", "--program", "classify", "--signature", "review -> sentiment", "--labels", "positive,negative",
            "--train", str(REVIEWS), "--teleprompter", method, "--budget", preset, "--task-model", "T",
            "--prompt-model", "P", "--quiet", "--out", "p.json"]
    assert main([*args, "--estimate"]) == 0
    printed = capsys.readouterr().out
    estimated = int(printed.split("LM requests at most: ")[1].split()[0])
    assert main(args) == 0
    spent = saved_report("p.json").usage.calls  # every request the run asked for, as the run recorded it
    assert spent <= estimated, f"{method} on {preset}: {spent} requests against an estimate of {estimated}: {printed}"


# ---- 7: secrets in storage and endpoint URLs ------------------------------------------------------------
STORAGE_PASSWORD = "Pg-s3cret-9f2"
API_PASSWORD = "api-pass-77c1"
API_KEY = "sk-query-4d8e"


def test_redact_url_hides_passwords_and_secret_parameters_and_keeps_the_endpoint():
    from cuecard import redact_text, redact_url

    assert redact_url(f"postgresql://cuecard:{STORAGE_PASSWORD}@db:5432/runs") == "postgresql://cuecard:***@db:5432/runs"
    shown = redact_url(f"https://bob:{API_PASSWORD}@proxy.example.org/v1?api_key={API_KEY}&sig=x&token=y&region=eu")
    assert shown == "https://bob:***@proxy.example.org/v1?api_key=***&sig=***&token=***&region=eu"
    assert redact_url(f"https://{API_KEY}@host/v1") == "https://***@host/v1"
    assert redact_url("sqlite:////tmp/runs/study.db") == "sqlite:////tmp/runs/study.db"
    assert API_KEY not in redact_text(f"cannot reach 'http://h/v1?key={API_KEY}': refused")
    from cuecard.identity import lm_identity

    def endpoint(password):
        return lm_identity(cuecard.LM("openai/stub", api_base=f"http://u:{password}@127.0.0.1:9/v1?key={password}",
                                      api_key="sk-test"))

    assert endpoint("pw-first-1") == endpoint("pw-second-2"), "the run identity changed with the password alone"
    assert "pw-first-1" not in json.dumps(endpoint("pw-first-1"))


def stub_reply(messages):
    if "teacher gave a student" in messages[-1]["content"]:
        return "Say whether the review is positive or negative."
    return f"[[ ## sentiment ## ]]\n{keyword_sentiment(messages)}\n\n[[ ## completed ## ]]"  # DSPy's chat layout


def written_text(folder):
    """Every file under ``folder`` as text (SQLite's pages included), for grepping."""
    return "\n".join(path.read_bytes().decode("utf-8", "replace") for path in Path(folder).rglob("*") if path.is_file())


def assert_no_secret(secrets, *texts):
    for secret in secrets:
        for text in texts:
            assert secret not in text, f"{secret!r} leaked: ...{text[max(0, text.find(secret) - 120):text.find(secret) + 40]}..."


def test_credentials_in_the_api_base_never_reach_a_file_or_the_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "cache"))
    from cuecard.clients.testing import StubServer

    with StubServer(stub_reply) as server:
        base = server.url.replace("http://", f"http://bob:{API_PASSWORD}@") + f"?key={API_KEY}"
        args = ["compile", "--program", "classify", "--signature", "review -> sentiment", "--labels", "positive,negative",
                "--train", str(REVIEWS), "--teleprompter", "ape", "--set", "num_subsamples=1",
                "--set", "num_prompts_per_subsample=2", "--task-model", "openai/stub", "--api-base", base, "--threads", "2"]
        code = main([*args, "--out", "out.json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert server.requests > 0
        assert main(["report", "out.json", "--out-dir", "report"]) == 0
        report_out = capsys.readouterr()
        # a wrong run name with another identity: the error names the run, never the secret
        code = main([*args, "--set", "seed=3", "--run-name", saved_report("out.json").run_name, "--out", "bad.json"])
        refused = capsys.readouterr()
        assert code == 1
    with StubServer(stub_reply) as dead:
        closed = dead.url
    code = main(["compile", "--program", "classify", "--signature", "review -> sentiment", "--labels", "positive,negative",
                 "--train", str(REVIEWS), "--task-model", "openai/stub", "--max-failure-share", "0.2", "--threads", "4",
                 "--timeout", "1", "--instructions", "Label the review.",  # new prompts: no cached answer
                 "--api-base", closed.replace("http://", f"http://bob:{API_PASSWORD}@") + f"?api_key={API_KEY}",
                 "--set", "num_subsamples=1", "--set", "num_prompts_per_subsample=1", "--out", "down.json"])
    down = capsys.readouterr()
    assert code == 1
    assert_no_secret(
        [API_PASSWORD, API_KEY],
        written_text(tmp_path / "runs"), (tmp_path / "out.json").read_text(), (tmp_path / "report" / "report.html").read_text(),
        out, err, report_out.out, report_out.err, refused.out, refused.err, down.out, down.err,
    )
    study = optuna.load_study(study_name=saved_report("out.json").run_name, storage=saved_report("out.json").storage)
    assert "***" in json.dumps(study.user_attrs["cuecard.run"]), "the endpoint is kept, redacted"


def test_a_password_in_the_storage_url_never_reaches_a_file_or_the_output(tmp_path, monkeypatch, capsys):
    from postgres import PostgresServer, missing_reason

    reason = missing_reason()
    if reason:
        pytest.skip(f"no PostgreSQL server can be started here: {reason}")
    monkeypatch.chdir(tmp_path)
    Models(monkeypatch)
    with PostgresServer() as server:
        storage = server.url.replace("postgres@", f"postgres:{STORAGE_PASSWORD}@")  # the server trusts 127.0.0.1
        args = ["compile", "--program", "classify", "--signature", "review -> sentiment", "--labels", "positive,negative",
                "--train", str(REVIEWS), *SMALL_APE[:-1], "--storage", storage, "--run-name", "shared-v1"]
        code = main([*args, "--out", "out.json"])
        first = capsys.readouterr()
        assert code == 0, first.err
        assert main(["report", "out.json", "--out-dir", "report"]) == 0
        report_out = capsys.readouterr()
        code = main([*args, "--set", "seed=4", "--out", "bad.json"])  # another identity under the same name
        refused = capsys.readouterr()
        assert code == 1 and "shared-v1" in refused.err
        unreachable = storage.replace(f":{server.port}/", ":1/")
        code = main([*args, "--storage", unreachable, "--out", "none.json"])
        closed = capsys.readouterr()
        assert code == 1 and "postgres:***@127.0.0.1:1/" in closed.err
        import psycopg

        stored = []
        with psycopg.connect(server.url) as connection:
            tables = [row[0] for row in connection.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
            for table in tables:
                stored += [row[0] for row in connection.execute(f'SELECT t::text FROM "{table}" t')]
        assert any("shared-v1" in row for row in stored)  # the study is there, and was searched
    assert_no_secret(
        [STORAGE_PASSWORD],
        "\n".join(stored), (tmp_path / "out.json").read_text(), (tmp_path / "report" / "report.html").read_text(),
        written_text(tmp_path), first.out, first.err, report_out.out, report_out.err, refused.out, refused.err,
        closed.out, closed.err,
    )
    assert saved_report("out.json").storage == storage.replace(STORAGE_PASSWORD, "***")
