"""Engine over any OpenAI-compatible HTTP server (vLLM serve, SGLang, LMDeploy, Ollama, ``agents.engines.serve``).

Why stdlib HTTP: the engine must work in a bare install (no ``openai`` / ``httpx`` dependency) and its failure
modes must be explicit. Only what never reached the server is retried (a refused or failed connection, and 429 /
503, which say "not now"), with exponential backoff, all within ``timeout`` seconds per request. A request the
server took but did not answer in time (a read timeout, a dropped connection, a 5xx) is never re-sent: the server
may still be computing it, and a re-send would make it compute every copy. Those raise
:class:`EngineConnectionError`; a server that rejects a request raises :class:`EngineRequestError` at once; a
server that answers something that is not an OpenAI response raises :class:`EngineResponseError`.

Token ids: vLLM-style servers return them when asked (``return_tokens_as_token_ids``, on by default here; turn
``vllm_extensions`` off for strict servers). Without them and with a local ``tokenizer``, ids come from
re-tokenizing the text; with neither, ``token_ids`` stays empty and log-probs are the server's.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .base import Completion, FinishReason, GenerationStats, Prompt, check_generate_args
from .prompting import DEFAULT_STEP_DELIMITER, has_chat_template, render_prompt, step_messages, step_prompt
from .stopping import earliest_stop, tokens_covering

__all__ = ["EngineConnectionError", "EngineRequestError", "EngineResponseError", "OpenAIEngine"]

_RETRY_STATUS = {429, 503}
"""Statuses that say the server did not take the request ("too many requests", "unavailable"): safe to re-send."""


class EngineConnectionError(ConnectionError):
    """The server could not be reached or kept failing (after all retries)."""


class EngineRequestError(ValueError):
    """The server rejected the request (HTTP 4xx): retrying would not help."""


class EngineResponseError(RuntimeError):
    """The server answered, but not with a well-formed OpenAI response."""


def _retry_after(error: urllib.error.HTTPError, default: float) -> float:
    """The server's ``Retry-After`` in seconds (capped at 30) when it gives one, else ``default``."""
    try:
        return min(30.0, max(0.0, float(error.headers.get("Retry-After", ""))))
    except (TypeError, ValueError):
        return default


def _token_id(token: str) -> int | None:
    return int(token.removeprefix("token_id:")) if token.startswith("token_id:") else None


class OpenAIEngine:
    """Batched generation and scoring through an OpenAI-compatible server.

    Args:
        base_url: e.g. ``"http://localhost:8000/v1"`` (a trailing ``/v1`` is added when missing).
        model: the served model name; by default the first one ``/v1/models`` lists.
        tokenizer: optional local tokenizer of the served model: chat prompts and step prompts are then rendered
            locally (exactly as HF/vLLM engines do) and sent to ``/completions``; token ids are recovered.
        api_key: sent as a bearer token.
        max_concurrency: requests in flight at once (one request per prompt, ``n`` samples each).
        timeout: seconds per request, retries included: a frozen server is reported after this long.
        max_retries / backoff: re-sends of a request that did not reach the server (connection refused or failed,
            HTTP 429 / 503), sleeping ``backoff * 2**attempt`` seconds (capped at 30, or the server's
            ``Retry-After``) in between; never after a read timeout.
        vllm_extensions: send vLLM's extra fields (token ids in log-probs, continuing an open assistant turn).
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        tokenizer: Any = None,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        vllm_extensions: bool = True,
        step_delimiter: str = DEFAULT_STEP_DELIMITER,
    ) -> None:
        base_url = base_url.rstrip("/")
        self.base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
        self.api_key = api_key
        self.max_concurrency = max(1, max_concurrency)
        self.timeout = timeout
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        self.vllm_extensions = vllm_extensions
        self.step_delimiter = step_delimiter
        self._tokenizer = tokenizer
        self.stats = GenerationStats()
        self.model = model or self._first_model()

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    # -- HTTP ----------------------------------------------------------------------------------------------
    def _request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.base_url + path
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body, allow_nan=False).encode()
        started = time.monotonic()
        deadline = started + self.timeout
        last_error: Exception | None = None
        pause = 0.0
        attempts = 0
        for attempt in range(self.max_retries + 1):
            if attempt:
                if time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            attempts += 1
            pause = min(30.0, self.backoff * 2**attempt)
            request = urllib.request.Request(
                url, data=data, headers=headers, method="GET" if data is None else "POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=remaining) as response:
                    raw = response.read()
            except urllib.error.HTTPError as error:
                detail = error.read()[:500].decode(errors="replace")
                if error.code in _RETRY_STATUS:
                    last_error = error
                    pause = _retry_after(error, pause)
                    continue
                if error.code < 500:
                    raise EngineRequestError(
                        f"{url} rejected the request (HTTP {error.code}): {detail}"
                    ) from error
                raise EngineResponseError(
                    f"{url} failed on the request (HTTP {error.code}): {detail}; not re-sent, since the server "
                    "may have done the work"
                ) from error
            except urllib.error.URLError as error:  # connecting or sending failed: the server has not got it
                last_error = error
                continue
            except (
                OSError,
                http.client.HTTPException,
            ) as error:  # it got the request, the answer did not come
                raise EngineConnectionError(
                    f"{url} took the request but gave no answer ({type(error).__name__}: {error}) within "
                    f"{time.monotonic() - started:.1f} s (timeout={self.timeout:g}); not re-sent, since the "
                    "server may still be computing it"
                ) from error
            try:
                parsed = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise EngineResponseError(f"{url} answered with non-JSON: {raw[:200]!r}") from error
            if not isinstance(parsed, dict):
                raise EngineResponseError(
                    f"{url} answered with a JSON {type(parsed).__name__}, not an object"
                )
            return parsed
        raise EngineConnectionError(
            f"no usable answer from {url} after {attempts} attempts in {time.monotonic() - started:.1f} s "
            f"(is the server up?): {last_error}"
        ) from last_error

    def _first_model(self) -> str:
        listing = self._request("/models")
        try:
            return str(listing["data"][0]["id"])
        except (KeyError, IndexError, TypeError) as error:
            raise EngineResponseError(
                f"{self.base_url}/models lists no model: {str(listing)[:200]}"
            ) from error

    def _map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items))) as pool:
            return list(pool.map(function, items))

    # -- prompts -------------------------------------------------------------------------------------------
    def _local_chat(self) -> bool:
        return self._tokenizer is not None and has_chat_template(self._tokenizer)

    def step_prompt(self, question: str, steps: Sequence[str], instruction: str = "") -> Prompt:
        """Rendered text with a local tokenizer; otherwise chat messages with the assistant turn left open."""
        if self._tokenizer is not None:
            return step_prompt(self._tokenizer, question, steps, instruction, self.step_delimiter)
        return step_messages(question, steps, instruction, self.step_delimiter)

    # -- generation ----------------------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        n: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        """Per prompt, ``n`` completions (one HTTP request per prompt, at most ``max_concurrency`` at once)."""
        stops = check_generate_args(prompts, n, max_new_tokens, temperature, top_p, stop, min_new_tokens=1)
        sampling: dict[str, Any] = {
            "model": self.model,
            "n": n,
            "max_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if stops:
            sampling["stop"] = stops
        if seed is not None:
            sampling["seed"] = seed

        def one(prompt: Prompt) -> list[Completion]:
            if isinstance(prompt, str) or self._local_chat():
                return self._complete(
                    render_prompt(self._tokenizer, prompt) if not isinstance(prompt, str) else prompt,
                    sampling,
                    stops,
                )
            return self._chat(list(prompt), sampling, stops)

        groups = self._map(one, list(prompts))
        self.stats.record(groups)
        return groups

    def _complete(self, prompt: str, sampling: dict[str, Any], stops: list[str]) -> list[Completion]:
        body = {**sampling, "prompt": prompt, "logprobs": 1}
        if self.vllm_extensions:
            body["return_tokens_as_token_ids"] = True
        response = self._request("/completions", body)
        prompt_tokens = self._prompt_tokens(response, sampling["n"])
        completions = []
        for choice in self._choices(response, sampling["n"]):
            logprobs = choice.get("logprobs") or {}
            tokens = logprobs.get("tokens") or []
            values = logprobs.get("token_logprobs") or []
            completions.append(self._completion(choice, tokens, values, stops, prompt_tokens))
        return completions

    def _chat(
        self, messages: list[dict[str, str]], sampling: dict[str, Any], stops: list[str]
    ) -> list[Completion]:
        body: dict[str, Any] = {**sampling, "messages": messages, "logprobs": True}
        if self.vllm_extensions:
            body["return_tokens_as_token_ids"] = True
            if messages and messages[-1].get("role") == "assistant":
                body.update(continue_final_message=True, add_generation_prompt=False)
        response = self._request("/chat/completions", body)
        prompt_tokens = self._prompt_tokens(response, sampling["n"])
        completions = []
        for choice in self._choices(response, sampling["n"]):
            message = choice.get("message")
            if not isinstance(message, dict):
                raise EngineResponseError(f"chat choice without a message: {str(choice)[:200]}")
            entries = (choice.get("logprobs") or {}).get("content") or []
            tokens = [str(e.get("token", "")) for e in entries]
            values = [e.get("logprob") for e in entries]
            completions.append(
                self._completion(
                    {**choice, "text": message.get("content") or ""}, tokens, values, stops, prompt_tokens
                )
            )
        return completions

    @staticmethod
    def _choices(response: dict[str, Any], n: int) -> list[dict[str, Any]]:
        choices = response.get("choices")
        if (
            not isinstance(choices, list)
            or len(choices) != n
            or not all(isinstance(c, dict) for c in choices)
        ):
            raise EngineResponseError(f"expected {n} choices, got: {str(response)[:300]}")
        return sorted(choices, key=lambda c: c.get("index", 0))

    @staticmethod
    def _prompt_tokens(response: dict[str, Any], n: int) -> int:
        usage = response.get("usage") or {}
        return int(usage.get("prompt_tokens") or 0)

    def _completion(
        self,
        choice: dict[str, Any],
        tokens: list[str],
        values: list[Any],
        stops: list[str],
        prompt_tokens: int,
    ) -> Completion:
        text = choice.get("text")
        if not isinstance(text, str):
            raise EngineResponseError(f"choice without text: {str(choice)[:200]}")
        ids = [_token_id(t) for t in tokens]
        logprobs = [float(v) if v is not None else 0.0 for v in values]
        if ids and all(i is not None for i in ids):
            token_ids = [int(i) for i in ids]  # type: ignore[arg-type]
        elif self._tokenizer is not None:
            token_ids = list(self._tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(token_ids) != len(logprobs):
                logprobs = logprobs[: len(token_ids)]
        else:
            token_ids = []
        reason = self._finish_reason(choice, stops)
        if self._tokenizer is not None and token_ids and reason == "stop":
            # the server cut the text; keep the tokens covering it, as the local engines do
            keep = tokens_covering(self._tokenizer, token_ids, len(text))
            token_ids, logprobs = token_ids[:keep], logprobs[:keep]
        hit = earliest_stop(text, stops)  # some servers return the stop string; never pass it on
        if hit is not None:
            text, reason = text[: hit[0]], "stop"
        return Completion(
            text,
            token_ids,
            logprobs[: len(token_ids)] if token_ids else logprobs,
            reason,
            prompt_tokens,
            self._stop_reason(choice, stops, reason),
        )

    @staticmethod
    def _finish_reason(choice: dict[str, Any], stops: list[str]) -> FinishReason:
        reason = choice.get("finish_reason")
        if reason == "length":
            return "length"
        if reason != "stop":
            return "eos" if reason in {"eos", "end_turn"} else "length"
        if "stop_reason" in choice:  # vLLM: the matched stop string, or None / a token id for EOS
            return "stop" if isinstance(choice["stop_reason"], str) else "eos"
        return "stop" if stops else "eos"

    @staticmethod
    def _stop_reason(choice: dict[str, Any], stops: list[str], reason: str) -> str | None:
        if reason != "stop":
            return None
        value = choice.get("stop_reason")
        return value if isinstance(value, str) else (stops[0] if len(stops) == 1 else None)

    # -- scoring -------------------------------------------------------------------------------------------
    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[list[float]]:
        """Per-token log-probs of each continuation, via ``/completions`` with ``echo`` (vLLM and most servers)."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        texts = [p if isinstance(p, str) else render_prompt(self._tokenizer, p) for p in prompts]
        return self._map(lambda pair: self._score_one(*pair), list(zip(texts, continuations)))

    def _score_one(self, prompt: str, continuation: str) -> list[float]:
        body = {
            "model": self.model,
            "prompt": prompt + continuation,
            "max_tokens": 1,
            "temperature": 0,
            "echo": True,
            "logprobs": 0,
        }
        choice = self._choices(self._request("/completions", body), 1)[0]
        logprobs = choice.get("logprobs") or {}
        offsets, values = logprobs.get("text_offset"), logprobs.get("token_logprobs")
        if not isinstance(offsets, list) or not isinstance(values, list) or len(offsets) != len(values):
            raise EngineResponseError(
                f"echo with log-probs is not supported by this server: {str(choice)[:200]}"
            )
        start, end = len(prompt), len(prompt) + len(continuation)
        return [float(v) for off, v in zip(offsets, values) if start <= off < end and v is not None]
