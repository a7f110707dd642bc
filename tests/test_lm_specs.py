"""Model strings and their errors (no model call needed)."""

import cuecard
import dspy
import pytest
from cuecard import MissingCredentialsError, ModelFileError, ModelSpecError, ScoringUnsupportedError


def test_local_spec_is_the_embedded_model():
    lm = cuecard.LM("local")
    assert isinstance(lm, dspy.LM)
    assert lm.is_local
    assert lm.model == "local/smollm2-135m-instruct"
    assert lm.engine.model_path == str(cuecard.embedded_model_path())


def test_local_path_spec_names_the_model_after_the_file():
    path = cuecard.embedded_model_path()
    lm = cuecard.LM(f"local:{path}")
    assert lm.model == f"local/{path.stem}"


def test_missing_gguf_names_the_path(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelFileError, match="nope.gguf"):
        cuecard.LM(f"local:{missing}")


def test_corrupt_gguf_names_the_path(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match="broken.gguf"):
        cuecard.LM(f"local:{bad}")


def test_truncated_gguf_fails_at_load_naming_the_path(tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(cuecard.embedded_model_path().read_bytes()[:4096])
    lm = cuecard.LM(f"local:{truncated}")
    with pytest.raises(Exception, match="truncated.gguf"):
        lm("hello", cache=False)


@pytest.mark.parametrize("spec", ["", "   ", "definitely-not-a-model-xyz"])
def test_unknown_spec_is_a_clear_error(spec):
    with pytest.raises(ModelSpecError):
        cuecard.LM(spec)


def test_missing_api_key_fails_at_first_call_naming_the_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lm = cuecard.LM("openai/gpt-4o-mini")  # construction never needs the key
    assert not lm.is_local
    with pytest.raises(MissingCredentialsError, match="OPENAI_API_KEY"):
        lm("hello")
    assert lm.meter.usage.model_calls == 0


def test_remote_model_without_completions_endpoint_cannot_score(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    lm = cuecard.LM("anthropic/claude-3-5-haiku-latest")
    with pytest.raises(ScoringUnsupportedError, match="cannot score"):
        cuecard.score_logprob(lm, "prompt", "answer")


def test_sampling_kwargs_give_distinct_reproducible_seeds():
    a = [cuecard.sampling_kwargs(7, i, 0.9) for i in range(5)]
    b = [cuecard.sampling_kwargs(7, i, 0.9) for i in range(5)]
    assert a == b
    assert len({kw["seed"] for kw in a}) == 5
    assert cuecard.sampling_kwargs(8, 0, 0.9)["seed"] != a[0]["seed"]


def test_a_bare_gguf_path_is_a_local_model(tmp_path):
    from cuecard.clients.local import embedded_model_path

    lm = cuecard.LM(str(embedded_model_path()))
    assert lm.is_local and lm.spec == f"local:{embedded_model_path()}"
    with pytest.raises(ModelFileError, match="missing.gguf"):
        cuecard.LM(str(tmp_path / "missing.gguf"))
