"""Everything a user reads is true, and cuecard behaves as a DSPy user expects (issue 27, goals 4-5).
Scripted models through the real ``main``."""

import itertools
from pathlib import Path

import cuecard
import pytest
from cli_run import run_main
from cuecard.clients.testing import scripted_lm

ROOT = Path(__file__).resolve().parents[1]
REVIEWS = ROOT / "examples" / "data" / "reviews.jsonl"
CLASSIFY = ["--program", "classify", "--signature", "review -> sentiment", "--labels", "positive,negative"]


class Models:
    """``cuecard.LM(spec)`` answers with scripted models: proposals for any request that asks for an
    instruction, else a label; ``unreadable`` names words of a review the model answers with prose."""

    def __init__(self, monkeypatch, proposal="Say whether the review is positive or negative", unreadable=()):
        self.truncate = False  # cut replies at the request's max_tokens, as a model does
        self.ramble = 0  # words the task model adds after its label, on the same line
        self.built = []
        self.proposal = proposal
        self.unreadable = unreadable
        self.count = itertools.count()
        monkeypatch.setattr(cuecard, "LM", self.make)

    def reply(self, messages):
        text = messages[-1]["content"]
        if any(ask in text for ask in ("<INS>", "What was the instruction?", "teacher gave")) or "Review:" not in text:
            return f"<INS>{self.proposal} (idea {next(self.count)}).</INS>"
        review = text.split("Review:")[-1].split("\n")[0]
        if any(word in review for word in self.unreadable):
            return "I would rather not say."
        label = "negative" if any(w in review for w in ("cold", "bad", "awful", "boring")) else "positive"
        return label + " indeed" * self.ramble

    def make(self, spec, **kwargs):
        lm = scripted_lm(self.reply, name=f"scripted/{spec}", truncate=self.truncate)
        lm.spec = spec
        lm.kwargs.update({k: v for k, v in kwargs.items() if k != "requests_per_minute"})
        self.built.append((spec, kwargs, lm))
        return lm


@pytest.fixture
def models(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    return Models(monkeypatch)


def saved_report(path="p.json"):
    return cuecard.teleprompters.CompileReport(**cuecard.read_block(path).report)


# ---- goal 5: DSPy-native ------------------------------------------------------------------------------
def test_a_mistyped_flag_is_named_with_the_closest_one(models, capsys):
    code, out, err = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), "--budjet", "light", "--out", "x.json"], capsys)
    assert code == 2
    assert "cuecard compile: error: unrecognized argument --budjet (did you mean --budget?)" in err
    assert err.startswith("usage: cuecard compile")  # the command's own usage, not the top-level one
    code, _, err = run_main(["runs", "--run-dri", "x"], capsys)
    assert code == 2 and "did you mean --run-dir?" in err
    assert models.built == []


def test_the_readme_says_one_true_thing_about_the_global_lm():
    readme = (ROOT / "README.md").read_text()
    assert "never reads a global LM" not in readme
    assert readme.count("the LM given to `dspy.configure`") >= 2  # models section and teleprompters section agree


# ---- goal 4: everything a user reads is true -----------------------------------------------------------
OPRO_LIGHT = ["--teleprompter", "opro", "--budget", "light", "--set", "patience=100"]


def test_one_stop_reason_the_same_in_the_cli_the_report_and_the_notes(models, capsys, tmp_path):
    code, out, err = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), *OPRO_LIGHT, "--quiet", "--out", "p.json"], capsys)
    assert code == 0, err
    report = saved_report()
    reason = report.stop_reason
    assert reason.kind == "no room" and "requests left under the cap, fewer than" in reason.text  # one more step, or the smallest one
    assert f"search stopped: {reason.text}" in out
    assert not any("stopped" in note for note in report.notes), "the reason is said once, not again as a note"
    code, _, _ = run_main(["report", "p.json", "--out-dir", str(tmp_path / "r")], capsys)
    page = (tmp_path / "r" / "report.html").read_text()
    assert "ran to its end" not in page and "Stopped by a cap" not in page
    assert page.count(reason.text.split(":")[0]) == 2  # the headline and the cost section, both from the one field


def test_a_cap_is_the_stop_reason_and_a_search_that_ran_out_of_ideas_says_so(models, capsys):
    code, out, _ = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), "--teleprompter", "opro", "--max-calls", "60",
                             "--quiet", "--out", "p.json"], capsys)
    assert code == 0
    assert saved_report().stop_reason.kind == "cap"
    assert "search stopped: a cap was reached: " in out and "cap of 60 LM requests" in out and "larger cap continues" in out
    code, out, _ = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), "--teleprompter", "opro", "--set", "steps=6",
                             "--set", "patience=2", "--quiet", "--out", "q.json"], capsys)
    assert saved_report("q.json").stop_reason.kind == "no improvement"
    assert "search stopped: the best score stopped improving: " in out and "(patience 2)" in out


def test_cuecard_runs_gives_each_run_the_stop_reason_its_compile_printed(models, capsys):
    code, out, _ = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), *OPRO_LIGHT, "--quiet", "--out", "p.json"], capsys)
    no_room = saved_report().stop_reason
    assert code == 0 and no_room.kind == "no room" and "larger cap continues" in out
    code, _, _ = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), "--teleprompter", "opro", "--set", "steps=6",
                           "--set", "patience=2", "--quiet", "--out", "q.json"], capsys)
    no_better = saved_report("q.json").stop_reason
    assert code == 0 and no_better.kind == "no improvement"
    code, listing, _ = run_main(["runs"], capsys)
    assert code == 0
    assert f" stopped: {no_room.text}" in listing, listing  # the cap left no room: a larger cap continues it
    assert f" finished: {no_better.text}" in listing, listing
    assert "stopped: stopped at its cap: the same command with a larger cap continues it" in listing


def test_notes_are_one_line_each(models, capsys):
    models.proposal = "Say whether the review\nis positive\nor negative"
    code, out, _ = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), *OPRO_LIGHT, "--quiet", "--out", "p.json"], capsys)
    assert code == 0
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    reading = next(note for note in notes if "read from train examples" in note)
    assert "is positive or negative" in reading  # the reading flattened, not cut at its first line
    assert all(len(note) <= 410 for note in notes)
    assert not any(line.strip() and not line.startswith(("note: ", "compiled", "search", "  ", "winner", "run ", "estimated ")) for line in out.splitlines())


def test_parse_failures_are_shown_with_one_unparsed_answer(models, capsys, tmp_path):
    models.unreadable = ("movie", "film")
    code, out, _ = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), "--teleprompter", "ape", "--set", "num_subsamples=1",
                             "--set", "num_prompts_per_subsample=2", "--quiet", "--out", "p.json"], capsys)
    assert code == 0
    report = saved_report()
    failures = report.usage.parse_failures
    assert failures > 0 and report.parse_failure_example == "sentiment: 'I would rather not say.'"
    line = next(line for line in out.splitlines() if line.startswith("parse failures: "))
    assert f"{failures} task-model answers (of {report.task_usage.calls} requests)" in line
    assert "I would rather not say." in line
    run_main(["report", "p.json", "--out-dir", str(tmp_path / "r")], capsys)
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<b>Failures:</b> none" not in page
    assert f"answers not readable as the output fields: {failures} of {report.task_usage.calls}" in page
    assert "I would rather not say." in page and "<th class=\"num\">parse failures</th>" in page


@pytest.mark.parametrize("name", ["ape", "opro", "protegi", "pe2"])
def test_auto_plans_the_same_knobs_as_budget_and_caps_the_compile(models, capsys, name):
    from cuecard.clients.usage import BUDGETS
    from cuecard.metrics import exact_match
    from cuecard.registry import teleprompter

    code, _, err = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), "--teleprompter", name, "--budget", "light",
                             "--quiet", "--out", "cli.json"], capsys)
    assert code == 0, err
    by_flag = saved_report("cli.json")
    lm = cuecard.LM("local")
    program = cuecard.programs.Classify(signature="review -> sentiment", labels=["positive", "negative"])
    optimizer = teleprompter(name)(metric=exact_match("sentiment"), task_lm=lm, storage=":memory:", progress=False, auto="light")
    report = optimizer.compile(program, trainset=cuecard.datasets.load_examples(str(REVIEWS), ["review"])).cuecard_report
    assert report.config == by_flag.config and report.config != teleprompter(name)().config.model_dump()
    assert optimizer.limits.max_calls == BUDGETS["light"] >= report.usage.calls
    with pytest.raises(cuecard.errors.TeleprompterConfigError, match="auto='lite': one of 'light', 'medium', 'heavy'"):
        teleprompter(name)(auto="lite")


def test_the_token_estimate_is_close_to_what_the_compile_uses_and_is_printed_beside_it(models, capsys):
    argv = ["compile", *CLASSIFY, "--train", str(REVIEWS), *OPRO_LIGHT, "--out", "p.json"]
    code, out, _ = run_main([*argv, "--estimate"], capsys)
    assert code == 0
    estimated = int(out.split("tokens: about ")[1].split(";")[0].replace(",", ""))
    requests = int(out.split("LM requests at most: ")[1].split()[0])  # with until_cap, the cap bounds it
    code, out, _ = run_main([*argv, "--quiet"], capsys)
    used = saved_report().usage
    assert used.calls <= requests
    per_request, used_per_request = estimated / requests, used.total_tokens / used.calls
    assert 0.67 * used_per_request <= per_request <= 1.5 * used_per_request  # was 6x too high: every answer at 256 tokens
    assert (f"estimated before the run: at most {requests} LM requests, about {estimated:,} tokens; "
            f"used: {used.calls} requests, {used.total_tokens:,} tokens") in out


def test_plain_dspy_loads_a_compiled_file_as_the_readme_says(models, capsys):
    import cuecard.programs
    import dspy

    code, _, err = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), "--teleprompter", "opro", "--set", "steps=1",
                             "--instructions", "Is the review positive or negative?", "--quiet", "--out", "p.json"], capsys)
    assert code == 0, err
    winner = saved_report().best.instructions["predict"]
    bare = dspy.Predict("review -> sentiment")
    bare.load("p.json")  # the file holds its one predictor's state at the top too
    assert bare.signature.instructions == winner
    with dspy.context(lm=cuecard.LM("local"), adapter=cuecard.PlainAdapter()):
        assert bare(review="Great fun.").sentiment == "positive"
    same_class = cuecard.programs.Classify(signature="review -> sentiment", labels=["positive", "negative"])
    same_class.load("p.json")
    assert same_class.predict.signature.instructions == winner
    assert cuecard.load("p.json", program=dspy.Predict("review -> sentiment")).signature.instructions == winner

    class Renamed(dspy.Module):  # the README says: the same predictor names, or a bare Predict for one predictor
        def __init__(self):
            super().__init__()
            self.classify = dspy.Predict("review -> sentiment")

    with pytest.raises(KeyError):
        Renamed().load("p.json")


def test_dspy_save_on_a_compiled_program_keeps_the_report(models, capsys, tmp_path):
    import cuecard.programs
    from cuecard.metrics import exact_match
    from cuecard.teleprompters import APE

    program = cuecard.programs.Classify(signature="review -> sentiment", labels=["positive", "negative"])
    compiled = APE(metric=exact_match("sentiment"), task_lm=cuecard.LM("local"), storage=":memory:", progress=False,
                   num_subsamples=1, num_prompts_per_subsample=2).compile(program, trainset=cuecard.datasets.reviews()[:10])
    compiled.save("dspy.json")  # DSPy's own Module.save
    block = cuecard.read_block("dspy.json")
    assert block.report is not None and block.teleprompter == "ape" and block.program is not None
    code, out, err = run_main(["report", "dspy.json", "--out-dir", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert (tmp_path / "r" / "report.html").exists()
    assert cuecard.load("dspy.json").cuecard_report == compiled.cuecard_report
    assert compiled.deepcopy().dump_state()["cuecard"]["teleprompter"] == "ape"


def test_cut_proposals_are_counted_into_one_line_not_warned_mid_bar(models, capsys, caplog):
    models.truncate = True
    models.proposal = "Say whether the review is positive or negative " + "and explain why at length " * 20
    argv = ["compile", *CLASSIFY, "--train", str(REVIEWS), "--teleprompter", "opro", "--set", "steps=1", "--out", "p.json"]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    assert not [r for r in caplog.records if "truncated" in r.getMessage()], "DSPy's warning is counted, not printed"
    report = saved_report()
    cut = report.prompt_usage.truncated
    assert cut == report.prompt_usage.calls > 0 and report.proposal_token_caps == [80, 100]  # readings, OPRO's proposals
    assert f"{cut} proposals were cut at 80/100 tokens; raise --prompt-max-tokens" in out
    assert "LM response was truncated" not in err
    code, out, err = run_main([*argv, "--prompt-max-tokens", "400", "--out", "q.json"], capsys)
    assert code == 0, err
    assert "were cut" not in out and saved_report("q.json").prompt_usage.truncated == 0


def test_cut_task_answers_are_cut_at_the_smaller_cap_and_the_line_says_what_raises_it(models, capsys):
    models.truncate, models.ramble = True, 60
    argv = ["compile", *CLASSIFY, "--train", str(REVIEWS), "--teleprompter", "opro", "--set", "steps=1", "--quiet"]
    code, out, err = run_main([*argv, "--max-tokens", "10", "--out", "p.json"], capsys)
    assert code == 0, err
    report = saved_report()
    cut = report.task_usage.truncated
    assert cut > 0 and report.task_token_caps == [10]  # --max-tokens below the adapter's cap on one-line answers
    assert f"{cut} task-model answers were cut at 10 tokens; raise --max-tokens\n" in out
    code, out, err = run_main([*argv, "--out", "q.json"], capsys)
    assert code == 0, err
    report = saved_report("q.json")
    cut = report.task_usage.truncated
    assert cut > 0 and report.task_token_caps == [48]  # the LM's own cap is 256: the adapter's 48 is the smaller
    assert (f"{cut} task-model answers were cut at 48 tokens; one-line answers stop at the plain adapter's cap of 48 "
            "tokens, below --max-tokens 256 (PlainAdapter(short_answer_tokens=N) as the adapter raises it)") in out


def final_bars(err):
    """Each progress bar's last drawing, by its label (tqdm redraws a bar after a carriage return)."""
    import re

    bars = {}
    for piece in err.replace("\r", "\n").splitlines():
        found = re.match(r"\S+: (.+?):\s+\d+%\|.*?\| (\d+)/(\d+|\?)", piece)
        if found:
            bars[found.group(1)] = (int(found.group(2)), found.group(3))
    return bars


def test_progress_is_one_bar_per_phase_with_its_step_closed_at_its_evaluations(models, capsys):
    code, _, err = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), "--teleprompter", "opro", "--set", "steps=2",
                             "--set", "patience=5", "--out", "p.json"], capsys)
    assert code == 0, err
    bars = final_bars(err)
    scoring = {label: state for label, state in bars.items() if "scoring" in label or "against the seed" in label}
    assert any(label.startswith("step 1/2: scoring") for label in scoring)
    assert any(label.startswith("step 2/2: scoring") for label in scoring)
    assert any(label.startswith("step 1/2: proposing") for label in bars)
    assert all(str(done) == total for done, total in scoring.values()), scoring  # closed at 100%
    assert sum(done for done, _ in scoring.values()) == saved_report().evaluations  # the bars count every evaluation


def test_a_bar_cut_by_the_cap_says_so(models, capsys):
    code, _, err = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), "--teleprompter", "opro", "--max-model-calls", "30",
                             "--out", "p.json"], capsys)
    assert code == 0, err
    assert "starting candidates: scoring" in err and "stopped early (" in err and "cap of 30 LM calls that reach a model" in err
