"""Everything a user reads is true, and cuecard behaves as a DSPy user expects (issue 27, goals 4-5).
Scripted models through the real ``main``."""

import itertools
from pathlib import Path

import cuecard
import pytest
from cuecard.cli import main
from cuecard.testing import scripted_lm

ROOT = Path(__file__).resolve().parents[1]
REVIEWS = ROOT / "examples" / "data" / "reviews.jsonl"
CLASSIFY = ["--program", "classify", "--signature", "review -> sentiment", "--labels", "positive,negative"]


class Models:
    """``cuecard.LM(spec)`` answers with scripted models: proposals for any request that asks for an
    instruction, else a label; ``unreadable`` names words of a review the model answers with prose."""

    def __init__(self, monkeypatch, proposal="Say whether the review is positive or negative", unreadable=()):
        self.built = []
        self.proposal = proposal
        self.unreadable = unreadable
        self.count = itertools.count()
        monkeypatch.setattr(cuecard, "LM", self.make)

    def reply(self, messages):
        text = messages[-1]["content"]
        if "Review:" not in text or "instruction" in text.lower() and "<INS>" in text or "teacher gave" in text:
            return f"<INS>{self.proposal} (idea {next(self.count)}).</INS>"
        review = text.split("Review:")[-1].split("\n")[0]
        if any(word in review for word in self.unreadable):
            return "I would rather not say."
        return "negative" if any(w in review for w in ("cold", "bad", "awful", "boring")) else "positive"

    def make(self, spec, **kwargs):
        lm = scripted_lm(self.reply, name=f"scripted/{spec}")
        lm.spec = spec
        lm.kwargs.update({k: v for k, v in kwargs.items() if k != "requests_per_minute"})
        self.built.append((spec, kwargs, lm))
        return lm


def run_main(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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
