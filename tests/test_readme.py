"""The README's Python examples run as written, on the embedded model."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.model
@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_each_readme_python_block_runs_as_written(number, tmp_path, monkeypatch, fresh_cache, capsys):
    monkeypatch.chdir(tmp_path)  # the examples write runs/ and files where they run
    exec(compile(BLOCKS[number], f"README.md python block {number + 1}", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip(), "every README example prints what it shows"
