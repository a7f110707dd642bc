"""The benchmark harness (benchmarks/harness) and the task loaders it reads data with (benchmarks.harness.tasks).

Task loaders run on the shared benchmark data (skipped with a message when it is absent). The
harness's bookkeeping (cap, cold-cost accounting, resume, outputs) is checked with scripted models;
one test runs the real command on the embedded model, given as a bare GGUF path.
"""

import importlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dspy
import optuna
import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.clients.usage import Limits, track
from cuecard.errors import BudgetExhausted
from cuecard.metrics import exact_match
from sentiment_cases import GOLD, REVIEWS

from benchmarks.harness import HarnessConfig, markdown_table, run, summarize
from benchmarks.harness.run import Models
from benchmarks.harness.tasks import (
    Task,
    bbh,
    bbh_exact_match,
    instruction_induction,
    jsonl_task,
    normalize_target,
)

REPO = Path(__file__).resolve().parents[1]


# ---- task loaders -------------------------------------------------------------------------------
def test_instruction_induction_task_reads_induce_execute_and_annotations(shared_data):
    root = shared_data / "instruction_induction"
    task = instruction_induction("word_in_context", root)
    raw_execute = json.loads((root / "execute" / "word_in_context.json").read_text())["examples"]
    raw_annotations = json.loads((root / "annotations" / "word_in_context.json").read_text())["annotations"]
    assert len(task.test_pool) == len(raw_execute)
    assert task.human_instructions == raw_annotations
    first = next(iter(raw_execute.values()))
    example = task.test_pool[0]
    assert example.input == first["input"] and set(example.inputs().keys()) == {"input"}
    # every possible output counts as a gold answer, after the papers' normalisation
    for answer in first["possible_outputs"]:
        assert task.metric(example, dspy.Prediction(output=f"{answer.upper()}.\nBecause..."))
    assert not task.metric(example, dspy.Prediction(output="banana"))


def test_bbh_task_splits_keep_one_test_for_every_seed_and_draw_train_dev_by_seed(shared_data):
    task = bbh("navigate", shared_data / "bbh")
    a, b = task.splits(0, 20, 10, 30), task.splits(1, 20, 10, 30)
    question = lambda examples: [e.question for e in examples]  # noqa: E731
    assert question(a.test) == question(b.test)
    assert question(a.train) != question(b.train)
    for splits in (a, b):
        used = question(splits.train) + question(splits.dev)
        assert len(set(used)) == 30 and not set(used) & set(question(splits.test))
    with pytest.raises(ValueError, match="navigate.*asked for 200\\+100"):
        task.splits(0, 200, 100, 30)


def test_bbh_metric_is_exact_match_of_the_whole_answer():
    metric = bbh_exact_match()
    gold = dspy.Example(answer="(A)")
    assert metric(gold, dspy.Prediction(answer=" (A). "))
    assert not metric(gold, dspy.Prediction(answer="The answer is (A)"))
    assert normalize_target('"Yes."') == "yes"


def test_jsonl_task_reads_the_shipped_reviews_and_names_the_missing_column(tmp_path):
    task = jsonl_task(REPO / "examples" / "data" / "reviews.jsonl", inputs=["review"], output="sentiment")
    assert task.name == "reviews" and task.signature == "review -> sentiment" and len(task.pool) == len(REVIEWS)
    assert task.program().signature.instructions == task.seed_instruction
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"review": "fine"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 1: missing field\(s\) \['sentiment'\]"):
        jsonl_task(bad, inputs=["review"], output="sentiment")


# ---- the cold-request cap -----------------------------------------------------------------------
def test_request_cap_counts_cached_calls_so_a_warm_rerun_stops_at_the_same_point(fresh_cache):
    lm = scripted_lm(lambda messages: "ok", cache=True)

    def calls_until_cap():
        made = 0
        with track("capped", Limits(max_calls=3)) as block:
            with pytest.raises(BudgetExhausted, match="cap of 3 LM requests"):
                for i in range(10):
                    lm(f"question {i}")
                    made += 1
        return made, block.usage

    cold_made, cold = calls_until_cap()
    warm_made, warm = calls_until_cap()
    assert cold_made == warm_made == 3
    assert (cold.model_calls, cold.cache_hits) == (3, 0)
    assert (warm.model_calls, warm.cache_hits) == (0, 3)


# ---- the harness on scripted models -------------------------------------------------------------
def level_reply(messages):
    """Task model: right on review i when the instruction says "Level N" and i % 10 < N."""
    text = messages[-1]["content"] if len(messages) == 1 else "\n".join(m["content"] for m in messages)
    review = re.search(r"Review: (.*)", text).group(1)
    level = re.search(r"Level (\d+)", text)
    order = next(i for i, e in enumerate(REVIEWS) if e.review == review)
    return GOLD[review] if level and order % 10 < int(level.group(1)) else "neutral"


def proposer_reply(messages):
    return f"Level {random.Random(messages[-1]['content']).randint(3, 9)}: label the review."


def scripted_task(human=("Level 2 reviews.", "Level 6 reviews.")):
    return Task(
        name="levels",
        signature="review -> sentiment",
        metric=exact_match("sentiment"),
        pool=REVIEWS,
        seed_instruction="Classify the sentiment.",
        human_instructions=list(human),
        test_seed=0,
    )


def scripted_models():
    return Models(scripted_lm(level_reply, name="scripted/task", cache=True), scripted_lm(proposer_reply, name="scripted/prompt", cache=True))


CAP = 50
"""The harness cap of these tests: room for OPRO's and PE2's smallest plan on 12 train and 8 dev examples (48)."""


def config(tmp_path, **overrides):
    settings = dict(tasks=["ii:levels"], methods=["seed", "human", "ape", "opro"], seeds=2, cap=CAP, n_train=12, n_dev=8, n_test=12, out=str(tmp_path / "bench"))
    return HarnessConfig(**{**settings, **overrides})


def test_harness_caps_each_method_scores_test_and_writes_json_markdown_and_plot(tmp_path, fresh_cache):
    lines = []
    paths = run(config(tmp_path), log=lines.append, tasks=[scripted_task()], models=scripted_models())
    payload = json.loads(paths["json"].read_text())
    cells = payload["cells"]
    assert len(cells) == 1 + 3 * 2 and len(lines) == len(cells)
    for cell in cells:
        assert cell["usage"]["calls"] <= CAP
        if cell["method"] in ("ape", "opro"):
            assert cell["usage"]["calls"] == cell["task_usage"]["calls"] + cell["prompt_usage"]["calls"]
            assert cell["prompt_usage"]["calls"] > 0 and cell["error"] is None
    # the seed instruction has no "Level": wrong on every test example; a winner "Level N" gets N/10 right
    seed_cells = [c for c in cells if c["method"] == "seed"]
    assert all(c["test_accuracy"] == 0 and c["usage"]["calls"] == 0 for c in seed_cells)
    for cell in (c for c in cells if c["method"] in ("ape", "opro")):
        level = re.search(r"Level (\d+)", cell["instructions"]["self"])
        if level:
            assert cell["test_accuracy"] > 0
    human = next(c for c in cells if c["method"] == "human")
    assert len(human["human_accuracies"]) == 2 and human["human_accuracies"][0] < human["human_accuracies"][1]
    table = paths["markdown"].read_text()
    assert "| levels | human (best on test) |" in table and "| levels | opro |" in table
    assert paths["plot"].stat().st_size > 10_000


def test_harness_resumes_from_stored_cells_and_recomputes_when_the_settings_change(tmp_path, fresh_cache):
    models = scripted_models()
    run(config(tmp_path, methods=["seed", "ape"]), log=lambda line: None, tasks=[scripted_task()], models=models)
    asked = models.task.meter.usage.calls + models.prompt.meter.usage.calls
    lines = []
    run(config(tmp_path, methods=["seed", "ape"]), log=lines.append, tasks=[scripted_task()], models=models)
    assert models.task.meter.usage.calls + models.prompt.meter.usage.calls == asked
    assert all(": stored (" in line for line in lines)
    lines.clear()
    run(config(tmp_path, methods=["seed", "ape"], cap=30), log=lines.append, tasks=[scripted_task()], models=models)
    assert not any(": stored (" in line for line in lines)


def test_the_same_out_with_another_model_or_metric_recomputes_every_cell_and_study(tmp_path, fresh_cache):
    """Cells and the teleprompters' studies under one --out are reused only for the same models and metric."""
    first = scripted_models()
    run(config(tmp_path, methods=["seed", "ape"], seeds=1), log=lambda line: None, tasks=[scripted_task()], models=first)
    other = Models(scripted_lm(level_reply, name="scripted/other-task", cache=True),
                   scripted_lm(proposer_reply, name="scripted/prompt", cache=True))
    lines = []
    run(config(tmp_path, methods=["seed", "ape"], seeds=1), log=lines.append, tasks=[scripted_task()], models=other)
    assert not any(": stored (" in line for line in lines)
    assert other.task.meter.usage.model_calls > 0, "the other model's cells reused the first model's scores"
    lines.clear()
    task = scripted_task()
    task.metric = exact_match("sentiment", normalize=str.strip)  # another metric, same name of field
    run(config(tmp_path, methods=["seed", "ape"], seeds=1), log=lines.append, tasks=[task], models=other)
    assert not any(": stored (" in line for line in lines)
    studies = list((tmp_path / "bench" / "runs" / "levels__ape__seed0").glob("*.db"))
    names = optuna.get_all_study_names(f"sqlite:///{studies[0]}")
    assert len(names) == 3, "each model and metric gets its own study (run identity)"


def test_cells_of_a_method_whose_code_changed_are_recomputed(tmp_path, fresh_cache, monkeypatch):
    harness_run = importlib.import_module("benchmarks.harness.run")
    from benchmarks.harness.methods import method_code_hash

    hashes = {name: method_code_hash(name) for name in ("ape", "opro", "protegi", "pe2", "copro", "miprov2", "gepa")}
    assert len(set(hashes.values())) == len(hashes), "each method is hashed on its own file"
    assert method_code_hash("pe2-no-context") == hashes["pe2"]
    models = scripted_models()
    run(config(tmp_path, methods=["seed", "ape"]), log=lambda line: None, tasks=[scripted_task()], models=models)
    edited = {"ape": "edited"}
    monkeypatch.setattr(harness_run, "method_code_hash", lambda name: edited.get(name, method_code_hash(name)))
    lines = []
    run(config(tmp_path, methods=["seed", "ape"]), log=lines.append, tasks=[scripted_task()], models=models)
    assert [": stored (" in line for line in lines] == [True, False, True, False]  # seed 0, ape 0, seed 1, ape 1


def test_fingerprints_follow_the_modules_a_method_imports(monkeypatch):
    """PE2's cells go stale when the induction module or base.py changes; OPRO's only when what it runs does."""
    from benchmarks.harness.methods import _files, method_code_hash

    root = Path(__file__).resolve().parents[1]
    shown = {name: {str(path.relative_to(root)) for path in _files(name)} for name in ("pe2", "opro", "ape")}
    assert {"teleprompters/pe2.py", "teleprompters/induction.py", "teleprompters/base.py", "teleprompters/proposals.py",
            "teleprompters/context.py", "teleprompters/proposing.py", "teleprompters/planning.py",
            "teleprompters/reporting.py", "framework/engine/study.py", "framework/engine/evaluate.py", "benchmarks/harness/methods/pe2.py"} <= shown["pe2"]
    assert not {"teleprompters/ape.py", "teleprompters/pe2.py", "teleprompters/induction.py"} & shown["opro"]
    assert "framework/command/cli.py" not in shown["ape"]  # the command line runs no method
    before = {name: method_code_hash(name) for name in ("pe2", "ape", "opro", "copro")}
    original = Path.read_bytes
    for edited, stale in (("induction.py", {"pe2", "ape"}), ("base.py", {"pe2", "ape", "opro"})):
        monkeypatch.setattr(Path, "read_bytes", lambda self, edited=edited: original(self) + (b"#" if self.name == edited else b""))
        after = {name: method_code_hash(name) for name in before}
        assert {name for name in before if after[name] != before[name]} == stale, edited


def test_module_files_reads_imports_from_the_source(tmp_path, monkeypatch):
    """Function-level imports count; a name imported through a package counts as the module defining it."""
    from benchmarks.harness.sources import module_files

    package = tmp_path / "meth"
    package.mkdir()
    (package / "__init__.py").write_text("from .shared import helper\nfrom .other import unrelated\n")
    (package / "method.py").write_text("from meth import helper\n\ndef run():\n    from .lazy import LATER\n    return helper(LATER)\n")
    (package / "shared.py").write_text("from .deeper import CONSTANT\n\ndef helper(x):\n    return x + CONSTANT\n")
    for name, text in (("deeper", "CONSTANT = 1\n"), ("lazy", "LATER = 2\n"), ("other", "def unrelated():\n    pass\n")):
        (package / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    names = [path.name for path in module_files(["meth.method"], within=["meth"])]
    assert names == ["deeper.py", "lazy.py", "method.py", "shared.py"]
    for module in ("meth", "meth.method", "meth.shared", "meth.deeper", "meth.lazy", "meth.other"):
        sys.modules.pop(module, None)


def test_a_short_module_path_is_followed_like_the_module_it_names():
    """A method importing a module path kept for users (``cuecard._SHORT_PATHS``) depends on the same files
    as one importing the path where the module lives: its relative imports resolve from there."""
    from cuecard import _SHORT_PATHS

    from benchmarks.harness.sources import module_files

    for short, real in _SHORT_PATHS.items():
        sys.modules.pop(short, None)  # not imported under its short name yet: the finder answers
        assert module_files([short], within=["cuecard"]) == module_files([real], within=["cuecard"]), short
    engine = {path.name for path in module_files(["cuecard.engine.study"], within=["cuecard"])}
    assert {"study.py", "store.py", "sharing.py", "evaluate.py"} <= engine


def test_cost_is_reported_as_if_cold_beside_the_calls_that_reached_a_model(tmp_path, fresh_cache):
    models = scripted_models()
    first = json.loads(run(config(tmp_path, methods=["ape"], seeds=1), log=lambda line: None, tasks=[scripted_task()], models=models)["json"].read_text())
    again = json.loads(run(config(tmp_path / "again", methods=["ape"], seeds=1), log=lambda line: None, tasks=[scripted_task()], models=models)["json"].read_text())
    cold, warm = first["cells"][0], again["cells"][0]
    assert warm["usage"]["calls"] == cold["usage"]["calls"] > 0
    assert cold["usage"]["model_calls"] > 0 and warm["usage"]["model_calls"] == 0
    assert warm["instructions"] == cold["instructions"] and warm["test_accuracy"] == cold["test_accuracy"]


def test_a_method_that_fails_gets_its_reason_in_its_row(tmp_path, fresh_cache, monkeypatch):
    from benchmarks.harness import methods

    def broken(program, **kw):
        raise RuntimeError("the proposer wrote nothing usable\non two lines")

    real = methods.cuecard_runner
    monkeypatch.setattr(methods, "cuecard_runner", lambda name: broken if name == "pe2" else real(name))
    paths = run(config(tmp_path, methods=["seed", "pe2"], seeds=1), log=lambda line: None, tasks=[scripted_task()], models=scripted_models())
    table = paths["markdown"].read_text()
    assert "| levels | pe2 | — |" in table
    assert "failed: RuntimeError: the proposer wrote nothing usable on two lines" in table


def test_the_unspent_note_counts_as_the_cap_counts(tmp_path, fresh_cache, monkeypatch):
    """The cell's calls (replayed replies and evaluations read back included) are what its cap counted: the note
    says what they left of the cap, not what the compile's own report says was spent."""
    from benchmarks.harness import methods

    real = methods.cuecard_runner

    def half_planned(name):  # the method plans for half the harness cap, so half of it stays unspent
        return lambda program, **kw: real(name)(program, **{**kw, "cap": kw["cap"] // 2})

    monkeypatch.setattr(methods, "cuecard_runner", half_planned)
    paths = run(config(tmp_path, methods=["ape"], seeds=1, cap=80), log=lambda line: None, tasks=[scripted_task()],
                models=scripted_models())
    cell = json.loads(paths["json"].read_text())["cells"][0]
    unspent = [note for note in cell["notes"] if " calls unspent: " in note]
    assert cell["usage"]["calls"] <= 40 and unspent == [unspent[0]]
    assert unspent[0].startswith(f"stopped with {80 - cell['usage']['calls']} of 80 calls unspent: ")


def test_a_cell_won_by_the_methods_own_step_is_measured_against_its_best_reading(tmp_path, fresh_cache):
    def prompt_reply(messages):  # OPRO's steps propose Level 9; the readings of the task say Level 3
        return "<INS>Level 9: label the review.</INS>" if "<INS>" in messages[-1]["content"] else "Level 3: label the review."

    models = Models(scripted_lm(level_reply, name="scripted/task", cache=True), scripted_lm(prompt_reply, name="scripted/prompt3", cache=True))
    paths = run(config(tmp_path, methods=["seed", "opro"], seeds=1, cap=70), log=lambda line: None, tasks=[scripted_task()], models=models)
    cell = next(c for c in json.loads(paths["json"].read_text())["cells"] if c["method"] == "opro")
    assert cell["winner_source"].startswith("own step") and "Level 9" in cell["instructions"]["self"]
    assert 0 < cell["best_reading_test_accuracy"] < cell["test_accuracy"]
    row = next(line for line in paths["markdown"].read_text().splitlines() if line.startswith("| opro | 1 |"))
    assert row.endswith(f"| {100 * (cell['test_accuracy'] - cell['best_reading_test_accuracy']):+.1f} (1) |")


@pytest.mark.parametrize("ablation, component", [
    ("pe2-no-reasoning", "reasoning_template"),
    ("pe2-no-context", "context_specification"),
    ("pe2-no-description", "two_step_description"),
])
def test_pe2_ablations_run_as_methods_with_their_component_left_out_of_the_meta_prompt(tmp_path, fresh_cache, ablation, component):
    from cuecard.teleprompters.pe2 import REASONING_TEMPLATE, TASK_DESCRIPTION

    marks = {"reasoning_template": REASONING_TEMPLATE.splitlines()[0], "two_step_description": TASK_DESCRIPTION.splitlines()[0],
             "context_specification": "<<review>>"}  # the template's input slot
    shown = {}
    for method in ("pe2", ablation):
        models = scripted_models()
        paths = run(config(tmp_path / method, methods=[method], seeds=1), log=lambda line: None, tasks=[scripted_task()], models=models)
        cell = json.loads(paths["json"].read_text())["cells"][0]
        assert cell["error"] is None and cell["usage"]["calls"] <= CAP
        prompts = ["\n".join(m["content"] for m in request) for request in models.prompt.engine.requests]
        assert prompts, "PE2 asked the prompt model nothing"
        shown[method] = [marks[component] in prompt for prompt in prompts]
    assert cell["knobs"][component] is False
    assert any(shown["pe2"]) and not any(shown[ablation])


def test_the_table_merges_a_note_the_seeds_share_and_says_how_many_had_it():
    from benchmarks.harness import CellResult

    def cell(seed, *notes):
        return CellResult(task="t", method="m", seed=seed, fingerprint="f", test_accuracy=0.5, notes=list(notes))

    stop = "search stopped: t/m/seed{}: cap of 40 LM requests reached; the best candidate scored so far wins"
    row = summarize([cell(0, stop.format(0), "a detail"), cell(1, stop.format(1), "reached the cap of 40 calls"), cell(2)])[0]
    assert row.note == ("reached the cap of 40 calls (1 of 3 seeds); "
                        "search stopped: cap of 40 LM requests reached; the best candidate scored so far wins (2 of 3 seeds)")


def test_the_table_shows_a_stop_reason_once_when_the_unspent_note_repeats_it():
    from benchmarks.harness import CellResult

    stop = "stopped: 37 requests left under the cap"
    unspent = f"stopped with 25 of 100 calls unspent: {stop}"
    cell = CellResult(task="t", method="m", seed=0, fingerprint="f", test_accuracy=0.5, notes=[stop, unspent])
    assert summarize([cell])[0].note == unspent


def test_target_rows_measure_the_human_gap_the_dspy_best_the_worst_task_and_unexplained_stops():
    from benchmarks.harness import CellResult
    from benchmarks.harness.results import target_rows, targets_table

    def cell(task, method, accuracy, calls=100, notes=(), seed=0):
        c = CellResult(task=task, method=method, seed=seed, fingerprint="f", test_accuracy=accuracy, notes=list(notes))
        c.usage.calls = calls
        return c

    cells = [
        cell("a", "seed", 0.1, 0), cell("b", "seed", 0.2, 0),
        CellResult(task="a", method="human", seed=None, fingerprint="f", human_accuracies=[0.4, 0.6]),
        CellResult(task="b", method="human", seed=None, fingerprint="f", human_accuracies=[0.6]),
        cell("a", "mine", 0.3), cell("a", "mine", 0.3, seed=1), cell("b", "mine", 0.2, calls=50),
        cell("b", "mine", 0.2, calls=50, notes=["stopped: nothing new to try"], seed=1),
        cell("a", "harmful", 0.1), cell("b", "harmful", 0.1, calls=95),
        cell("a", "copro", 0.25), cell("b", "copro", 0.25), cell("a", "gepa", 0.1), cell("b", "gepa", 0.1),
    ]
    mine, harmful = target_rows(summarize(cells), cells, ["mine", "harmful"], ["copro", "gepa"], cap=100)
    # gap: (0.5 - 0.1) + (0.6 - 0.2) = 0.8; gained: (0.3 - 0.1) + (0.2 - 0.2) = 0.2
    assert mine.gap_closed == pytest.approx(0.25) and mine.gap_tasks == 2
    assert (mine.best_baseline, mine.best_baseline_mean) == ("copro", pytest.approx(0.25))
    assert mine.mean_test == pytest.approx(0.25)
    assert (mine.worst_task, mine.worst_vs_seed) == ("b", pytest.approx(0.0))
    assert (mine.unspent, mine.unspent_early, mine.cells) == (2, 1, 4)
    assert harmful.worst_vs_seed == pytest.approx(-0.1) and harmful.worst_task == "b"
    assert harmful.unspent == 0
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in targets_table([mine, harmful]).splitlines()[2:]]
    verdicts = [[row[i] for i in (2, 5, 7, 9, 11)] for row in rows]
    assert verdicts == [["not met", "met", "met", "not met", "not met"], ["not met", "not met", "not met", "not met", "met"]]


def test_target_rows_measure_the_mean_gain_over_the_seed_against_fifteen_points():
    from benchmarks.harness import CellResult
    from benchmarks.harness.results import target_rows, targets_table

    def cell(task, method, accuracy, seed=0):
        return CellResult(task=task, method=method, seed=seed, fingerprint="f", test_accuracy=accuracy)

    cells = [
        cell("a", "seed", 0.1), cell("b", "seed", 0.5),
        cell("a", "strong", 0.4), cell("a", "strong", 0.2, seed=1), cell("b", "strong", 0.6),  # +0.2, +0.1
        cell("a", "weak", 0.2), cell("b", "weak", 0.6),  # +0.1, +0.1
    ]
    strong, weak = target_rows(summarize(cells), cells, ["strong", "weak"], [], cap=100)
    assert strong.mean_gain == pytest.approx(0.15) and weak.mean_gain == pytest.approx(0.1)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in targets_table([strong, weak]).splitlines()[2:]]
    assert [(row[8], row[9]) for row in rows] == [("+15.0", "met"), ("+10.0", "not met")]


def test_a_cell_stopped_under_the_cap_misses_the_spend_target_unless_nothing_was_left_to_score():
    """Goal 4 of the quality round: at least 90% of the cap, or the stop says nothing was left to score in it
    (no room for one more step, nothing new to try); a stop for no improvement leaves the cap unspent."""
    from cuecard.stopping import StopKind, StopReason

    from benchmarks.harness import CellResult
    from benchmarks.harness.results import _unspent

    def cell(calls, reason):
        note = f"search stopped: {reason.text}"
        c = CellResult(task="t", method="m", seed=0, fingerprint="f", test_accuracy=0.5, notes=[note, f"stopped with {100 - calls} of 100 calls unspent: {reason.text}"])
        c.usage.calls = calls
        return c

    no_gain = StopReason(kind=StopKind.NO_IMPROVEMENT, detail="Monte Carlo round 1: no gain over 0.933")
    no_room = StopReason(kind=StopKind.NO_ROOM, detail="16 requests left under the cap, fewer than the smallest step (19)")
    assert _unspent(cell(85, no_gain), cap=100) == (True, True)
    assert _unspent(cell(85, no_room), cap=100) == (True, False)
    assert _unspent(cell(95, no_gain), cap=100) == (False, False)


def test_bad_settings_are_refused_with_the_field_named(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        HarnessConfig(methods=["ape", "dspy-magic"])
    with pytest.raises(ValueError, match="expected ii:NAME"):
        HarnessConfig(tasks=["sentiment"])
    with pytest.raises(ValueError, match="cap"):
        HarnessConfig(cap=0)
    assert markdown_table(summarize([])).count("\n") == 1  # the header alone


def _worker_command(args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    return dict(args=[sys.executable, str(REPO / "tests" / "harness_worker.py"), *args], cwd=REPO, env=env, text=True)


def test_ctrl_c_stops_the_command_with_exit_130_and_keeps_the_finished_cells(tmp_path):
    args = ["--task", "ii:levels", "--methods", "seed,ape,opro", "--seeds", "40", "--cap", "40",
            "--train", "12", "--dev", "8", "--test", "12", "--out", str(tmp_path / "bench")]
    # SIGINT as a terminal delivers it (a shell may start background jobs with SIGINT ignored)
    worker = subprocess.Popen(**_worker_command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in worker.stdout:
            if " / opro / seed 1: " in line:  # some cells are stored; the next compile has started
                break
        time.sleep(0.3)
        worker.send_signal(signal.SIGINT)
        _, stderr = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert worker.returncode == 130, stderr[-2000:]
    assert "interrupted: finished cells are stored" in stderr
    stored = list((tmp_path / "bench" / "cells").glob("*.json"))
    assert 5 <= len(stored) < 1 + 2 * 40
    report = subprocess.run(**_worker_command([*args, "--report-only"]), capture_output=True, timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    assert report.stdout.count(": stored (") == len(stored) and ": missing (not run yet" in report.stdout
    assert "| levels | opro |" in report.stdout


# ---- the real command on the embedded model ---------------------------------------------------------
@pytest.mark.model
def test_harness_command_runs_on_the_embedded_model_given_as_a_gguf_path(tmp_path):
    from cuecard.clients.local import embedded_model_path

    out = tmp_path / "bench"
    command = [
        sys.executable, "-m", "benchmarks.harness", "--task", f"jsonl:{REPO / 'examples' / 'data' / 'reviews.jsonl'}:review:sentiment",
        "--methods", "seed,ape,copro", "--seeds", "1", "--cap", "24", "--train", "6", "--dev", "4", "--test", "6",
        "--task-model", str(embedded_model_path()), "--out", str(out),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| reviews | ape |" in done.stdout and "| reviews | copro |" in done.stdout
    cells = {c["method"]: c for c in json.loads((out / "results.json").read_text())["cells"]}
    for method in ("ape", "copro"):
        assert cells[method]["usage"]["calls"] <= 24
        assert cells[method]["error"] or cells[method]["test_accuracy"] is not None
    assert cells["ape"]["prompt_usage"]["calls"] > 0 and cells["ape"]["task_usage"]["calls"] > 0
    assert (out / "accuracy_vs_calls.png").is_file()


def test_task_docstring_examples_hold():
    import doctest

    import benchmarks.harness.tasks as tasks_module

    failures, tried = doctest.testmod(tasks_module, raise_on_error=False)
    assert tried > 0 and failures == 0


# ---- task halves and provenance -------------------------------------------------------------------
def test_the_visible_tasks_split_into_fixed_halves_by_alphabetical_alternation(shared_data):
    from benchmarks.harness.tasks import half_of, task_halves

    halves = task_halves(shared_data)
    both = halves["tuning"] + halves["report"]
    assert len(both) == len(set(both)) == 25 and len(halves["tuning"]) == 13
    for kind in ("ii", "bbh"):
        names = sorted(spec for spec in both if spec.startswith(f"{kind}:"))
        assert [spec in halves["tuning"] for spec in names] == [i % 2 == 0 for i in range(len(names))]
    assert half_of("antonyms", halves) == "tuning" and half_of("diff", halves) == "report" and half_of("levels", halves) is None


def test_every_visible_task_has_a_terse_seed_of_its_own_and_the_generic_setting_overrides_it(shared_data):
    from benchmarks.harness.run import load_task
    from benchmarks.harness.tasks import DEFAULT_SEED_INSTRUCTION, task_halves

    specs = task_halves(shared_data)["tuning"] + task_halves(shared_data)["report"]
    terse = {spec: load_task(spec, shared_data, "terse").seed_instruction for spec in specs}
    missing = [spec for spec, seed in terse.items() if seed == DEFAULT_SEED_INSTRUCTION]
    assert not missing, f"the terse setting would start these tasks from the generic seed: {missing}"
    assert {load_task(spec, shared_data, "generic").seed_instruction for spec in specs} == {DEFAULT_SEED_INSTRUCTION}


def test_each_cell_says_where_its_winner_came_from_and_the_table_counts_it(tmp_path, fresh_cache):
    paths = run(config(tmp_path, methods=["seed", "ape", "opro"], seeds=1), tasks=[scripted_task()], models=scripted_models())
    payload = json.loads(paths["json"].read_text())
    for cell in payload["cells"]:
        if cell["instructions"] == {"self": "Classify the sentiment."}:
            assert cell["winner_source"] == "seed"
        elif cell["method"] == "ape":  # APE's candidates are its induced proposals
            assert cell["winner_source"] == "own step: induced-forward"
        else:
            assert cell["winner_source"] in ("reading",) or cell["winner_source"].startswith("own step: opro")
        if cell["method"] != "seed":
            assert cell["acceptance"] is not None and cell["search_best_source"] is not None
    table = paths["markdown"].read_text()
    assert "| winner from |" in table and "## Where the winners came from" in table
    ape = next(c for c in payload["cells"] if c["method"] == "ape")
    kind = ape["winner_source"].split(":")[0]
    assert f"| levels | ape | {100 * ape['test_accuracy']:.1f} ± 0.0 | 1 | {100 * ape['dev_accuracy']:.1f} | {kind} 1 |" in table


def test_the_provenance_table_counts_winners_by_source_and_the_own_steps_gain():
    from benchmarks.harness import CellResult
    from benchmarks.harness.results import provenance, provenance_table

    assert (provenance("program"), provenance("task-reading"), provenance("opro", 2)) == ("seed", "reading", "own step: opro, round 2")

    def cell(task, source, accuracy, seed=0):
        return CellResult(task=task, method="m", seed=seed, fingerprint="f", test_accuracy=accuracy, winner_source=source)

    cells = [cell("a", "seed", 0.1), cell("a", "own step: opro, round 1", 0.4, 1), cell("b", "own step: opro", 0.2), cell("b", "reading", 0.5, 1)]
    cells[1].best_reading_test_accuracy = 0.25
    row = provenance_table(cells, {"a": 0.1, "b": 0.3}).splitlines()[2]
    assert row == "| m | 4 | 1 | 1 | 2 | 0 | +10.0 (2) | +15.0 (1) |"  # (0.4 - 0.1 + 0.2 - 0.3) / 2; 0.4 - 0.25

    # the answer-form check's winners count under the candidate they extend; beside a bare reading only bare own steps
    cells += [cell("a", "seed + answer form", 0.6, 2), cell("b", "own step: opro, round 2 + answer form", 0.9, 2)]
    cells[-1].best_reading_test_accuracy = 0.5
    row = provenance_table(cells, {"a": 0.1, "b": 0.3}).splitlines()[2]
    assert row == "| m | 6 | 2 | 1 | 3 | 2 | +26.7 (3) | +15.0 (1) |"  # (0.3 - 0.1 + 0.6) / 3


def test_a_dspy_program_returned_with_demos_is_not_named_the_bare_seed():
    from types import SimpleNamespace

    from benchmarks.harness import CellResult
    from benchmarks.harness.results import provenance_counts, provenance_table, source_kind
    from benchmarks.harness.run import record_provenance

    task = SimpleNamespace(seed_instruction="Classify the sentiment.")
    sources = []
    for demos in ([], [dspy.Example(review="great", sentiment="positive")]):
        program = dspy.Predict(dspy.Signature("review -> sentiment", "Classify the sentiment."))
        program.demos = demos
        cell = CellResult(task="t", method="miprov2-fewshot", seed=0, fingerprint="f", test_accuracy=0.5,
                          instructions={"self": "Classify the sentiment."})
        record_provenance(cell, program, task, [], models=None)
        sources.append(cell)
    assert [c.winner_source for c in sources] == ["seed", "seed + demos"]
    assert source_kind("seed + demos") == ("seed", False)
    assert provenance_counts(sources) == "seed 1, seed + demos 1"
    assert provenance_table(sources, {"t": 0.5}).splitlines()[2].startswith("| miprov2-fewshot | 2 | 2 | 0 | 0 | 0 |")


def test_a_winner_from_the_answer_form_check_is_named_by_the_candidate_it_extends(tmp_path, fresh_cache):
    from cuecard.teleprompters.proposing import ANSWER_FORM

    from benchmarks.harness.results import source_kind

    alone = ANSWER_FORM.format(fields="sentiment")

    def wordy_reply(messages):  # right on every review, inside a sentence unless asked for the label alone
        text = "\n".join(m["content"] for m in messages)
        label = GOLD[re.search(r"Review: (.*)", messages[-1]["content"]).group(1)]
        return label if alone in text else f"The sentiment is {label}."

    models = Models(scripted_lm(wordy_reply, name="scripted/wordy", cache=True), scripted_lm(proposer_reply, name="scripted/prompt", cache=True))
    paths = run(config(tmp_path, methods=["seed", "ape"], seeds=1), log=lambda line: None, tasks=[scripted_task()], models=models)
    cell = next(c for c in json.loads(paths["json"].read_text())["cells"] if c["method"] == "ape")
    assert cell["instructions"]["self"].endswith(alone) and cell["test_accuracy"] == 1.0
    base = cell["instructions"]["self"].removesuffix(alone).strip()
    expected = "seed" if base == "Classify the sentiment." else "own step"  # APE's candidates are the seed and its own
    assert source_kind(cell["winner_source"]) == (expected, True) and cell["winner_source"].endswith(" + answer form")
    assert f"{expected} + answer form 1" in paths["markdown"].read_text()


# ---- DSPy as its users run it ---------------------------------------------------------------------
def copro_prompt_reply(messages):
    """A prompt model that answers in DSPy's chat format (what COPRO's own default adapter asks for)."""
    level = random.Random(messages[-1]["content"]).randint(4, 9)
    return (f"[[ ## proposed_instruction ## ]]\nLevel {level}: label the review.\n\n"
            "[[ ## proposed_prefix_for_output_field ## ]]\nSentiment:\n\n[[ ## completed ## ]]")


def test_dspy_optimizers_call_the_prompt_model_with_their_own_adapter_and_the_program_with_cuecards(tmp_path, fresh_cache):
    prompt = scripted_lm(copro_prompt_reply, name="scripted/chat-prompt", cache=True)
    task = scripted_lm(level_reply, name="scripted/task", cache=True)
    paths = run(config(tmp_path, methods=["seed", "copro"], seeds=1, cap=40), tasks=[scripted_task()], models=Models(task, prompt))
    cell = next(c for c in json.loads(paths["json"].read_text())["cells"] if c["method"] == "copro")
    assert cell["error"] is None, cell["error"]
    prompt_requests = [m[-1]["content"] for m in prompt.engine.requests]
    task_requests = [m[-1]["content"] for m in task.engine.requests]
    assert prompt_requests and all("[[ ## " in text for text in prompt_requests)  # DSPy's ChatAdapter
    assert task_requests and not any("[[ ## " in text for text in task_requests)  # the program under cuecard's plain adapter
    assert 1 <= len(cell["proposals"]) <= 3 and all(p.startswith("Level ") for p in cell["proposals"])
    assert any(n.startswith("proposals quoted: 'Level ") for n in cell["notes"])
    assert "proposals: 'Level " in paths["markdown"].read_text()
    assert dspy.settings.adapter is None  # nothing was set for the whole process


def test_miprov2_fewshot_is_a_reference_row_with_demos_planned_under_the_cap():
    from benchmarks.harness.methods import DEFAULT_METHODS, DSPY_METHOD_NAMES, DSPY_REFERENCES
    from benchmarks.harness.methods.miprov2 import _mipro_cost, _plan_mipro

    assert "miprov2-fewshot" in DEFAULT_METHODS and "miprov2-fewshot" in DSPY_REFERENCES and "miprov2-fewshot" not in DSPY_METHOD_NAMES
    plan = _plan_mipro(100, n_train=20, n_dev=15, predictors=1, fewshot=True)
    assert plan["planned"] <= 100
    # two variables per predictor with demos: MIPROv2's rule gives more trials than zero-shot for the same candidates
    assert _mipro_cost(3, 6, False, n_train=20, n_dev=15, predictors=1, minibatch=False, fewshot=True) == 20 + 3 + 3 + 15 * 7


@pytest.mark.parametrize("method, mark", [
    ("ape-form-clause", "look at the form of the outputs"),
    ("ape-paper-forward", "What I had asked the friend to do was"),
    ("ape-paper-reverse", "What goes in the blank?"),
    ("ape-reverse", "Write the missing instruction"),
    ("opro-paper", "You are looking for an instruction"),
])
def test_template_ablations_run_as_methods_with_their_own_meta_prompt(tmp_path, fresh_cache, method, mark):
    models = scripted_models()
    paths = run(config(tmp_path, methods=[method], seeds=1), log=lambda line: None, tasks=[scripted_task()], models=models)
    cell = json.loads(paths["json"].read_text())["cells"][0]
    assert cell["error"] is None and cell["usage"]["calls"] <= CAP
    prompts = ["\n".join(m["content"] for m in request) for request in models.prompt.engine.requests]
    assert any(mark in prompt for prompt in prompts), prompts[:1]
    general = "In one sentence, what was the instruction?"  # the default forward template
    assert not any(general in prompt for prompt in prompts)


def test_the_majority_row_gives_the_train_splits_commonest_answer_everywhere_with_no_lm_call(tmp_path, fresh_cache):
    """What answering the same label every time scores: a gain below it learned the answer's form, not the task."""
    models = scripted_models()
    task = scripted_task()
    paths = run(config(tmp_path, methods=["majority"], seeds=2), log=lambda line: None, tasks=[task], models=models)
    assert models.task.meter.usage.calls == 0 and models.prompt.meter.usage.calls == 0
    cells = [c for c in json.loads(paths["json"].read_text())["cells"] if c["method"] == "majority"]
    assert [c["seed"] for c in cells] == [0, 1]
    for cell in cells:
        splits = task.splits(cell["seed"], 12, 8, 12)
        labels = [e.sentiment for e in splits.train]
        commonest = max(labels, key=labels.count)
        assert labels.count(commonest) > len(labels) / 3, "the scripted reviews have three labels"
        assert cell["test_accuracy"] == sum(e.sentiment == commonest for e in splits.test) / 12
        assert cell["dev_accuracy"] == sum(e.sentiment == commonest for e in splits.dev) / 8
        assert repr(commonest) in cell["notes"][0]
    row = next(line for line in paths["markdown"].read_text().splitlines() if line.startswith("| levels | majority |"))
    assert "always answers" in row
    paths = run(config(tmp_path, methods=["seed", "majority", "ape"], seeds=1), log=lambda line: None, tasks=[task], models=models)
    judged = [t["method"] for t in json.loads(paths["json"].read_text())["targets"]]
    assert judged == ["ape"], "a baseline is not judged against the targets"


@pytest.mark.parametrize("cls", ["APE", "OPRO", "PE2", "ProTeGi"])
def test_a_cuecard_method_is_planned_for_the_predictors_of_the_program_it_is_given(cls):
    """The harness plans each teleprompter's knobs for the program's own predictors: a two-predictor
    pipeline gets the plan its teleprompter makes for two, and that plan fits the cap."""
    import cuecard.teleprompters
    from sentiment_cases import Pipeline

    from benchmarks.harness.methods.common import plan_for_program

    cls = getattr(cuecard.teleprompters, cls)
    kw = {"cap": 200, "train": REVIEWS[:12], "dev": REVIEWS[12:20]}
    one = plan_for_program(cls, dspy.Predict("review -> sentiment"), kw)
    two = plan_for_program(cls, Pipeline(), kw)
    def same(knobs):  # a policy object compares by its settings
        return {k: (type(v).__name__, vars(v)) if k == "policy" else v for k, v in knobs.items()}

    assert same(one.knobs) == same(cls.plan(200, 12, 8, predictors=1))
    assert same(two.knobs) == same(cls.plan(200, 12, 8, predictors=2))
    assert two.planned_calls == cls.fits(two.knobs, 200, 12, 8, 2) <= 200
    assert (same(one.knobs), one.planned_calls) != (same(two.knobs), two.planned_calls), "the plan depends on the predictors"
