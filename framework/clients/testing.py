"""Test doubles: a scripted LM that goes through the real DSPy + cuecard call path.

A scripted LM checks an algorithm's logic step by step (which prompt was sent, what came back);
it is never the only proof that a feature works with a real model.

Example:
    >>> lm = scripted_lm(lambda messages: "positive")
    >>> lm("Is this good?")[0]
    'positive'
    >>> lm.meter.usage.model_calls
    1
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from .lm import CuecardLM
from .local import request_messages

Reply = Callable[[list[dict[str, str]]], str]


class ScriptedEngine:
    """A DSPy engine whose answer is ``reply(messages)``; every request it sees is kept in ``requests``
    (and its ``response_format``, if any, in ``formats``). ``supports_json_schema`` says whether cuecard
    may hold it to a JSON schema, as it does a local GGUF model; ``supports_grammar`` whether the plain
    adapter may hold a typed answer to its values (a local GGUF model's grammar). With ``truncate``, a reply
    longer than the request's ``max_tokens`` (a word counts as a token) is cut there with finish reason
    ``length``, as a model's is."""

    def __init__(
        self, reply: Reply, *, supports_json_schema: bool = False, supports_grammar: bool = False, truncate: bool = False
    ) -> None:
        self.reply = reply
        self.supports_json_schema = supports_json_schema
        self.supports_grammar = supports_grammar
        self.truncate = truncate
        self.requests: list[list[dict[str, str]]] = []
        self.formats: list[dict[str, Any] | None] = []
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> ScriptedEngine:
        return self

    def complete(self, request: Any) -> Any:
        from dspy.lm15 import Message, Response, TextPart, Usage

        messages = request_messages(request)
        with self._lock:
            self.requests.append(messages)
            self.formats.append(request.config.response_format)
        text = self.reply(messages)
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        cap, finish = request.config.max_tokens, "stop"
        if self.truncate and cap and len(text.split()) > cap:
            text, finish = " ".join(text.split()[:cap]), "length"
        return Response(
            id=f"scripted-{uuid.uuid4().hex}",
            model=request.model,
            message=Message.assistant([TextPart(text)]),
            finish_reason=finish,
            usage=Usage(input_tokens=prompt_tokens, output_tokens=len(text.split())),
        )

    def stream(self, request: Any) -> Any:
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass


def scripted_lm(
    reply: Reply,
    *,
    name: str = "scripted/lm",
    local: bool = True,
    cache: bool = False,
    structured: bool = False,
    grammar: bool = False,
    truncate: bool = False,
) -> CuecardLM:
    """A :class:`~cuecard.clients.lm.CuecardLM` answering with ``reply(messages)``; ``lm.engine.requests`` logs prompts.

    ``local=True`` makes cuecard treat it like an in-process model (plain adapter, serialised calls);
    ``structured=True`` like a model that can be held to a JSON schema (proposals then ask for one);
    ``grammar=True`` like one that decodes typed answers under a grammar (``lm.engine.formats`` shows them);
    ``truncate=True`` cuts replies at the request's ``max_tokens`` (in words) as a model does.
    """
    return CuecardLM(
        name,
        spec=name,
        is_local=local,
        engine=ScriptedEngine(reply, supports_json_schema=structured, supports_grammar=grammar, truncate=truncate),
        temperature=0.0,
        max_tokens=256,
        cache=cache,
        num_retries=0,
    )


class BernoulliTask:
    """A simulated task: candidate ``"arm i"`` answers each example right with probability ``accuracies[i]``.

    The outcome of (arm, example) is fixed by ``seed``, so re-scoring an example gives the same answer,
    and it travels the real path: a scripted LM answers ``yes``/``no`` to the rendered prompt, the
    plain adapter parses it, and the metric compares it with the gold ``yes``.

    Example:
        >>> task = BernoulliTask([0.9, 0.1], pool_size=4, seed=0)
        >>> task.candidate(0)
        {'self': 'arm 0'}
    """

    def __init__(self, accuracies: list[float], pool_size: int = 200, seed: int = 0) -> None:
        import dspy

        self.accuracies = list(accuracies)
        self.seed = seed
        self.examples = [dspy.Example(item=f"item {i}", answer="yes").with_inputs("item") for i in range(pool_size)]
        self.program = dspy.Predict(dspy.Signature("item -> answer", "arm 0"))
        self.lm = scripted_lm(self._reply, name=f"scripted/bernoulli-{seed}")

    def outcome(self, arm: int, item: int) -> bool:
        import random

        return random.Random(f"{self.seed}:{arm}:{item}").random() < self.accuracies[arm]

    def _reply(self, messages: list[dict[str, str]]) -> str:
        import re

        text = "\n".join(m["content"] for m in messages)
        arm = int(re.search(r"arm (\d+)", text, re.IGNORECASE).group(1))
        item = int(re.search(r"item (\d+)", text).group(1))
        return "yes" if self.outcome(arm, item) else "no"

    @staticmethod
    def metric(example: Any, prediction: Any, trace: Any = None) -> bool:
        return prediction.answer == example.answer

    def candidate(self, arm: int) -> dict[str, str]:
        return {"self": f"arm {arm}"}

    @property
    def best_arm(self) -> int:
        return max(range(len(self.accuracies)), key=self.accuracies.__getitem__)


class StubServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks of the remote path.

    Each request is answered ``reply(messages)`` after ``latency`` seconds. With ``rate_limit``
    (requests per second), a request beyond it gets HTTP 429 with a ``Retry-After`` header, as
    providers do. ``requests`` counts answered requests, ``rejected`` the 429s, ``connections``
    every request that reached the server.

    Example:
        >>> with StubServer(lambda messages: "hi") as server:  # doctest: +SKIP
        ...     lm = cuecard.LM("openai/stub", api_base=server.url, api_key="sk-test")
    """

    def __init__(self, reply: Reply, *, latency: float = 0.0, rate_limit: float | None = None) -> None:
        self.reply = reply
        self.latency = latency
        self.rate_limit = rate_limit
        self.requests = 0
        self.rejected = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._window: list[float] = []
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _admit(self) -> float | None:
        """None when the request may go on; else the seconds to wait (a 429)."""
        import time

        if self.rate_limit is None:
            return None
        with self._lock:
            now = time.monotonic()
            self._window = [t for t in self._window if now - t < 1.0]
            if len(self._window) >= self.rate_limit:
                return max(0.05, 1.0 - (now - self._window[0]))
            self._window.append(now)
            return None

    def answer(self, request: dict[str, Any]) -> str:
        """The reply to one chat-completions request (its JSON body); a subclass may read more than the messages."""
        return self.reply(request.get("messages") or [])

    def start(self) -> StubServer:
        import json
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                with stub._lock:
                    stub.connections += 1
                self._send(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                with stub._lock:
                    stub.connections += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                wait = stub._admit()
                if wait is not None:
                    with stub._lock:
                        stub.rejected += 1
                    self._send(429, {"error": {"message": "rate limit", "type": "rate_limit_error"}},
                               {"Retry-After": f"{wait:.2f}"})
                    return
                time.sleep(stub.latency)
                text = stub.answer(body)
                with stub._lock:
                    stub.requests += 1
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
                self._send(200, {
                    "id": f"stub-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "stub"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                              "total_tokens": prompt_tokens + len(text.split())},
                })

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="stub-server").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
