"""The README's Python examples run as written, on the embedded model, and print what the README says."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.DOTALL)

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
