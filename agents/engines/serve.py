"""Serve an engine over the OpenAI wire format (``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``).

Why: a policy or an LLM judge loaded once can then be shared by many processes (rollout workers, evaluation
scripts) through :class:`agents.engines.OpenAIEngine`, and the HTTP backend is tested against a real server that
needs nothing beyond this package. Requests are answered one at a time (the engine batches inside a request:
``n`` samples or a list of prompts); use ``vllm serve`` for continuous batching across requests.

    python -m agents.engines.serve --model smollm2-135m-instruct --port 8000
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .base import Completion

__all__ = ["make_server", "main"]


class _BadRequest(ValueError):
    pass


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float, (int, float)):
        raise _BadRequest(f"field {name!r} must be {kind}, got {value!r}")
    return value


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise _BadRequest("field 'stop' must be a string or a list of strings")
    return {
        "n": _field(body, "n", int, 1),
        "max_new_tokens": _field(body, "max_tokens", int, _field(body, "max_completion_tokens", int, 16)),
        "temperature": float(_field(body, "temperature", (int, float), 1.0)),
        "top_p": float(_field(body, "top_p", (int, float), 1.0)),
        "stop": stop,
        "seed": _field(body, "seed", int, None),
    }


def _finish(c: Completion) -> tuple[str, str | None]:
    return ("length", None) if c.finish_reason == "length" else ("stop", c.stop_reason)


class _Handler(BaseHTTPRequestHandler):
    server: _EngineServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet by default
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "code": status}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") in {"/health", "/v1/health"}:
            self._send(200, {"status": "ok"})
        elif self.path.rstrip("/") == "/v1/models":
            model = {"id": self.server.model_name, "object": "model", "owned_by": "openr-gym"}
            self._send(200, {"object": "list", "data": [model]})
        else:
            self._error(404, f"no route {self.path}", "not_found")

    def do_POST(self) -> None:
        routes = {"/v1/completions": self.server.completions, "/v1/chat/completions": self.server.chat}
        route = routes.get(self.path.rstrip("/"))
        if route is None:
            self._error(404, f"no route {self.path}", "not_found")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"null")
            if not isinstance(body, dict):
                raise _BadRequest("the request body must be a JSON object")
            with self.server.lock:
                payload = route(body)
        except (_BadRequest, json.JSONDecodeError, ValueError, TypeError) as error:
            self._error(400, str(error), "invalid_request_error")
        except Exception as error:  # noqa: BLE001 - the client gets a 500 with the reason, the server lives on
            self._error(500, f"{type(error).__name__}: {error}", "server_error")
        else:
            self._send(200, payload)


class _EngineServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: Any, model_name: str, verbose: bool = False) -> None:
        super().__init__(address, _Handler)
        self.engine = engine
        self.model_name = model_name
        self.verbose = verbose
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

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise _BadRequest("field 'prompt' must be a non-empty string or list of strings")
        sampling = _sampling(body)
        want_logprobs = body.get("logprobs") is not None
        echo = bool(body.get("echo", False))
        as_ids = bool(body.get("return_tokens_as_token_ids", False))
        groups = self.engine.generate(prompts, **sampling)
        choices, prompt_tokens, generated = [], 0, 0
        for p_index, (text, group) in enumerate(zip(prompts, groups)):
            prompt_ids = self.engine.encode(text)
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
        sampling = _sampling(body)
        as_ids = bool(body.get("return_tokens_as_token_ids", False))
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
        prompt_tokens = len(self.engine.encode(messages))
        return self._envelope("chat.completion", choices, prompt_tokens, generated)


def make_server(engine: Any, host: str = "127.0.0.1", port: int = 8000, model_name: str = "openr-gym") -> Any:
    """An HTTP server (call ``serve_forever()``; ``port=0`` picks a free port, see ``server.server_port``)."""
    return _EngineServer((host, port), engine, model_name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="name, HF id or folder")
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.backend == "vllm":
        from .vllm_engine import VLLMEngine

        engine: Any = VLLMEngine(args.model, dtype=args.dtype)
    else:
        from .hf import HFEngine

        engine = HFEngine(args.model, dtype=args.dtype)
    server = make_server(engine, args.host, args.port, args.served_model_name or args.model)
    server.verbose = args.verbose
    print(f"serving {args.model} on http://{args.host}:{server.server_port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
