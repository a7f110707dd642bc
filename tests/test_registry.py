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

from cuecard.engine.policies import FullEvaluation
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


CRITIC = '''
"""A third party's teleprompter with command-line inputs of its own: a file, a model and a switch."""

import json
from pathlib import Path

from cuecard.command.cli_inputs import CLIInput
from cuecard.errors import DataFileError
from cuecard.engine.policies import FullEvaluation
from cuecard.program import get_instructions
from cuecard.teleprompters import Teleprompter


def read_wordings(path):
    file = Path(path)
    if not file.is_file():
        raise DataFileError(f"{path}: no wordings file")
    return json.loads(file.read_text())


class Critic(Teleprompter):
    name = "critic"
    summary = "tries the wordings of a file against the seed"
    default_policy = FullEvaluation
    cli_inputs = (
        CLIInput(flag="--wordings", keyword="wordings", kind="file", read=read_wordings, help="a JSON list of instructions"),
        CLIInput(flag="--critic-model", keyword="critic_lm", kind="model", help="the critic"),
        CLIInput(flag="--loud", keyword="loud", kind="switch", help="say more"),
    )

    def __init__(self, *, wordings=(), critic_lm=None, loud=False, **kwargs):
        super().__init__(**kwargs)
        self.wordings, self.critic_lm, self.loud = list(wordings), critic_lm, loud

    def identity_extras(self):
        return {"wordings": self.wordings}

    def search(self, ctx):
        seed = get_instructions(ctx.student)
        for wording in self.wordings:
            ctx.engine.add_candidate({name: wording for name in seed}, origin="critic")
        ctx.note(f"critic model: {self.critic_lm.model if self.critic_lm else None}; loud: {self.loud}")
        return ctx.allocate()
'''


def install_in_process(tmp_path, monkeypatch, package: str, source: str, entry_points: str) -> None:
    """A throwaway package with its own entry points, on this process's path (undone after the test)."""
    site = tmp_path / f"site-{package}"
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(source)
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, package, raising=False)


@pytest.fixture
def critic_installed(tmp_path, monkeypatch):
    install_in_process(tmp_path, monkeypatch, "critic_method", CRITIC, "[cuecard.teleprompters]\ncritic = critic_method:Critic\n")


def test_a_third_party_method_declares_its_own_command_line_inputs(critic_installed, tmp_path, monkeypatch, capsys):
    """Its file, model and switch reach its constructor through the real ``main``; the command names no method."""
    import cuecard
    from cuecard.clients.testing import scripted_lm
    from cuecard.command.cli import main

    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    help_text = capsys.readouterr().out
    critic_group = help_text[help_text.index("critic options"):]
    assert "--wordings FILE" in critic_group and "--critic-model MODEL" in critic_group and "--loud" in critic_group
    assert "--preferences" not in critic_group.split("options:")[1]  # BPO's flags sit in BPO's group

    monkeypatch.setattr(cuecard, "LM", lambda spec, **kw: scripted_lm(lambda m: "positive", name=f"scripted/{spec}"))
    monkeypatch.chdir(tmp_path)
    reviews = ROOT / "examples" / "data" / "reviews.jsonl"
    wordings = tmp_path / "wordings.json"
    wordings.write_text(json.dumps(["Say positive or negative.", "Answer with the sentiment."]))
    base = ["compile", "--program", "classify", "--signature", "review -> sentiment", "--labels", "positive,negative",
            "--train", str(reviews), "--teleprompter", "critic", "--quiet", "--out", "critic.json"]
    assert main([*base, "--wordings", str(wordings), "--critic-model", "judge-7b", "--loud"]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "critic.json").read_text())["cuecard"]["report"]
    tried = {c["instructions"]["predict"] for c in report["candidates"]}
    assert {"Say positive or negative.", "Answer with the sentiment."} <= tried
    assert "critic model: scripted/judge-7b; loud: True" in report["notes"]

    capsys.readouterr()
    assert main([*base, "--wordings", str(tmp_path / "none.json")]) == 1  # the method's reader names the file
    assert "none.json: no wordings file" in capsys.readouterr().err
    for flag, value in (("--preferences", "records.json"), ("--judge-model", "judge")):
        with pytest.raises(SystemExit) as exit_:
            main([*base, flag, value])
        assert exit_.value.code == 2 and f"{flag} is not an option of --teleprompter critic" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*base[:-5], "--teleprompter", "ape", "--wordings", str(wordings), "--loud", "--out", "ape.json"])
    assert exit_.value.code == 2 and "--loud, --wordings are not options of --teleprompter ape" in capsys.readouterr().err


def test_the_command_line_names_no_method_but_its_default():
    """Methods' flags, readers and constructor checks live with the methods (their ``cli_inputs``)."""
    import re

    text = (ROOT / "framework" / "command" / "cli.py").read_text(encoding="utf-8").lower()
    default = re.search(r'"--teleprompter".*?default="(\w+)"', text, re.DOTALL).group(1)
    named = [name for name in importlib.metadata.entry_points(group="cuecard.teleprompters").names
             if name != default and re.search(rf"\b{re.escape(name)}\b", text)]
    assert not named and "preferences" not in text and "judge" not in text and "inspect.signature" not in text


def test_method_inputs_that_clash_are_refused_with_one_line():
    import argparse

    from cuecard.command.cli_inputs import CLIInput, add_method_options
    from cuecard.registry import RegistryError

    class One:
        cli_inputs = (CLIInput(flag="--notes", keyword="notes", kind="file"),)

    class Two:
        cli_inputs = (CLIInput(flag="--notes", keyword="notes", kind="switch"),)

    class Three:
        cli_inputs = (CLIInput(flag="--seed", keyword="seed", kind="value"),)

    parser = argparse.ArgumentParser()
    add_method_options(parser, {"one": One, "also": One})  # declared alike: one shared flag
    assert parser.parse_args(["--notes", "n.txt"]).method_input__notes == "n.txt"
    with pytest.raises(RegistryError, match="declare --notes as different kinds of input: one \\(file\\), two \\(switch\\)"):
        add_method_options(argparse.ArgumentParser(), {"one": One, "two": Two})
    seeded = argparse.ArgumentParser()
    seeded.add_argument("--seed")
    with pytest.raises(RegistryError, match="'three' declares --seed, which the cuecard command has already"):
        add_method_options(seeded, {"three": Three})


PLUGINS = '''
import dspy
from cuecard.engine.policies import FullEvaluation


class Coin(FullEvaluation):
    name = "coin"


class Echo(dspy.Module):
    """A third party's program."""

    def __init__(self, word="hi"):
        super().__init__()
        self.word = word
        self.respond = dspy.Predict("request -> response")
        self.cuecard_spec = {"class": "Echo", "kwargs": {"word": word}}

    def forward(self, request):
        return self.respond(request=request)
'''


def test_policies_are_entry_points_named_as_their_classes():
    from cuecard.engine import policies
    from cuecard.registry import policies as registered

    found = registered()
    assert set(found) == {"full", "multistage", "ucb", "ucb-e", "successive-rejects", "successive-halving", "wilcoxon"}
    assert all(cls.name == name and issubclass(cls, policies.Policy) for name, cls in found.items())
    teleprompters = {entry.name: entry.load() for entry in importlib.metadata.entry_points(group="cuecard.teleprompters")}
    assert all(cls.name == name for name, cls in teleprompters.items())


def test_a_third_party_policy_is_found_by_make_policy_and_the_command_line(tmp_path, monkeypatch, capsys):
    from cuecard.command.cli import main
    from cuecard.engine.policies import make_policy

    install_in_process(tmp_path, monkeypatch, "coin_policy", PLUGINS, "[cuecard.policies]\ncoin = coin_policy:Coin\n")
    assert make_policy("coin").name == "coin"
    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    assert "how candidates are scored: coin, full, multistage," in " ".join(capsys.readouterr().out.split())


def test_one_program_registry_rebuilds_a_wrapped_program_by_its_entry_point(tmp_path, monkeypatch):
    from cuecard.errors import ConfigError
    from cuecard.programs import Classify, Rewritten

    wrapped = Rewritten({"class": "Classify", "kwargs": {"signature": "review -> sentiment", "labels": ["a", "b"]}})
    assert isinstance(wrapped.program, Classify) and wrapped.fields == ["review"]
    with pytest.raises(ConfigError, match="'Echo' is not a registered program"):
        Rewritten({"class": "Echo", "kwargs": {"word": "yo"}})
    install_in_process(tmp_path, monkeypatch, "echo_program", PLUGINS, "[cuecard.programs]\necho = echo_program:Echo\n")
    assert Rewritten({"class": "Echo", "kwargs": {"word": "yo"}}).program.word == "yo"


def test_whether_a_storage_is_a_database_is_decided_in_one_place(tmp_path):
    """``store.is_database`` decides; the claims follow it (no second copy of the test in sharing.py)."""
    from cuecard.engine.sharing import NoClaims, open_claims
    from cuecard.engine.store import is_database

    for url in (":memory:", "sqlite:///:memory:", "runs/x.log"):
        assert not is_database(url) and isinstance(open_claims(url, "r"), NoClaims)
    claims = open_claims(f"sqlite:///{tmp_path / 'study.db'}", "r")
    try:
        assert claims.shared
    finally:
        claims.close()
    copies = [path.name for path in (ROOT / "framework").rglob("*.py") if '":memory:"' in path.read_text(encoding="utf-8")]
    assert copies == ["store.py"]


TEMPLATES_SHARED: dict[tuple[str, str], set[str]] = {}
"""Names one teleprompter may import from another's module: none (the induction templates PE2 shares
with APE live in induction.py)."""


def _imports(path: Path, package: str) -> list[tuple[str, set[str]]]:
    """(module, names) for each import in ``path``, relative imports resolved against ``package``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, set()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *([module] if module else [])])
            found.append((module, {alias.name for alias in node.names}))
    return found


def test_no_teleprompter_imports_another_and_programs_stand_below_them():
    methods = {entry.value.split(":")[0].rsplit(".", 1)[-1] for entry in importlib.metadata.entry_points(group="cuecard.teleprompters")}
    offending = []
    for name in sorted(methods):
        for module, names in _imports(ROOT / "teleprompters" / f"{name}.py", "cuecard.teleprompters"):
            other = module.rsplit(".", 1)[-1] if module.startswith("cuecard.teleprompters.") else None
            if other in methods and other != name and not names <= TEMPLATES_SHARED.get((name, other), set()):
                offending.append(f"{name}.py imports {sorted(names)} from {other}.py")
    assert not offending, offending
    for path in sorted((ROOT / "programs").rglob("*.py")):
        assert not [m for m, _ in _imports(path, "cuecard.programs") if m.startswith("cuecard.teleprompters")], path


LAYERS = {"clients": 1, "engine": 2, "reporting": 3, "command": 4, "teleprompters": 5, "programs": 5}
"""framework/'s folders from the bottom up; its top-level modules (errors, program, identity, redact,
registry, datasets, metrics, judge) are layer 0. ``cuecard/__init__.py`` and ``__main__.py`` are the
package's public face and may import from any layer."""


def _layer(module: str) -> tuple[int, str | None]:
    """A ``cuecard.*`` module's layer, and what is wrong with naming it so (a path that is not its file)."""
    parts = module.split(".")[1:]
    if parts and parts[0] in LAYERS:
        return LAYERS[parts[0]], None
    if not parts or (ROOT / "framework" / f"{parts[0]}.py").exists():
        return 0, None
    return 0, f"{module} is not where that module lives (a short path kept for users)"


def test_each_layer_of_framework_imports_only_from_the_layers_below_it():
    """The model layer imports no engine, the engine no reporting, nothing but the command the command line."""
    offending = []
    for path in sorted((ROOT / "framework").rglob("*.py")):
        parts = path.relative_to(ROOT / "framework").parts
        if parts in (("__init__.py",), ("__main__.py",)):
            continue
        own = LAYERS[parts[0]] if len(parts) > 1 else 0
        for module, names in _imports(path, ".".join(["cuecard", *parts[:-1]])):
            if module.split(".")[0] != "cuecard":
                continue
            for imported in [f"{module}.{name}" for name in names] if module == "cuecard" else [module]:
                layer, wrong = _layer(imported)
                if wrong or layer > own:
                    offending.append(f"{'/'.join(parts)} imports {imported}" + (f": {wrong}" if wrong else ""))
    assert not offending, offending
