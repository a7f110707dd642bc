"""The README's Python examples run as written, on the embedded model, and print what the README says."""

import importlib.util
import re
from pathlib import Path

import pytest
from cuecard.clients.testing import scripted_lm
from cuecard.datasets import load_examples
from cuecard.programs import Classify

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.DOTALL)
HELD_OUT = README.parent / "examples" / "data" / "reviews_heldout.jsonl"
FIGURES_TO_MEASURE = "<!-- first-run figures: measured by the lead -->"

LABEL = r"(positive|negative)"
SCORE = r"[01]\.\d\d"
EXPECTED_LINES = {
    # block number (from 1) -> a pattern per printed line, in order
    1: [rf"^{LABEL}$", r"calls"],
    2: [r"^\d+$", rf"^seed {SCORE}, best {SCORE} on \d+ dev examples$", r"\w"],
    3: [r"evaluations", rf"^best {SCORE}: \{{'predict': "],
}


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 3


def test_every_python_block_has_its_expected_output_form():
    assert sorted(EXPECTED_LINES) == list(range(1, len(BLOCKS) + 1)), "a README block with no expected output"


def test_the_first_run_command_is_at_the_start_and_names_files_that_exist():
    first_section = TEXT.split("\n## ", 2)[1]
    assert first_section.startswith("Your first run")
    for path in re.findall(r"\.venv/bin/python (examples/\S+\.py)", first_section):
        assert (README.parent / path).is_file(), path
    assert "cuecard models pull qwen2.5-coder-1.5b" in first_section


def first_run_lines(count: int) -> list[str]:
    """Patterns of the held-out lines examples/first_run.py prints, on ``count`` held-out reviews."""
    accuracy = rf"\d+% \(95% interval \d+%-\d+%\) on {count} held-out reviews$"
    return [rf"^seed {accuracy}", rf"^compiled {accuracy}",
            r"^paired: compiled right where the seed is wrong on \d+, the reverse on \d+ "
            r"\(one-sided sign test p = [01]\.\d{3}\)$"]


def test_the_first_run_section_says_how_many_held_out_reviews_the_file_holds():
    count = len(load_examples(HELD_OUT, ["review"]))
    first_section = TEXT.split("\n## ", 2)[1]
    assert set(re.findall(r"(\d+) held-out reviews", first_section)) == {str(count)}
    assert re.findall(r'reviews_heldout\.jsonl +#.*"examples": (\d+)', TEXT) == [str(count)]
    printed = re.search(r"What it printed here.*?```\n(.*?)```", first_section, flags=re.DOTALL).group(1)
    held_out_lines = [line for line in printed.splitlines() if re.match(r"(seed|compiled|paired)\b", line)]
    if FIGURES_TO_MEASURE in printed:  # to be measured: no held-out figure of another file stays beside it
        assert held_out_lines == []
    else:
        assert len(held_out_lines) == 3, printed
        for line, pattern in zip(held_out_lines, first_run_lines(count), strict=True):
            assert re.search(pattern, line), f"{line!r} does not match {pattern!r}"


def test_first_run_scores_every_held_out_review_and_says_how_many():
    spec = importlib.util.spec_from_file_location("first_run", README.parent / "examples" / "first_run.py")
    first_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(first_run)
    held_out = load_examples(HELD_OUT, ["review"])
    gold = {example.review: example.sentiment for example in held_out}

    def reply(messages):  # the seed answers negative to everything, the better instruction answers right
        text = "\n".join(message["content"] for message in messages)
        review = next(review for review in gold if review in text)
        return gold[review] if "Give the review's true label." in text else "negative"

    lm = scripted_lm(reply)
    labels = ["positive", "negative"]
    seed = Classify("review -> sentiment", labels=labels, instructions=first_run.SEED)
    better = Classify("review -> sentiment", labels=labels, instructions="Give the review's true label.")
    before, after = first_run.held_out_scores(seed, lm, held_out), first_run.held_out_scores(better, lm, held_out)
    lines = first_run.compare(before, after)

    assert len(lm.engine.requests) == 2 * len(held_out)
    negatives = sum(example.sentiment == "negative" for example in held_out)
    for line, pattern in zip(lines, first_run_lines(len(held_out)), strict=True):
        assert re.search(pattern, line), f"{line!r} does not match {pattern!r}"
    assert lines[0].startswith(f"seed {negatives / len(held_out):.0%} ")
    assert lines[1].startswith("compiled 100% ")
    assert f"wrong on {len(held_out) - negatives}, the reverse on 0 " in lines[2]


@pytest.mark.model
@pytest.mark.parametrize("number", range(1, len(BLOCKS) + 1))
def test_each_readme_python_block_runs_and_prints_what_it_says(number, tmp_path, monkeypatch, fresh_cache, capsys):
    monkeypatch.chdir(tmp_path)  # the examples write runs/ and files where they run
    namespace = {"__name__": "__readme__"}
    exec(compile(BLOCKS[number - 1], f"README.md python block {number}", "exec"), namespace)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    patterns = EXPECTED_LINES[number]
    assert len(lines) >= len(patterns), lines
    for line, pattern in zip(lines, patterns, strict=False):
        assert re.search(pattern, line), f"block {number}: {line!r} does not match {pattern!r}"
    if "report" in namespace:  # a compile: some candidate scored above 0, so the metric sees the answers
        assert max(c.dev_score or 0 for c in namespace["report"].candidates) > 0
    if "allocation" in namespace:
        assert namespace["allocation"].best.mean > 0
