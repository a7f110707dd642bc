"""Teleprompters and programs found through entry points; framework/ stands below them."""

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUECARD = Path(sys.executable).parent / "cuecard"

SIXTH = '''
"""A teleprompter from a third-party package: it tries "Answer in one word." against the seed."""

from cuecard.policies import FullEvaluation
from cuecard.program import get_instructions
from cuecard.teleprompters import Teleprompter, TeleprompterConfig
from pydantic import Field


class SixthConfig(TeleprompterConfig):
    wording: str = Field("Answer in one word.", description="the one instruction it tries")


class Sixth(Teleprompter):
    name = "sixth"
    summary = "tries one fixed wording against the seed"
    Config = SixthConfig
    default_policy = FullEvaluation

    def search(self, ctx):
        seed = get_instructions(ctx.student)
        ctx.engine.add_candidate({name: self.config.wording for name in seed}, origin="sixth")
        return ctx.allocate()
'''


@pytest.fixture
def sixth_package(tmp_path):
    """A throwaway package with its own ``cuecard.teleprompters`` entry point, importable through PYTHONPATH."""
    site = tmp_path / "site"
    (site / "sixth_method").mkdir(parents=True)
    (site / "sixth_method" / "__init__.py").write_text(SIXTH)
    info = site / "sixth_method-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sixth-method\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cuecard.teleprompters]\nsixth = sixth_method:Sixth\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return env


def test_the_five_teleprompters_and_the_programs_are_entry_points():
    names = {entry.name for entry in importlib.metadata.entry_points(group="cuecard.teleprompters")}
    assert names == {"ape", "protegi", "opro", "pe2", "bpo"}
    programs = {entry.name for entry in importlib.metadata.entry_points(group="cuecard.programs")}
    assert {"classify", "qa", "extract", "two-stage", "respond"} <= programs


def test_framework_imports_nothing_from_teleprompters_or_programs():
    offending = []
    for path in sorted((ROOT / "framework").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.startswith(("cuecard.teleprompters", "cuecard.programs")) for name in names):
                offending.append(f"{path.name}:{node.lineno}")
    assert not offending, f"framework/ imports what stands on it: {offending}"


def test_a_sixth_teleprompter_from_another_package_is_listed(sixth_package):
    listing = subprocess.run([str(CUECARD), "teleprompters"], env=sixth_package, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "sixth: tries one fixed wording against the seed" in listing.stdout
    assert "--set wording=...  (default 'Answer in one word.'): the one instruction it tries" in listing.stdout


@pytest.mark.model
def test_a_sixth_teleprompter_from_another_package_compiles_from_the_command_line(sixth_package, tmp_path):
    train = tmp_path / "train.jsonl"
    rows = [{"review": "Loved it.", "sentiment": "positive"}, {"review": "Awful.", "sentiment": "negative"},
            {"review": "Great fun.", "sentiment": "positive"}, {"review": "Boring.", "sentiment": "negative"}]
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "sixth.json"
    command = [str(CUECARD), "compile", "--program", "classify", "--signature", "review -> sentiment", "--labels",
               "positive,negative", "--train", str(train), "--teleprompter", "sixth", "--set", "wording=Say positive or negative.",
               "--quiet", "--out", str(out), "--run-dir", str(tmp_path / "runs")]
    result = subprocess.run(command, env=sixth_package, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())["cuecard"]["report"]
    assert report["teleprompter"] == "sixth"
    assert {"Say positive or negative."} <= {c["instructions"]["predict"] for c in report["candidates"]}


def test_a_sixth_teleprompter_from_another_package_is_a_harness_method(sixth_package, tmp_path):
    """The harness reads the registry: the third party's method runs beside ours with no file of its own."""
    out = tmp_path / "bench"
    command = [sys.executable, str(ROOT / "tests" / "harness_worker.py"), "--task", "ii:levels", "--methods", "seed,sixth",
               "--seeds", "1", "--cap", "40", "--train", "12", "--dev", "8", "--test", "12", "--out", str(out)]
    env = {**sixth_package, "PYTHONPATH": os.pathsep.join([sixth_package["PYTHONPATH"], str(ROOT), str(ROOT / "tests")])}
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    cells = {c["method"]: c for c in json.loads((out / "results.json").read_text())["cells"]}
    assert cells["sixth"]["error"] is None and cells["sixth"]["test_accuracy"] is not None
    assert 0 < cells["sixth"]["usage"]["calls"] <= 40
    assert any("no plan() of its own" in note for note in cells["sixth"]["notes"])
