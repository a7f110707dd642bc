"""The ``cuecard`` command: help, bad usage and bad files, interrupts, user program files, and the
whole path (compile -> run -> evaluate -> report -> runs) on the embedded model."""

import json
import subprocess
import sys
import time
from pathlib import Path

import cuecard
import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.command.cli import main

ROOT = Path(__file__).resolve().parents[1]
REVIEWS = ROOT / "examples" / "data" / "reviews.jsonl"
CUECARD = Path(sys.executable).parent / "cuecard"
CLASSIFY = ["--program", "classify", "--signature", "review -> sentiment", "--labels", "positive,negative"]


def test_the_shipped_reviews_file_is_the_packaged_dataset():
    rows = [json.loads(line) for line in REVIEWS.read_text().splitlines()]
    assert rows == [{"review": e.review, "sentiment": e.sentiment} for e in cuecard.datasets.reviews()]


@pytest.mark.parametrize("command", [[], ["compile"], ["run"], ["evaluate"], ["report"], ["runs"]])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cuecard")
    if command == ["compile"]:
        for flag in ("--teleprompter", "--task-model", "--prompt-model", "--max-calls", "--seed", "--storage", "--out", "--set"):
            assert flag in out


def run_main(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bad_usage_and_bad_files_are_named(tmp_path, capsys):
    out = str(tmp_path / "x.json")
    with pytest.raises(SystemExit) as exit_:
        main(["compile", "--program", "classify", "--train", str(REVIEWS), "--out", out])
    assert exit_.value.code == 2
    assert "needs --labels" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["compile", "--program", "nonsense", "--train", str(REVIEWS), "--out", out])
    assert exit_.value.code == 2 and "not a registered program" in capsys.readouterr().err

    code, _, err = run_main(["compile", *CLASSIFY, "--train", str(tmp_path / "missing.jsonl"), "--out", out], capsys)
    assert code == 1 and "missing.jsonl: no such file" in err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"review": "fine", "sentiment": "positive"}\n{"review": oops}\n')
    code, _, err = run_main(["compile", *CLASSIFY, "--train", str(broken), "--out", out], capsys)
    assert code == 1 and "broken.jsonl, line 2: not valid JSON" in err
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("review,stars\ngreat,5\n")
    code, _, err = run_main(["compile", *CLASSIFY, "--train", str(unlabelled), "--out", out], capsys)
    assert code == 1 and "unlabelled.csv, line 2: missing field(s) ['sentiment']" in err
    code, _, err = run_main(["run", str(tmp_path / "nothing.json")], capsys)
    assert code == 1 and "nothing.json: no such file" in err


def test_ctrl_c_that_lands_in_a_finalizer_still_stops_the_command():
    """The collector runs weakref callbacks and __del__ anywhere; a KeyboardInterrupt raised in one is printed and
    dropped by Python, and the command ran on (seen once in CI: the harness went on after Ctrl-C, in a
    WeakKeyDictionary callback). Here the signal arrives while a __del__ runs: the command still stops."""
    import os
    import signal

    from cuecard.command.cli import ctrl_c_interrupts

    class InterruptedWhileFinalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs at the next instruction: inside this finalizer
            time.sleep(0.01)

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), ctrl_c_interrupts():
        InterruptedWhileFinalized()
        time.sleep(5)
    assert time.monotonic() - started < 2


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(monkeypatch, capsys):
    from cuecard.teleprompters import APE

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(APE, "compile", interrupted)
    monkeypatch.setattr(cuecard, "LM", lambda spec, **kw: scripted_lm(lambda m: "positive"))
    code, _, err = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), "--out", "unused.json", "--run-name", "r1"], capsys)
    assert code == 130
    assert "interrupted (run 'r1')" in err and "run the same command again to resume" in err


USER_PROGRAM = '''
import dspy

class Shout(dspy.Module):
    def __init__(self):
        super().__init__()
        self.answer = dspy.Predict(dspy.Signature("review -> sentiment", "Classify."))

    def forward(self, review):
        return self.answer(review=review)

program = Shout()

def metric(example, prediction, trace=None):
    return prediction.sentiment.strip().lower() == example.sentiment
'''


def test_a_program_file_compiles_runs_and_evaluates(tmp_path, monkeypatch, capsys):
    source = tmp_path / "my_program.py"
    source.write_text(USER_PROGRAM)
    proposals = iter([f"<INS>Say positive, version {i}.</INS>" for i in range(100)])

    def fake_lm(spec, **kwargs):
        return scripted_lm(lambda m: next(proposals) if "<INS>" in m[-1]["content"] else "positive", name=f"scripted/{spec}")

    monkeypatch.setattr(cuecard, "LM", fake_lm)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "shout.json"
    code, stdout, err = run_main(["compile", "--program", str(source), "--train", str(REVIEWS), "--teleprompter", "opro",
                                  "--set", "steps=1", "--set", "instructions_per_step=2", "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    assert "compiled opro" in stdout and out.exists()
    assert list((tmp_path / "runs").glob("opro-*/study.db")), "the run lives under runs/<name>/"
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "not one of cuecard's built-in programs" in err and "--program FILE.py" in err
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"review": "Great!"}\n{"review": "Awful."}\n')
    code, stdout, _ = run_main(["run", str(out), "--program", str(source), "--input", str(inputs)], capsys)
    assert code == 0
    assert [json.loads(line) for line in stdout.splitlines()] == [
        {"review": "Great!", "sentiment": "positive"}, {"review": "Awful.", "sentiment": "positive"}]
    code, stdout, _ = run_main(["evaluate", str(out), "--program", str(source), "--data", str(REVIEWS), "--quiet"], capsys)
    summary = json.loads(stdout)
    positives = sum(e.sentiment == "positive" for e in cuecard.datasets.reviews())
    assert summary["examples"] == 40 and summary["score"] == positives / 40


@pytest.mark.model
def test_the_whole_command_line_path_on_the_embedded_model(tmp_path):
    """From the README: one `cuecard compile` line, then run, evaluate, report, runs (real processes)."""
    def cuecard_cmd(*args, stdin=None):
        result = subprocess.run([str(CUECARD), *args], capture_output=True, text=True, cwd=tmp_path, input=stdin, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    compile_args = ["compile", *CLASSIFY, "--train", str(REVIEWS), "--teleprompter", "ape", "--set", "num_subsamples=1",
                    "--set", "num_prompts_per_subsample=2", "--set", "max_dev=6", "--out", "sentiment.json"]
    first = cuecard_cmd(*compile_args)
    assert "compiled ape -> sentiment.json" in first
    saved = json.loads((tmp_path / "sentiment.json").read_text())
    assert saved["cuecard"]["program"]["class"] == "Classify" and saved["cuecard"]["teleprompter"] == "ape"
    again = cuecard_cmd(*compile_args)  # the same command: the run and the LM cache are reused
    assert "(0 by this process;" in again and "evaluations read back)" in again

    answers = [json.loads(line) for line in cuecard_cmd("run", "sentiment.json", stdin='{"review": "I loved it."}\n').splitlines()]
    assert len(answers) == 1 and answers[0]["sentiment"] in ("positive", "negative")
    (tmp_path / "test.jsonl").write_text("".join(REVIEWS.read_text().splitlines(keepends=True)[:6]))
    summary = json.loads(cuecard_cmd("evaluate", "sentiment.json", "--data", "test.jsonl", "--quiet").splitlines()[-1])
    assert summary["examples"] == 6 and 0 <= summary["score"] <= 1

    cuecard_cmd("report", "sentiment.json", "--out-dir", "report")
    png, page = tmp_path / "report" / "report.png", (tmp_path / "report" / "report.html").read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    winner = saved["cuecard"]["report"]["best"]["instructions"]["predict"]
    assert "data:image/png;base64," in page and winner.replace("'", "&#x27;") in page
    listing = cuecard_cmd("runs")
    assert saved["cuecard"]["report"]["run_name"] in listing


def test_bpo_compiles_from_unlabelled_prompts_and_preference_records(tmp_path, monkeypatch, capsys):
    def reply(messages):
        text = messages[-1]["content"]
        if "Good response:" in text:
            return "Comparison: the good one is complete.\nOptimized prompt: Explain tides in three clear steps.\n[END]"
        if messages[0]["role"] == "system" and "[[A]]" in messages[0]["content"]:
            return "[[C]]"
        if text.startswith("Request: ") and "Rewrite" in text:
            return text.split("\n")[0][len("Request: "):] + " Please be thorough."
        return "An answer."

    monkeypatch.setattr(cuecard, "LM", lambda spec, **kw: scripted_lm(reply, name=f"scripted/{spec}"))
    monkeypatch.chdir(tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"request": f"Question {i}?"}) + "\n" for i in range(6)))
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"prompt": "Explain tides.", "good_res": "Tides: 1) ... 2) ... 3) ...", "bad_res": "Moon."}]))
    code, stdout, err = run_main(["compile", "--program", "respond", "--train", str(prompts), "--teleprompter", "bpo",
                                  "--preferences", str(records), "--judge-model", "judge", "--quiet", "--out", "bpo.json"], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "bpo.json").read_text())
    assert saved["cuecard"]["program"]["class"] == "Rewritten" and saved["cuecard"]["teleprompter"] == "bpo"
    assert saved["cuecard"]["prompt_model"] == "scripted/local"
    assert "judge model: scripted/judge" in saved["cuecard"]["report"]["notes"]
    code, stdout, _ = run_main(["run", "bpo.json", "--input", str(prompts)], capsys)
    assert code == 0 and len(stdout.splitlines()) == 6
    with pytest.raises(SystemExit) as exit_:
        main(["compile", *CLASSIFY, "--train", str(REVIEWS), "--judge-model", "x", "--out", "y.json"])
    assert exit_.value.code == 2 and "--judge-model is not an option of --teleprompter ape" in capsys.readouterr().err
