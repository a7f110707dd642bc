"""The user's view: the command line's rough edges, budgets and dry runs, evidence with every winner,
DSPy's conventions, and what optuna-dashboard shows of a run. Scripted models through the real ``main``."""

import json
import os
import stat
from pathlib import Path

import cuecard
import dspy
import optuna
import pytest
from cli_run import run_main
from cuecard.clients.testing import scripted_lm
from cuecard.metrics import exact_match
from cuecard.teleprompters import APE

ROOT = Path(__file__).resolve().parents[1]
REVIEWS = ROOT / "examples" / "data" / "reviews.jsonl"
CLASSIFY = ["--program", "classify", "--signature", "review -> sentiment", "--labels", "positive,negative"]
SMALL = ["--teleprompter", "ape", "--set", "num_subsamples=2", "--set", "num_prompts_per_subsample=2"]


class Models:
    """``cuecard.LM(spec)`` answers with scripted models; every model built is kept with its spec."""

    def __init__(self, monkeypatch):
        self.built = []
        monkeypatch.setattr(cuecard, "LM", self.make)

    def make(self, spec, **kwargs):
        def reply(messages):
            if "teacher gave a student" in messages[-1]["content"]:
                return f"Say whether the review is positive or negative (idea {len(self.built)})."
            return "negative" if "cold" in messages[-1]["content"] else "positive"

        lm = scripted_lm(reply, name=f"scripted/{spec}")
        lm.spec = spec  # the model string the user gave, as cuecard.LM keeps it
        lm.kwargs.update({k: v for k, v in kwargs.items() if k != "requests_per_minute"})  # not a call setting
        self.built.append((spec, kwargs, lm))
        return lm

    def requests(self):
        return sum(len(lm.engine.requests) for _, _, lm in self.built)


@pytest.fixture
def models(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    return Models(monkeypatch)


def compiled_file(capsys, *extra):
    code, out, err = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), *SMALL, "--quiet", "--out", "p.json", *extra], capsys)
    assert code == 0, err
    return out, err


# ---- command-line rough edges ---------------------------------------------------------------------------
def test_an_unknown_set_key_names_the_valid_settings(models, capsys):
    code, _, err = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), "--set", "num_prompt=3", "--out", "x.json"], capsys)
    assert code == 2 and "num_prompt: not a setting of APE" in err and "num_prompts_per_subsample" in err


def test_renaming_a_column_the_file_does_not_have_is_refused(models, capsys):
    code, _, err = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), "--columns", "text=review", "--out", "x.json"], capsys)
    assert code == 1 and "no column ['text'] to rename" in err and "review" in err
    assert models.requests() == 0


def test_api_base_reaches_the_model_and_no_key_is_asked_for_a_local_server(models, capsys):
    compiled_file(capsys, "--task-model", "ollama/llama3", "--api-base", "http://127.0.0.1:11434")
    spec, kwargs, _ = models.built[0]
    assert spec == "ollama/llama3" and kwargs["api_base"] == "http://127.0.0.1:11434"
    from cuecard.clients.lm import check_credentials

    check_credentials("ollama/llama3", {"api_base": "http://127.0.0.1:11434"})  # no key needed, no error


def test_rate_and_thread_flags_reach_the_models_and_the_teleprompter(models, capsys, monkeypatch):
    built = []
    original = cuecard.teleprompters.Teleprompter.__init__

    def spy(self, *args, **kwargs):
        built.append(kwargs.get("num_threads"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(cuecard.teleprompters.Teleprompter, "__init__", spy)
    compiled_file(capsys, "--rpm", "600", "--threads", "4", "--prompt-model", "other", "--prompt-rpm", "30")
    options = {spec: kwargs for spec, kwargs, _ in models.built}
    assert options["local"]["requests_per_minute"] == 600 and options["other"]["requests_per_minute"] == 30
    assert built[-1] == 4
    for flag in ("--rpm", "--threads", "--prompt-rpm"):
        code, _, err = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), flag, "0", "--out", "x.json"], capsys)
        assert code == 2 and flag in err
    assert models.requests() == sum(len(lm.engine.requests) for _, _, lm in models.built[:2])


def test_an_unknown_model_is_one_clean_line():
    with pytest.raises(cuecard.ModelSpecError) as error:
        cuecard.LM("nosuchprovider-at-all")
    assert "\x1b[" not in str(error.value) and "Provider List" not in str(error.value)


def test_report_of_a_user_program_file_asks_for_the_program_file(models, capsys, tmp_path):
    plain = tmp_path / "plain.json"
    dspy.Predict("review -> sentiment").save(str(plain))
    code, _, err = run_main(["report", str(plain)], capsys)
    assert code == 2 and "--program FILE.py" in err and "cuecard.load(" not in err


def test_every_flag_has_help_and_every_command_a_description():
    import argparse

    from cuecard.command.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    for name, parser in commands.choices.items():
        assert parser.description, f"`cuecard {name}` has no description"
        for action in parser._actions:  # noqa: SLF001 - argparse keeps its actions there
            if action.option_strings and action.dest != "help":
                assert action.help, f"`cuecard {name} {action.option_strings[0]}` has no help text"


def test_runs_says_when_a_run_stopped_at_its_cap(models, capsys):
    out, _ = compiled_file(capsys, "--max-calls", "20")
    assert "search stopped: a cap was reached" in out
    code, out, _ = run_main(["runs"], capsys)
    assert code == 0 and "stopped" in out and "larger cap continues it" in out


def test_run_uses_the_model_the_program_was_compiled_for_and_says_so(models, capsys, tmp_path):
    compiled_file(capsys, "--task-model", "openai/gpt-4o-mini")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"review": "The soup was cold."}\n')
    code, out, err = run_main(["run", "p.json", "--input", str(inputs)], capsys)
    assert code == 0 and json.loads(out)["sentiment"] == "negative"
    assert models.built[-1][0] == "openai/gpt-4o-mini"
    assert "running on scripted/openai/gpt-4o-mini (the model it was compiled for)" in err
    code, out, err = run_main(["run", "p.json", "--input", str(inputs), "--task-model", "local"], capsys)
    assert code == 0 and models.built[-1][0] == "local" and "(given with --task-model)" in err


def test_a_saved_program_is_as_readable_as_dspy_makes_it(models, capsys, tmp_path):
    compiled_file(capsys)
    dspy.Predict("review -> sentiment").save(str(tmp_path / "plain.json"))
    mode = stat.S_IMODE(os.stat(tmp_path / "p.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.json").st_mode)


# ---- budgets, dry runs, evidence ------------------------------------------------------------------------
def test_estimate_makes_no_lm_call_and_bounds_the_real_cost(models, capsys):
    code, out, _ = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), *SMALL, "--estimate", "--out", "x.json"], capsys)
    assert code == 0 and models.requests() == 0 and not Path("x.json").exists()
    estimated = int(out.split("LM requests at most: ")[1].split()[0])
    compiled_file(capsys)
    report = cuecard.teleprompters.CompileReport(**cuecard.read_block("p.json").report)
    assert report.usage.calls <= estimated


def test_a_budget_preset_caps_the_compile_and_plans_the_knobs(models, capsys):
    out, _ = compiled_file(capsys, "--budget", "light")
    report = cuecard.teleprompters.CompileReport(**cuecard.read_block("p.json").report)
    assert report.usage.calls <= 150
    assert report.config["num_prompts_per_subsample"] == 2  # --set wins over the plan


def test_the_winner_comes_with_its_evidence_and_a_compile_that_scored_nothing_writes_no_program(models, capsys):
    out, _ = compiled_file(capsys)
    assert "search's best: " in out and "(95% " in out and "on 20 dev examples" in out
    assert "is the seed itself" in out or "paired dev examples" in out
    code, _, err = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), *SMALL, "--max-calls", "1", "--out", "none.json"], capsys)
    assert code == 1 and "nothing was scored" in err and not Path("none.json").exists()


def test_progress_says_what_the_compile_does(models, capsys):
    code, _, err = run_main(["compile", *CLASSIFY, "--train", str(REVIEWS), *SMALL, "--out", "p.json"], capsys)
    assert code == 0
    assert "cuecard: ape-" in err and "proposing with" in err and "scoring" in err


# ---- DSPy's conventions -----------------------------------------------------------------------------------
def test_the_task_model_falls_back_to_the_configured_one(tmp_path):
    lm = scripted_lm(lambda messages: "positive", name="scripted/configured")
    program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify."))
    with dspy.context(lm=lm):
        report = APE(metric=exact_match("sentiment"), storage=":memory:", progress=False, num_subsamples=1,
                     num_prompts_per_subsample=1).compile(program, trainset=cuecard.datasets.reviews()[:10]).cuecard_report
    assert report.task_model == "scripted/configured" and len(lm.engine.requests) > 0
    with pytest.raises(cuecard.errors.TeleprompterConfigError, match="dspy.configure"):
        APE(metric=exact_match("sentiment"), storage=":memory:", progress=False).compile(program, trainset=cuecard.datasets.reviews()[:10])


# ---- optuna-dashboard ------------------------------------------------------------------------------------
def test_the_study_names_its_objective_shows_instructions_and_marks_no_unscored_candidate_as_failed(models, capsys, tmp_path):
    compiled_file(capsys)
    report = cuecard.teleprompters.CompileReport(**cuecard.read_block("p.json").report)
    study = optuna.load_study(study_name=report.run_name, storage=report.storage)
    assert study.metric_names == ["dev score"]
    trials = study.get_trials()
    assert all(t.state != optuna.trial.TrialState.FAIL for t in trials)
    assert all(t.user_attrs["instruction"] == t.user_attrs["cuecard.candidate"]["instructions"]["predict"] for t in trials)
