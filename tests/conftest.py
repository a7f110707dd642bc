"""Shared fixtures. DSPy's cache is pointed at a temporary folder before dspy is imported."""

import os
import shutil
import tempfile
from pathlib import Path

_CACHE_ROOT = tempfile.mkdtemp(prefix="cuecard-test-cache-")
os.environ["DSPY_CACHEDIR"] = _CACHE_ROOT
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE_ROOT, ignore_errors=True)


class FreshCache:
    """A new, empty DSPy cache (``path``); ``restore()`` goes back to the session's shared cache early."""

    def __init__(self, path):
        self.path = path

    def restore(self):
        import cuecard

        cuecard.configure_cache(_CACHE_ROOT)


@pytest.fixture(autouse=True)
def dspy_settings_restored():
    """What a test gives ``dspy.configure`` (the README's examples configure an LM) ends with the test."""
    import dspy

    lm, adapter = dspy.settings.lm, dspy.settings.adapter
    yield
    if (dspy.settings.lm, dspy.settings.adapter) != (lm, adapter):
        dspy.configure(lm=lm, adapter=adapter)


@pytest.fixture
def fresh_cache(tmp_path):
    """A new, empty DSPy cache for one test; the session cache is restored afterwards."""
    import cuecard

    cache = FreshCache(tmp_path / "dspy-cache")
    cuecard.configure_cache(cache.path)
    yield cache
    cache.restore()


@pytest.fixture(scope="session")
def local_lm():
    """The embedded SmolLM2 model (loaded once per test session)."""
    import cuecard

    return cuecard.LM("local")


RELOAD_SCRIPT = """
import json, sys, dspy, cuecard
program = dspy.Predict(dspy.Signature(sys.argv[2]))
program.load(sys.argv[1])
lm = cuecard.LM("local")
with dspy.context(lm=lm, adapter=cuecard.adapter_for(lm)):
    print(json.dumps([program(**inputs).toDict() for inputs in json.loads(sys.argv[3])]))
"""


@pytest.fixture
def answers_after_reload():
    """Load a saved one-predictor program with plain dspy in a new process and answer ``inputs`` there."""
    import json
    import subprocess
    import sys

    def answer(path, signature, inputs):
        result = subprocess.run(
            [sys.executable, "-c", RELOAD_SCRIPT, str(path), signature, json.dumps(inputs)],
            capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    return answer


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (it lives outside the repo, in ../shared/data)")
    return SHARED_DATA


@pytest.fixture
def same_answers_after_reload(answers_after_reload, local_lm):
    """Save a compiled one-predictor sentiment program, reload it with plain dspy in a new process,
    and check it answers ``inputs`` exactly as the compiled program does here."""
    import cuecard
    import dspy

    def check(compiled, path, inputs):
        compiled.save(str(path))
        with dspy.context(lm=local_lm, adapter=cuecard.adapter_for(local_lm)):
            expected = [compiled(**row).sentiment for row in inputs]
        reloaded = answers_after_reload(path, "review -> sentiment", inputs)
        assert [answer["sentiment"] for answer in reloaded] == expected

    return check


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on 127.0.0.1 for the session (``tests/postgres.py``): yields a URL like
    ``postgresql://postgres@127.0.0.1:PORT/cuecard``; skips, with the reason, when no server can be
    started here (no binaries, no psycopg). pytest-postgresql is not used: it refuses to run as root."""
    import postgres

    reason = postgres.missing_reason()
    if reason is not None:
        pytest.skip(reason)
    server = postgres.PostgresServer().start()
    try:
        yield server.url
    finally:
        server.stop()
