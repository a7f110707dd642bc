"""Bad inputs are refused (or set aside and said so) before any LM call; model failures are counted, not crashes.

Issue 24, items 2-4 and 8-13: labels outside ``--labels``, duplicate examples and train/dev overlap, data
files with a byte-order mark, run names that are paths, unparseable answers in ``evaluate``/``run``
(through a real OpenAI-compatible server on 127.0.0.1), deeply nested and oversized saved files, the
identity-mismatch message, and Ctrl-C in the benchmark harness. Scripted models go through the real
``cuecard`` command (``main``).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cuecard
import cuecard.programs
import dspy
import pytest
from cli_run import run_main
from cuecard.clients.testing import StubServer
from cuecard.datasets import example_key, load_examples
from cuecard.errors import DataWarning, SavedProgramError, TeleprompterConfigError
from cuecard.identity import RunIdentity
from cuecard.metrics import exact_match
from cuecard.teleprompters import APE
from test_trust import CLASSIFY, REVIEWS, SMALL_APE, Models

REPO = Path(__file__).resolve().parents[1]
ROWS = [json.loads(line) for line in REVIEWS.read_text().splitlines()]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ---- 2: labels outside --labels -----------------------------------------------------------------------
def test_a_label_outside_labels_is_refused_naming_file_line_and_the_labels_found(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    models = Models(monkeypatch)
    rows = [dict(row) for row in ROWS]
    rows[5]["sentiment"] = "neutral"
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    code, _, err = run_main(["compile", *CLASSIFY, "--train", str(data), *SMALL_APE, "--out", "x.json"], capsys)
    assert code == 1
    assert f"{data}, line 6: sentiment 'neutral' is not one of the labels positive, negative" in err
    assert "(the file's sentiment values: negative, neutral, positive)" in err
    assert err.count("\n") == 1
    assert models.requests("local") == 0 and not Path("x.json").exists()


def test_labels_that_match_none_of_the_data_are_refused_before_any_proposal(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    models = Models(monkeypatch)
    argv = ["compile", "--program", "classify", "--signature", "review -> sentiment", "--labels", "pos,neg",
            "--train", str(REVIEWS), *SMALL_APE, "--out", "x.json"]
    code, _, err = run_main(argv, capsys)
    assert code == 1
    assert f"{REVIEWS}, line 1: sentiment 'positive' is not one of the labels pos, neg" in err
    assert "(the file's sentiment values: negative, positive)" in err
    assert models.requests("local") == 0 and models.proposals == 0


def test_labels_are_compared_as_the_metric_compares_them(tmp_path):
    rows = [{"review": "fine", "sentiment": "Positive"}, {"review": "awful", "sentiment": " negative."}]
    data = write_jsonl(tmp_path / "t.jsonl", rows)
    examples = load_examples(data, ["review"], required=["sentiment"], labels={"sentiment": ["positive", "negative"]})
    assert [e.sentiment for e in examples] == ["Positive", " negative."]


# ---- 3: duplicates and train/dev overlap ------------------------------------------------------------
def inputs_of(examples):
    return {example_key(example, inputs_only=True) for example in examples}


def test_the_split_never_puts_one_example_in_both_train_and_dev():
    data = [dspy.Example(**row).with_inputs("review") for row in ROWS]
    doubled = data + [dspy.Example(**row).with_inputs("review") for row in ROWS]
    for seed in range(10):
        train, dev = APE(metric=exact_match("sentiment"), task_lm=None, seed=seed).split(doubled, None)
        assert not inputs_of(train) & inputs_of(dev), f"seed {seed}: an example sits in train and dev"
        assert len(train) + len(dev) == len(data)
    # same inputs with another label: both copies stay on one side
    clash = data + [dspy.Example(review=ROWS[0]["review"], sentiment="negative").with_inputs("review")]
    train, dev = APE(metric=exact_match("sentiment"), task_lm=None).split(clash, None)
    assert not inputs_of(train) & inputs_of(dev) and len(train) + len(dev) == len(clash)
    # a user-given valset that overlaps the trainset: the shared examples leave train
    train, dev = APE(metric=exact_match("sentiment"), task_lm=None).split(data, data[:8])
    assert len(dev) == 8 and len(train) == len(data) - 8 and not inputs_of(train) & inputs_of(dev)
    with pytest.raises(TeleprompterConfigError, match="1 distinct input"):
        APE(metric=exact_match("sentiment"), task_lm=None).split(data[:1] * 40, None)


def test_duplicates_are_counted_in_one_line_before_any_call_and_dropped(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    models = Models(monkeypatch)
    data = write_jsonl(tmp_path / "doubled.jsonl", ROWS + ROWS)
    code, out, err = run_main(["compile", *CLASSIFY, "--train", str(data), *SMALL_APE, "--out", "x.json", "--estimate"], capsys)
    assert code == 0 and models.requests("local") == 0
    line = "the trainset holds 40 exact duplicate(s) of its 80 examples (dropped)"
    assert err.count(line) == 1
    assert "(20 train and 20 dev examples" in out
    code, out, err = run_main(["compile", *CLASSIFY, "--train", str(data), *SMALL_APE, "--out", "x.json"], capsys)
    assert code == 0, err
    assert err.count(line) == 1
    report = cuecard.load("x.json").cuecard_report
    assert (report.train_size, report.dev_size) == (20, 20)
    assert any(line in note for note in report.notes)


def test_the_python_api_warns_of_duplicates_and_of_a_valset_shared_with_the_trainset(tmp_path):
    data = [dspy.Example(**row).with_inputs("review") for row in ROWS]
    note = APE.duplicates_note(data + data[:3], data[:5])
    assert note == ("the trainset holds 3 exact duplicate(s) of its 43 examples (dropped); "
                    "5 trainset example(s) are also in the valset (left out of train)")
    assert APE.duplicates_note(data, None) is None
    program = cuecard.programs.Classify("review -> sentiment", labels=["positive", "negative"])
    estimate_from = APE(metric=exact_match("sentiment"), task_lm=cuecard.clients.testing.scripted_lm(lambda m: "positive"),
                        num_subsamples=1, num_prompts_per_subsample=1)
    with pytest.warns(DataWarning, match="3 exact duplicate"):
        estimate = estimate_from.estimate(program, data + data[:3])
    assert estimate.notes[0].startswith("20 train and 20 dev examples")


# ---- 4: byte-order mark -----------------------------------------------------------------------------
def test_data_files_with_a_byte_order_mark_read_like_those_without(tmp_path):
    rows = ROWS[:4]
    plain = {
        "csv": "review,sentiment\n" + "".join(f"\"{r['review']}\",{r['sentiment']}\n" for r in rows),
        "jsonl": "".join(json.dumps(r) + "\n" for r in rows),
        "json": json.dumps(rows),
    }
    for suffix, text in plain.items():
        bare = tmp_path / f"bare.{suffix}"
        bare.write_text(text, encoding="utf-8")
        marked = tmp_path / f"marked.{suffix}"
        marked.write_text(text, encoding="utf-8-sig")
        assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
        want = [dict(e.items()) for e in load_examples(bare, ["review"], required=["sentiment"])]
        got = [dict(e.items()) for e in load_examples(marked, ["review"], required=["sentiment"])]
        assert got == want == rows, suffix


# ---- 8: run names -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../escape", "/tmp/cuecard-absolute-run", "a/b", "..", "a\\b"])
def test_a_run_name_that_is_a_path_is_refused_in_one_line(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    models = Models(monkeypatch)
    code, _, err = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), *SMALL_APE, "--out", "x.json", "--run-name", name], capsys)
    assert code == 2
    assert err == f"cuecard compile: error: --run-name {name!r}: a run name is a name, not a path (no '/', '\\' or '..')\n"
    assert models.requests("local") == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["work"]
    with pytest.raises(TeleprompterConfigError, match="a run name is a name"):
        APE(metric=exact_match("sentiment"), run_name=name)


# ---- 9: unparseable answers in evaluate and run -----------------------------------------------------
def parse_or_not(messages):
    """The chat layout for reviews that say 'great'; a line the adapter cannot parse for the others."""
    if "great" in messages[-1]["content"]:
        return "[[ ## sentiment ## ]]\npositive\n\n[[ ## completed ## ]]"
    return "Sentiment: negative"


def test_evaluate_and_run_count_unparseable_answers_from_a_server_and_go_on(tmp_path, monkeypatch, capsys, fresh_cache):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    program = cuecard.programs.Classify("review -> sentiment", labels=["positive", "negative"])
    saved = cuecard.save(program, tmp_path / "p.json")
    rows = [{"review": "a great film", "sentiment": "positive"}, {"review": "a dull film", "sentiment": "negative"},
            {"review": "great food", "sentiment": "positive"}, {"review": "cold soup", "sentiment": "negative"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    with StubServer(parse_or_not) as server:
        model = ["--task-model", "openai/stub", "--api-base", server.url]
        code, out, err = run_main(["evaluate", str(saved), "--data", str(data), *model, "--quiet",
                                   "--out", str(tmp_path / "scored.jsonl")], capsys)
        assert code == 1 and "Traceback" not in err
        summary = json.loads(out)
        assert summary["examples"] == 4 and summary["scored"] == 2 and summary["score"] == 1.0
        assert summary["failures"] == {"program: AdapterParseError": 2}
        assert "2 of 4 example(s) failed (program: AdapterParseError (x2)); the score is over the 2 others" in err
        scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
        assert [row["score"] for row in scored] == [1.0, None, 1.0, None]
        assert all("AdapterParseError" in row["error"] for row in scored[1::2])

        code, out, err = run_main(["run", str(saved), "--input", str(data), *model, "--quiet"], capsys)
        assert code == 1 and "Traceback" not in err
        lines = [json.loads(line) for line in out.splitlines()]
        assert [line["review"] for line in lines] == [row["review"] for row in rows]
        assert [("error" in line) for line in lines] == [False, True, False, True]
        assert lines[0]["sentiment"] == "positive" and "Sentiment: negative" in lines[1]["error"]
        assert "2 of 4 input(s) failed (program: AdapterParseError (x2))" in err
        assert server.requests >= 4


# ---- 10 and 11: saved files too deep or too large ---------------------------------------------------
def test_a_deeply_nested_saved_file_is_refused_in_one_line_naming_it(tmp_path, capsys):
    program = cuecard.programs.Classify("review -> sentiment", labels=["positive", "negative"])
    state = json.loads(cuecard.save(program, tmp_path / "p.json").read_text())
    deep = tmp_path / "deep.json"
    deep.write_text(json.dumps(state)[:-1] + ', "junk": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(SavedProgramError, match=r"deep.json: its JSON is nested too deeply"):
        cuecard.load(deep)
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"review": "fine"}])
    code, out, err = run_main(["run", str(deep), "--input", str(inputs)], capsys)
    assert code == 1 and out == ""
    assert err == f"cuecard run: error: {deep}: its JSON is nested too deeply to be a saved program; the file was edited or is not one\n"


def test_a_huge_instruction_in_a_saved_file_is_named_not_the_input(tmp_path, monkeypatch, capsys):
    models = Models(monkeypatch)
    made = models.make

    def with_window(spec, **kwargs):
        lm = made(spec, **kwargs)
        lm.engine.n_ctx = 2048
        return lm

    monkeypatch.setattr(cuecard, "LM", with_window)
    program = cuecard.programs.Classify("review -> sentiment", labels=["positive", "negative"])
    saved = cuecard.save(program, tmp_path / "p.json")
    state = json.loads(saved.read_text())
    state["predict"]["signature"]["instructions"] = "Decide. " * 1_000_000
    saved.write_text(json.dumps(state))
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"review": "fine"}])
    code, out, err = run_main(["run", str(saved), "--input", str(inputs), "--task-model", "scripted", "--quiet"], capsys)
    assert code == 1 and out == ""
    assert f"{saved}, predictor 'predict': its instruction (8,000,000 characters) takes about" in err
    assert "shorten that instruction" in err and "line 1" not in err and "example" not in err
    labelled = write_jsonl(tmp_path / "d.jsonl", ROWS[:2])
    code, out, err = run_main(["evaluate", str(saved), "--data", str(labelled), "--task-model", "scripted", "--quiet"], capsys)
    assert code == 1 and f"{saved}, predictor 'predict': its instruction" in err
    assert models.requests("scripted") == 0


# ---- 12: the identity mismatch names the leaf that differs ------------------------------------------
def test_a_run_name_shared_with_other_labels_shows_the_label_leaf_on_both_sides(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Models(monkeypatch)
    common = ["--program", "classify", "--signature", "review -> sentiment", "--train", str(REVIEWS), *SMALL_APE,
              "--out", "x.json", "--run-name", "shared"]
    code, _, err = run_main(["compile", "--labels", "positive,negative", *common], capsys)
    assert code == 0, err
    code, _, err = run_main(["compile", "--labels", "positive,negative,neutral", *common], capsys)
    assert code == 1
    assert ("program.predictors[0].fields[1].type: \"Literal['positive', 'negative', 'neutral']\" here, "
            "\"Literal['positive', 'negative']\" stored") in err


def test_differences_walk_into_lists_and_show_long_values_where_they_part():
    head = "x" * 200
    here = RunIdentity(program={"predictors": [{"name": "a", "instructions": head + " positive"}]})
    stored = RunIdentity(program={"predictors": [{"name": "a", "instructions": head + " negative"}]})
    (line,) = here.differences(stored)
    assert line.startswith("program.predictors[0].instructions: ...xxx")
    assert "positive" in line.split(" here, ")[0] and "negative" in line.split(" here, ")[1]
    shorter = RunIdentity(program={"predictors": []})
    assert here.differences(shorter) == ["program.predictors: 1 item(s) here, 0 stored"]


# ---- 13: Ctrl-C in the benchmark harness ------------------------------------------------------------
def test_ctrl_c_stops_the_harness_even_when_it_was_started_with_sigint_ignored(tmp_path):
    """A script's background job inherits SIGINT ignored; the help promises Ctrl-C stops a run anyway."""
    args = ["--task", "ii:levels", "--methods", "seed,ape,opro", "--seeds", "40", "--cap", "40",
            "--train", "12", "--dev", "8", "--test", "12", "--out", str(tmp_path / "bench")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    worker = subprocess.Popen([sys.executable, str(REPO / "tests" / "harness_worker.py"), *args], cwd=REPO, env=env,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        for line in worker.stdout:
            if " / opro / seed 1: " in line:  # some cells are stored; the next compile has started
                break
        time.sleep(0.3)
        sent = time.monotonic()
        worker.send_signal(signal.SIGINT)
        try:
            _, stderr = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the harness was still running 30 s after SIGINT")
        waited = time.monotonic() - sent
    finally:
        worker.kill()
        worker.communicate()
    assert worker.returncode == 130, stderr[-2000:]
    assert "interrupted: finished cells are stored" in stderr
    assert waited < 15, f"stopping took {waited:.1f} s"
    assert len(list((tmp_path / "bench" / "cells").glob("*.json"))) >= 5
