"""Serve an engine over the OpenAI wire format (``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``).

Why: a policy or an LLM judge loaded once can then be shared by many processes (rollout workers, evaluation
scripts) through :class:`agents.engines.OpenAIEngine`, and the HTTP backend is tested against a real server that
needs nothing beyond this package. Requests are answered one at a time (the engine batches inside a request:
``n`` samples or a list of prompts); use ``vllm serve`` for continuous batching across requests.

Why limits: one request holds the engine while it runs, so one oversized request (a 1 MB prompt, ``n=10**8``)
would block every other client for minutes. What exceeds the model's context or the limits of
:class:`ServeConfig` is answered with a 400 at once, as is anything this server would otherwise ignore
(``stream=true``, top-k log-probs, penalties) or a model name it does not serve (404).

    python -m agents.engines.serve --model smollm2-135m-instruct --port 8000
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from .base import Completion

__all__ = ["ServeConfig", "ServerLimits", "context_length", "make_server", "main"]


@dataclass
class ServerLimits:
    """What one request may ask for (each excess is a 400 with the reason, before any work is done)."""

    max_model_len: int | None = None
    """Prompt tokens + ``max_tokens`` per sequence; None: the model's own context (``context_length``)."""
    max_n: int = 64
    """Samples per prompt (``n``)."""
    max_tokens: int = 4096
    """New tokens per completion (``max_tokens``)."""
    max_sequences: int = 256
    """Sequences per request: prompts x ``n``."""
    max_body_bytes: int = 4 * 2**20
    """Request body size (413 beyond)."""
    read_timeout: float = 30.0
    """Seconds a client may take to send its request (a body shorter than its Content-Length is a 400 after this),
    and an idle keep-alive connection stays open."""


@dataclass
class ServeConfig(ServerLimits):
    """``python -m agents.engines.serve``: which model to serve, where, and the request limits."""

    model: str = "smollm2-135m-instruct"
    """Model name, HF id or folder."""
    backend: Literal["hf", "vllm"] = "hf"
    """``hf`` (transformers) or ``vllm``."""
    dtype: str = "auto"
    """Weights dtype (``auto`` picks bf16 only where the hardware runs it fast)."""
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    """The name clients must send as ``model`` (default: ``model``)."""
    verbose: bool = False
    """Log every request."""


class _BadRequest(ValueError):
    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


def context_length(engine: Any) -> int | None:
    """The model's context in tokens: vLLM's ``max_model_len``, else the config's ``max_position_embeddings``."""
    llm = getattr(engine, "llm", None)
    try:
        return int(llm.llm_engine.model_config.max_model_len)  # type: ignore[union-attr]
    except AttributeError:
        pass
    config = getattr(getattr(engine, "model", None), "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(getattr(engine, "tokenizer", None), "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 10_000_000 else None


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float, (int, float)):
        raise _BadRequest(f"field {name!r} must be {kind}, got {value!r}")
    return value


def _bounded(body: dict[str, Any], name: str, default: int, low: int, high: int, why: str) -> int:
    value = _field(body, name, int, default)
    if not low <= value <= high:
        raise _BadRequest(f"field {name!r} must be between {low} and {high} ({why}), got {value}")
    return value


def _real(
    body: dict[str, Any], name: str, default: float, low: float, high: float, low_open: bool = False
) -> float:
    value = float(_field(body, name, (int, float), default))
    if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise _BadRequest(f"field {name!r} must be a finite number in {bracket}{low}, {high}], got {value}")
    return value


_IGNORED_UNLESS_DEFAULT = {
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": None,
    "suffix": None,
    "tools": None,
    "tool_choice": None,
    "response_format": None,
}
"""Fields this server cannot honour: asking for them is a 400, not a silently different answer."""


def _check_request(body: dict[str, Any], model_name: str) -> None:
    requested = body.get("model")
    if requested is not None and requested != model_name:
        raise _BadRequest(
            f"The model `{requested}` does not exist; this server serves `{model_name}`", 404, "NotFoundError"
        )
    if body.get("stream"):
        raise _BadRequest(
            "stream=true is not supported by this server (it sends each answer whole): send stream=false"
        )
    for name, default in _IGNORED_UNLESS_DEFAULT.items():
        if body.get(name) not in (None, default):
            raise _BadRequest(f"field {name!r} is not supported by this server")


def _sampling(body: dict[str, Any], limits: ServerLimits) -> dict[str, Any]:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise _BadRequest("field 'stop' must be a string or a list of strings")
    n = _bounded(body, "n", 1, 1, limits.max_n, "the server's --max-n")
    best_of = body.get("best_of")
    if best_of is not None and best_of != n:
        raise _BadRequest("field 'best_of' is not supported by this server (leave it unset or equal to n)")
    default_tokens = _field(body, "max_completion_tokens", int, 16)
    return {
        "n": n,
        "max_new_tokens": _bounded(
            body, "max_tokens", default_tokens, 0, limits.max_tokens, "the server's --max-tokens"
        ),
        "temperature": _real(body, "temperature", 1.0, 0.0, math.inf),
        "top_p": _real(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        "stop": stop,
        "seed": _field(body, "seed", int, None),
    }


def _finish(c: Completion) -> tuple[str, str | None]:
    return ("length", None) if c.finish_reason == "length" else ("stop", c.stop_reason)


def _no_constants(name: str) -> Any:
    raise _BadRequest(f"{name} is not valid JSON")


class _Handler(BaseHTTPRequestHandler):
    server: _EngineServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.limits.read_timeout  # socket timeout for every read of this connection
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # quiet by default
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "code": status}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") in {"/health", "/v1/health"}:
            self._send(200, {"status": "ok"})
        elif self.path.rstrip("/") == "/v1/models":
            model = {
                "id": self.server.model_name,
                "object": "model",
                "owned_by": "openr-gym",
                "max_model_len": self.server.max_model_len,
            }
            self._send(200, {"object": "list", "data": [model]})
        else:
            self._error(404, f"no route {self.path}", "not_found")

    def _read_body(self) -> dict[str, Any]:
        """The JSON body; a body that is missing, too large, shorter than declared or not JSON is a 4xx."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            raise _BadRequest("chunked request bodies are not supported: send a Content-Length", 411)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise _BadRequest("Content-Length is not a number") from None
        limit = self.server.limits.max_body_bytes
        if length < 0 or length > limit:
            self.close_connection = True  # the body stays unread: this connection cannot be reused
            raise _BadRequest(f"request body of {length} bytes; this server takes 0 to {limit}", 413)
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise _BadRequest(
                f"the body is shorter than its Content-Length ({length} bytes): nothing more arrived in "
                f"{self.server.limits.read_timeout:g} s"
            ) from None
        if len(data) < length:
            self.close_connection = True
            raise _BadRequest(f"the body is shorter than its Content-Length ({len(data)} of {length} bytes)")
        try:
            body = json.loads(data or b"null", parse_constant=_no_constants)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _BadRequest(f"the request body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise _BadRequest("the request body must be a JSON object")
        return body

    def do_POST(self) -> None:
        routes = {"/v1/completions": self.server.completions, "/v1/chat/completions": self.server.chat}
        route = routes.get(self.path.rstrip("/"))
        try:
            body = self._read_body()  # read before answering, even a 404, so the connection stays usable
            if route is None:
                raise _BadRequest(f"no route {self.path}", 404, "not_found")
            _check_request(body, self.server.model_name)
            with self.server.lock:
                payload = route(body)
        except _BadRequest as error:
            self._error(error.status, str(error), error.kind)
        except (ValueError, TypeError) as error:
            self._error(400, str(error), "invalid_request_error")
        except Exception as error:  # noqa: BLE001 - the client gets a 500 with the reason, the server lives on
            self._error(500, f"{type(error).__name__}: {error}", "server_error")
        else:
            self._send(200, payload)


class _EngineServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        engine: Any,
        model_name: str,
        verbose: bool = False,
        limits: ServerLimits | None = None,
    ) -> None:
        super().__init__(address, _Handler)
        self.engine = engine
        self.model_name = model_name
        self.verbose = verbose
        self.limits = limits or ServerLimits()
        self.max_model_len = self.limits.max_model_len or context_length(engine)
        self.lock = threading.Lock()

    def _envelope(self, kind: str, choices: list[dict[str, Any]], prompt_tokens: int, generated: int) -> dict:
        return {
            "id": f"{kind}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": generated,
                "total_tokens": prompt_tokens + generated,
            },
        }

    def _token_text(self, token_id: int, as_ids: bool) -> str:
        return f"token_id:{token_id}" if as_ids else self.engine.tokenizer.decode([token_id])

    def _fits(self, prompts: list[Any], sampling: dict[str, Any]) -> list[list[int]]:
        """Token ids of each prompt, after checking the request against the limits and the model's context."""
        sequences = len(prompts) * sampling["n"]
        if sequences > self.limits.max_sequences:
            raise _BadRequest(
                f"{len(prompts)} prompts x n={sampling['n']} = {sequences} sequences; this server takes at most "
                f"{self.limits.max_sequences} per request (--max-sequences)"
            )
        encoded = [self.engine.encode(p) for p in prompts]
        if self.max_model_len is not None:
            for ids in encoded:
                if len(ids) + sampling["max_new_tokens"] > self.max_model_len:
                    raise _BadRequest(
                        f"This model's maximum context length is {self.max_model_len} tokens; the prompt has "
                        f"{len(ids)} tokens and max_tokens asks for {sampling['max_new_tokens']} more"
                    )
        return encoded

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise _BadRequest("field 'prompt' must be a non-empty string or list of strings")
        sampling = _sampling(body, self.limits)
        top = body.get("logprobs")
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 1):
            raise _BadRequest(
                f"field 'logprobs' must be 0 or 1, got {top!r}: this server returns the log-prob of each chosen "
                "token, not of alternatives (top_logprobs is always null)"
            )
        want_logprobs = top is not None
        echo = bool(body.get("echo", False))
        as_ids = bool(body.get("return_tokens_as_token_ids", False))
        encoded = self._fits(prompts, sampling)
        groups = self.engine.generate(prompts, **sampling)
        choices, prompt_tokens, generated = [], 0, 0
        for p_index, (text, prompt_ids, group) in enumerate(zip(prompts, encoded, groups)):
            prompt_tokens += len(prompt_ids)
            echo_ids: list[int] = prompt_ids if echo else []
            echo_lps: list[float | None] = []
            if echo and want_logprobs:
                echo_lps = [None, *self.engine.score_ids([prompt_ids[:1]], [prompt_ids[1:]])[0]]
            for s_index, c in enumerate(group):
                generated += len(c.token_ids)
                reason, stop_reason = _finish(c)
                choice: dict[str, Any] = {
                    "index": p_index * sampling["n"] + s_index,
                    "text": (text if echo else "") + c.text,
                    "logprobs": None,
                    "finish_reason": reason,
                    "stop_reason": stop_reason,
                }
                if want_logprobs:
                    ids = echo_ids + c.token_ids
                    offsets, position = [], 0
                    for i in range(len(ids)):
                        offsets.append(position)
                        position = len(self.engine.tokenizer.decode(ids[: i + 1]))
                    choice["logprobs"] = {
                        "tokens": [self._token_text(t, as_ids) for t in ids],
                        "token_logprobs": (echo_lps if echo else []) + c.logprobs,
                        "text_offset": offsets,
                        "top_logprobs": None,
                    }
                choices.append(choice)
        return self._envelope("text_completion", choices, prompt_tokens, generated)

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("field 'messages' must be a non-empty list")
        sampling = _sampling(body, self.limits)
        if _field(body, "top_logprobs", int, 0) != 0:
            raise _BadRequest(
                "field 'top_logprobs' must be 0 or unset: this server returns the log-prob of each chosen token "
                "(logprobs=true), not of alternatives"
            )
        as_ids = bool(body.get("return_tokens_as_token_ids", False))
        (prompt_ids,) = self._fits([messages], sampling)
        group = self.engine.generate([messages], **sampling)[0]
        choices, generated = [], 0
        for index, c in enumerate(group):
            generated += len(c.token_ids)
            reason, stop_reason = _finish(c)
            logprobs = None
            if body.get("logprobs"):
                content = [
                    {"token": self._token_text(t, as_ids), "logprob": lp, "bytes": None, "top_logprobs": []}
                    for t, lp in zip(c.token_ids, c.logprobs)
                ]
                logprobs = {"content": content}
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": logprobs,
                    "finish_reason": reason,
                    "stop_reason": stop_reason,
                }
            )
        return self._envelope("chat.completion", choices, len(prompt_ids), generated)


def make_server(
    engine: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str = "openr-gym",
    limits: ServerLimits | None = None,
) -> Any:
    """An HTTP server (call ``serve_forever()``; ``port=0`` picks a free port, see ``server.server_port``)."""
    return _EngineServer((host, port), engine, model_name, limits=limits)


def main(argv: list[str] | None = None) -> None:
    import dataclasses

    import tyro

    config = tyro.cli(ServeConfig, args=argv, description=__doc__.splitlines()[0])
    if config.backend == "vllm":
        from .vllm_engine import VLLMEngine

        engine: Any = VLLMEngine(config.model, dtype=config.dtype)
    else:
        from .hf import HFEngine

        engine = HFEngine(config.model, dtype=config.dtype)
    limits = ServerLimits(**{f.name: getattr(config, f.name) for f in dataclasses.fields(ServerLimits)})
    server = make_server(engine, config.host, config.port, config.served_model_name or config.model, limits)
    server.verbose = config.verbose
    print(
        f"serving {config.model} on http://{config.host}:{server.server_port}/v1 "
        f"(context {server.max_model_len} tokens)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
