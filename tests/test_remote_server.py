"""The remote (litellm) path, for real: llama-cpp-python's OpenAI-compatible server on 127.0.0.1.

The server serves the embedded GGUF; cuecard reaches it through litellm like any remote model:
chat completions for programs, and the completions endpoint with echo + logprobs for scoring.
"""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cuecard
import dspy
import pytest

pytestmark = [pytest.mark.server, pytest.mark.model]

pytest.importorskip("uvicorn", reason="the server test needs the [server] extra (llama-cpp-python[server])")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    log = log_path.open("w")
    command = [
        sys.executable, str(Path(__file__).with_name("serve_llama.py")),
        "--model", str(cuecard.embedded_model_path()), "--model_alias", "smollm2",
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--logits_all", "True",
    ]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/models", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"llama_cpp.server did not answer within 120 s: {log_path.read_text()[-2000:]}")
    yield base
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture
def remote_lm(server):
    return cuecard.LM("openai/smollm2", api_base=server, api_key="local", cache=False)


def test_chat_completion_through_litellm(remote_lm):
    assert not remote_lm.is_local
    with dspy.context(lm=remote_lm, adapter=cuecard.PlainAdapter()):
        answer = dspy.Predict("review -> sentiment")(review="I loved this film.").sentiment
    assert isinstance(answer, str) and answer.strip()
    usage = remote_lm.meter.usage
    assert usage.model_calls == 1 and usage.prompt_tokens > 0 and usage.completion_tokens > 0


def test_remote_answer_matches_the_in_process_model(remote_lm, local_lm):
    messages = [{"role": "user", "content": "Review: The soup was cold.\n\nIs the review positive or negative?"}]
    remote = remote_lm(messages=messages, max_tokens=16)[0]
    local = local_lm(messages=messages, max_tokens=16, cache=False)[0]
    assert remote.strip() == local.strip()


def test_logprob_scoring_through_the_completions_endpoint(remote_lm):
    prompt = "Question: What is the capital of France?\nAnswer:"
    score = cuecard.score_logprob(remote_lm, prompt, " Paris", cache=False)
    assert score.tokens >= 1
    assert score.total < 0
    assert remote_lm.meter.usage.model_calls == 1


@pytest.mark.xfail(
    strict=True,
    reason="llama-cpp-python 0.3.x's echo logprobs are shifted by one token (each value is read from the "
    "logits that predict the *next* token), so its scores differ from the exact in-process ones",
)
def test_server_scores_agree_with_the_exact_local_scores(remote_lm, local_lm):
    prompt = "Question: What is the capital of France?\nAnswer:"
    remote = cuecard.score_logprob(remote_lm, prompt, " Paris", cache=False)
    local = cuecard.score_logprob(local_lm, prompt, " Paris", cache=False)
    assert remote.total == pytest.approx(local.total, abs=0.05)
