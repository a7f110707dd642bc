"""Model strings to ``dspy.LM`` objects, with a usage meter and log-probability scoring.

``LM("local")`` is the embedded SmolLM2-135M-Instruct, ``LM("local:/path/model.gguf")`` any GGUF
file, and any other string a litellm model (``openai/gpt-4o-mini``, ``anthropic/...``,
``ollama_chat/...``, ``hosted_vllm/...`` with ``api_base=``). The task model and the prompt
(proposer) model are two such objects; nothing in cuecard reads a global LM.

Example:
    >>> import dspy, cuecard
    >>> lm = cuecard.LM("local")
    >>> with dspy.context(lm=lm, adapter=cuecard.adapter_for(lm)):
    ...     dspy.Predict("review -> sentiment")(review="I loved it").sentiment  # doctest: +SKIP
    'positive'
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import math
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import dspy
from dspy.utils.callback import with_callbacks

from ..errors import (
    BudgetExhausted,
    ConfigError,
    MissingCredentialsError,
    ModelSpecError,
    ScoringUnsupportedError,
)
from .local import EMBEDDED_MODEL_NAME, LlamaCppEngine, LocalScorer, LogProb, embedded_model_path
from .models import fetched_path, find_model
from .record import StoredReply, active_record, request_key, storable
from .usage import CallRecord, UsageMeter, check_limits, model_call
from .usage import record as record_usage

LOCAL_PREFIX = "local"
DEFAULT_MAX_TOKENS = 256


class CuecardLM(dspy.LM):
    """A ``dspy.LM`` that reports every call to a :class:`~cuecard.clients.usage.UsageMeter`.

    Built by :func:`LM`; usable anywhere DSPy takes an LM. ``lm.meter.usage`` holds its counters;
    ``lm.is_local`` tells whether it runs in-process.
    """

    def __init__(
        self,
        model: str,
        *,
        spec: str,
        is_local: bool,
        scorer: Any = None,
        meter: UsageMeter | None = None,
        requests_per_minute: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.spec = spec
        self.is_local = is_local
        self.scorer = scorer
        self.meter = meter or UsageMeter(model)
        self.rate_limit = RateLimit(requests_per_minute) if requests_per_minute else None
        self._credentials_checked = is_local

    @with_callbacks
    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        from dspy.clients._deprecation import warn_openai_messages
        from dspy.clients.execution import execute, prepare

        call = prepare(self, prompt, messages, kwargs)
        warn_openai_messages(self, messages)
        return _at_once(self._ask(call, execute))

    @with_callbacks
    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        import asyncio

        from dspy.clients._deprecation import warn_openai_messages
        from dspy.clients.execution import aexecute, prepare

        call = await asyncio.to_thread(prepare, self, prompt, messages, kwargs, asynchronous=True)
        warn_openai_messages(self, messages)
        return await self._ask(call, aexecute)

    async def _ask(self, call: Any, execute: Callable[[Any, Any], Any]) -> Any:
        """One prepared call, the same steps for ``__call__`` and ``acall``: replayed from the run's record,
        else sent under the caps (a claimed request is given back and an error counted when it fails),
        metered, and kept in the record. ``execute`` is DSPy's ``execute`` (the sync path: nothing is
        awaited, see :func:`_at_once`) or ``aexecute``."""
        from dspy.clients.execution import finalize

        record, key = self._recorded(call)
        if record is not None:
            replayed = record.get(key)
            if replayed is not None:
                return self._replay(replayed)
        start = time.perf_counter()
        try:
            with model_call(_completions(call)):  # the call's use is recorded before its reservation ends
                self._before_call(_completions(call))
                result = execute(self, call)
                if inspect.isawaitable(result):
                    result = await result
                self._record(result, time.perf_counter() - start, _completions(call), _cap(self, call))
        except BaseException as exc:  # Ctrl-C and cancellation too: a claimed request is given back
            abandon = getattr(record, "abandon", None)  # a record shared by processes claims its requests
            if abandon is not None:
                abandon(key)
            if isinstance(exc, Exception) and not isinstance(exc, BudgetExhausted):
                record_usage(self.meter, CallRecord(model=self.model, error=True, seconds=time.perf_counter() - start))
            raise
        outputs = finalize(self, call, result)
        stored = storable(outputs) if record is not None else None
        if stored is not None:
            record.put(key, StoredReply(outputs=stored, requests=_completions(call)))
        return outputs

    # ---- the run's record (see cuecard.clients.record) -----------------------------------------------------
    def _recorded(self, call: Any) -> tuple[Any, str]:
        record = active_record()
        if record is None:
            return None, ""
        if call.request is not None:
            from dspy._vendor.lm15.serde import request_to_dict

            request = {"request": request_to_dict(call.request), "rollout_id": call.kwargs.get("rollout_id")}
        else:
            request = {**call.legacy, "n": call.n}
        return record, request_key(self.model, request)

    def _replay(self, reply: StoredReply) -> list[Any]:
        check_limits(reply.requests)
        record_usage(self.meter, CallRecord(model=self.model, requests=reply.requests, replayed=True))
        return list(reply.outputs)

    def supports_json_schema(self) -> bool:
        """Whether the model can be held to a JSON schema (``response_format``): local GGUF models through
        llama.cpp's grammars, remote ones where litellm says the provider supports response schemas."""
        engine_says = getattr(self.engine, "supports_json_schema", None)
        if engine_says is not None:
            return bool(engine_says)
        if self.is_local:
            return False
        try:
            return bool(_litellm().supports_response_schema(model=self.model))
        except Exception:  # litellm does not know the model
            return False

    # ---- context window ------------------------------------------------------------------------------
    def context_window(self) -> int | None:
        """Tokens the model can read and write in one call, when known (local models; litellm's table)."""
        n_ctx = getattr(self.engine, "n_ctx", None)
        if n_ctx:
            return int(n_ctx)
        if self.is_local:
            return None
        try:
            info = _litellm().get_model_info(self.model)
        except Exception:  # litellm does not know this model
            return None
        return info.get("max_input_tokens") or info.get("max_tokens")

    def count_tokens(self, messages: list[dict[str, Any]]) -> int | None:
        """Tokens ``messages`` take (exact for local GGUF models, litellm's count for others; None if unknown)."""
        text = "\n".join(str(m.get("content", "")) for m in messages)
        path = getattr(self.engine, "model_path", None)
        if path:
            from .local import load_model

            llama = load_model(path, n_ctx=self.context_window() or 2048).llama
            return len(llama.tokenize(text.encode("utf-8"), add_bos=True, special=False)) + 8 * len(messages)
        if self.is_local:
            return None
        try:
            return int(_litellm().token_counter(model=self.model, messages=messages))
        except Exception:  # no tokenizer offline for this provider
            return None

    def _before_call(self, completions: int = 1) -> None:
        """Wait for the rate limit and check credentials (the caps are checked by ``model_call`` around it)."""
        if self.rate_limit is not None:
            self.rate_limit.wait(completions)
        if not self._credentials_checked:
            check_credentials(self.model, self.kwargs)
            self._credentials_checked = True

    def _record(self, result: Any, seconds: float, completions: int = 1, max_tokens: int | None = None) -> None:
        usage = result.usage or {}
        record_usage(
            self.meter,
            CallRecord(
                model=self.model,
                requests=completions,
                cache_hit=bool(result.cache_hit),
                truncated=0 if result.cache_hit else _truncated(result),
                max_tokens=max_tokens,
                prompt_tokens=0 if result.cache_hit else int(usage.get("prompt_tokens") or 0),
                completion_tokens=0 if result.cache_hit else int(usage.get("completion_tokens") or 0),
                seconds=seconds,
                cost=0.0 if result.cache_hit or self.is_local else float(result.cost or 0.0),
            ),
        )


def _cap(lm: Any, call: Any) -> int | None:
    """The token cap a call was sent with (its own, else the LM's)."""
    cap = (
        (getattr(call, "kwargs", None) or {}).get("max_tokens")
        or getattr(getattr(call.request, "config", None), "max_tokens", None)
        or lm.kwargs.get("max_tokens")
    )
    return int(cap) if cap else None


def _at_once(steps: Coroutine[Any, Any, Any]) -> Any:
    """The value of a coroutine that awaits nothing, without an event loop: the sync path through
    :meth:`CuecardLM._ask`, whose ``execute`` returns its result."""
    try:
        steps.send(None)
    except StopIteration as done:
        return done.value
    steps.close()
    raise RuntimeError("a sync LM call awaited something; only acall may")  # DSPy's execute never does


def _truncated(result: Any) -> int:
    """How many of a call's answers were cut at the token cap (finish reason ``length``)."""
    responses = list(getattr(result, "responses", ()) or ())
    if responses:
        return sum(getattr(r, "finish_reason", None) == "length" for r in responses)
    choices = getattr(getattr(result, "raw", None), "choices", None) or []
    return sum(getattr(c, "finish_reason", None) == "length" for c in choices)


class TruncationCounted(logging.Filter):
    """Drops DSPy's "LM response was truncated" warnings while a compile counts truncated answers itself
    (it reports them in one line at the end instead of in the middle of its progress bars)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("LM response was truncated")


@contextlib.contextmanager
def truncation_counted() -> Iterator[None]:
    """Inside, DSPy's truncation warnings are left out (see :class:`TruncationCounted`)."""
    quiet = TruncationCounted()
    logger = logging.getLogger("dspy.clients.lm")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class RateLimit:
    """An optional cap on requests per minute for one model, shared by every thread and copy of the LM
    (a leaky bucket from ``pyrate-limiter``): a request waits for its turn instead of drawing 429s."""

    def __init__(self, per_minute: int) -> None:
        from pyrate_limiter import Duration, Limiter, Rate

        if per_minute < 1:
            raise ConfigError(f"requests_per_minute={per_minute} must be at least 1")
        self.per_minute = per_minute
        # a rate per second too, so a burst of threads does not spend the minute's quota at once
        self._limiter = Limiter([Rate(math.ceil(per_minute / 60), Duration.SECOND), Rate(per_minute, Duration.MINUTE)])

    def __deepcopy__(self, memo: dict) -> RateLimit:
        return self

    def wait(self, requests: int = 1) -> None:
        self._limiter.try_acquire("requests", weight=requests, blocking=True)


def _completions(call: Any) -> int:
    """How many completions a DSPy call asks for (``n``); each is one request to an in-process engine."""
    return max(1, int(getattr(call, "n", 1) or 1))


def LM(  # noqa: N802 - a factory that reads like the class it returns, as dspy.LM does
    spec: str = LOCAL_PREFIX,
    *,
    temperature: float = 0.0,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    cache: bool = True,
    n_ctx: int = 2048,
    requests_per_minute: int | None = None,
    **kwargs: Any,
) -> CuecardLM:
    """Build a ``dspy.LM`` from a model string.

    Args:
        spec: ``"local"`` (the embedded SmolLM2-135M-Instruct), ``"local:/path/to/model.gguf"`` (any
            GGUF file, with its own chat template; a bare path ending in ``.gguf`` works too), the name of
            a model pulled with ``cuecard models pull`` (``"qwen2.5-coder-1.5b"``), or a litellm model string such as
            ``"openai/gpt-4o-mini"`` or ``"hosted_vllm/my-model"`` (with ``api_base=``).
        temperature: default sampling temperature (0 gives the same answer every time).
        max_tokens: default cap on generated tokens.
        cache: use DSPy's response cache (``DSPY_CACHEDIR``, or :func:`configure_cache`).
        n_ctx: context size of a local model.
        requests_per_minute: remote models: at most this many requests a minute, shared by all threads
            (requests wait their turn; a 429 with ``Retry-After`` is retried after the time it names).
        **kwargs: passed to ``dspy.LM`` (remote models: ``api_base``, ``api_key``, ``num_retries`` (default
            8: DSPy retries transient errors and 429s, waiting what ``Retry-After`` says)...).

    Raises:
        ModelSpecError: the string names no model cuecard can build.
        ModelFileError: a local GGUF file is missing or is not a GGUF model.
        ModelNotFetchedError: ``spec`` names a fetchable model that was not pulled (the message names the command).

    Example:
        >>> task_lm = LM("local")
        >>> task_lm.is_local, task_lm.model
        (True, 'local/smollm2-135m-instruct')
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"A model spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if find_model(spec) is not None:  # a model cuecard can fetch, by name (`cuecard models`)
        spec = f"{LOCAL_PREFIX}:{fetched_path(spec)}"
    if spec.lower().endswith(".gguf") and not spec.startswith(LOCAL_PREFIX + ":"):
        spec = f"{LOCAL_PREFIX}:{spec}"  # a bare path to a GGUF file
    if spec == LOCAL_PREFIX or spec.startswith(LOCAL_PREFIX + ":"):
        path = spec[len(LOCAL_PREFIX) + 1 :].strip() if ":" in spec else ""
        if path:
            engine = LlamaCppEngine(path, n_ctx=n_ctx)
            name = f"{LOCAL_PREFIX}/{Path(engine.model_path).stem}"
        else:
            engine = LlamaCppEngine(embedded_model_path(), n_ctx=n_ctx)
            name = f"{LOCAL_PREFIX}/{EMBEDDED_MODEL_NAME}"
        return CuecardLM(
            name,
            spec=spec,
            is_local=True,
            scorer=LocalScorer(engine.model_path, n_ctx=n_ctx),
            engine=engine,
            temperature=temperature,
            max_tokens=max_tokens,
            cache=cache,
            num_retries=0,
            **kwargs,
        )
    provider = _litellm_provider(spec, kwargs.get("api_base"))
    kwargs.setdefault("num_retries", 8)
    return CuecardLM(
        spec,
        spec=spec,
        is_local=False,
        requests_per_minute=requests_per_minute,
        scorer=RemoteCompletionScorer(spec, provider, kwargs) if _can_echo(provider, kwargs) else None,
        engine="litellm",
        temperature=temperature,
        max_tokens=max_tokens,
        cache=cache,
        **kwargs,
    )


def _litellm():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # no coloured "Provider List" lines in cuecard's messages
    return litellm


def _litellm_provider(spec: str, api_base: str | None) -> str:
    litellm = _litellm()
    try:
        _, provider, _, _ = litellm.get_llm_provider(model=spec, api_base=api_base)
    except Exception as exc:  # litellm raises its own BadRequestError here
        raise ModelSpecError(
            f"Unknown model spec {spec!r}: not 'local', not 'local:/path/to/model.gguf', and litellm "
            f"cannot tell its provider (write it as 'provider/model', e.g. 'openai/gpt-4o-mini')"
        ) from exc
    return provider


def check_credentials(model: str, kwargs: dict[str, Any]) -> None:
    """Raise :class:`MissingCredentialsError` naming the variable a litellm model needs and lacks."""
    if kwargs.get("api_key") or kwargs.get("api_base") or kwargs.get("base_url"):
        return
    try:
        missing = _litellm().validate_environment(model=model).get("missing_keys") or []
    except Exception:
        return  # litellm cannot tell; let the provider answer
    if missing:
        raise MissingCredentialsError(
            f"The model {model!r} needs {', '.join(missing)} in the environment (or api_key=...); "
            "it is not set"
        )


_ECHO_PROVIDERS = {"hosted_vllm", "text-completion-openai", "openai"}


def _can_echo(provider: str, kwargs: dict[str, Any]) -> bool:
    """OpenAI-compatible completions servers (vLLM, llama.cpp server) can echo prompt log-probs."""
    return provider in _ECHO_PROVIDERS and bool(kwargs.get("api_base") or kwargs.get("base_url"))


def _flatten_messages(messages: list[dict[str, str]]) -> str:
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant: "


class RemoteCompletionScorer:
    """Log-probabilities through an OpenAI-compatible *completions* endpoint with ``echo`` + ``logprobs``.

    Chat messages are flattened to ``Role: content`` paragraphs (a completions endpoint applies no
    chat template); pass a plain prompt string to control the exact text.
    """

    def __init__(self, spec: str, provider: str, kwargs: dict[str, Any]) -> None:
        self.model = "text-completion-openai/" + spec.split("/", 1)[-1]
        self.api_base = kwargs.get("api_base") or kwargs.get("base_url")
        self.api_key = kwargs.get("api_key") or "no-key"
        self.spec = spec

    def score(self, prompt: str | list[dict[str, str]], answer: str) -> LogProb:
        text = _flatten_messages(prompt) if isinstance(prompt, list) else prompt
        response = _litellm().text_completion(
            model=self.model,
            prompt=text + answer,
            echo=True,
            logprobs=1,
            max_tokens=1,
            temperature=0.0,
            api_base=self.api_base,
            api_key=self.api_key,
        )
        logprobs = response.choices[0].logprobs
        offsets = getattr(logprobs, "text_offset", None) if logprobs is not None else None
        values = getattr(logprobs, "token_logprobs", None) if logprobs is not None else None
        if not offsets or not values:
            raise ScoringUnsupportedError(
                f"The server behind {self.spec!r} returned no prompt log-probabilities for echo=True"
            )
        start, end = len(text), len(text) + len(answer)
        picked = [v for offset, v in zip(offsets, values, strict=False) if start <= offset < end and v is not None]
        return LogProb(float(sum(picked)), len(picked))


def score_logprob(lm: dspy.LM, prompt: str | list[dict[str, str]], answer: str, *, cache: bool = True) -> LogProb:
    """The log-probability of ``answer`` right after ``prompt`` (raw text, or chat messages).

    Exact for local GGUF models (the answer opens the assistant turn of the model's chat template);
    for OpenAI-compatible completions servers through ``echo`` + ``logprobs``. Results are cached in
    DSPy's cache like any LM call, and counted by the LM's usage meter.

    Raises:
        ScoringUnsupportedError: the model cannot score a given text.

    Example:
        >>> lm = LM("local")
        >>> score_logprob(lm, [{"role": "user", "content": "Say yes."}], "Yes").tokens  # doctest: +SKIP
        1
    """
    scorer = getattr(lm, "scorer", None)
    if scorer is None:
        raise ScoringUnsupportedError(
            f"The model {getattr(lm, 'model', lm)!r} cannot score a given text: log-prob scoring needs a "
            "local GGUF model or an OpenAI-compatible completions server (pass api_base=) that supports "
            "echo with logprobs"
        )
    meter = getattr(lm, "meter", None)
    model = getattr(lm, "model", "unknown")
    key = {
        "_fn_identifier": "cuecard.score_logprob",
        "model": model,
        "prompt": prompt,
        "answer": answer,
    }
    check_limits()
    start = time.perf_counter()
    if cache and getattr(lm, "cache", True):
        hit = dspy.cache.get(key)
        if hit is not None:
            record_usage(meter, CallRecord(model=model, cache_hit=True, seconds=time.perf_counter() - start))
            return LogProb(float(hit["total"]), int(hit["tokens"]))
    try:
        with model_call():
            result = scorer.score(prompt, answer)
            record_usage(meter, CallRecord(model=model, prompt_tokens=result.tokens, seconds=time.perf_counter() - start))
    except (ScoringUnsupportedError, BudgetExhausted):
        raise
    except Exception:
        record_usage(meter, CallRecord(model=model, error=True, seconds=time.perf_counter() - start))
        raise
    if cache and getattr(lm, "cache", True):
        dspy.cache.put(key, {"total": result.total, "tokens": result.tokens})
    return result


def sample_seed(seed: int, index: int) -> int:
    """A distinct, reproducible seed for sample ``index`` of a run seeded with ``seed``."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def sampling_kwargs(seed: int, index: int, temperature: float) -> dict[str, Any]:
    """Call options for sample ``index`` of ``seed``: a distinct rollout id (own cache entry) and seed.

    Example:
        >>> sampling_kwargs(0, 3, 0.9)["rollout_id"]
        3
    """
    return {"temperature": temperature, "rollout_id": index, "seed": sample_seed(seed, index)}


def configure_cache(directory: str | os.PathLike[str] | None = None, *, enabled: bool = True) -> None:
    """Point DSPy's response cache at ``directory`` (default: ``DSPY_CACHEDIR`` or ``~/.dspy_cache``)."""
    from dspy.clients import configure_cache as dspy_configure_cache

    if not enabled:
        dspy_configure_cache(enable_disk_cache=False, enable_memory_cache=False)
        return
    kwargs: dict[str, Any] = {}
    if directory is not None:
        kwargs["disk_cache_dir"] = str(directory)
    dspy_configure_cache(enable_disk_cache=True, enable_memory_cache=True, **kwargs)
