"""HFEngine's prefix cache: the radix tree itself, and generation with cached prompts equal to generation without."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agents.engines import HFEngine  # noqa: E402
from agents.engines.prefix_cache import PrefixCache, weights_fingerprint  # noqa: E402
from agents.engines.testing import tiny_model  # noqa: E402

QUESTION = "What is 12 + 30?"
INSTRUCTION = "Solve step by step."


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _kv(ids: list[int]):
    """Fake KV states for the unit tests: position t of every layer holds the token id at t."""

    def kv_range(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        values = torch.tensor(ids[start:stop], dtype=torch.float32).view(1, 1, -1, 1).expand(2, 1, -1, 3)
        return values.clone(), -values.clone()

    return kv_range


def _stored(cache: PrefixCache, ids: list[int]) -> list[int]:
    length, segments = cache.lookup_segments(ids)
    if not length:
        return []
    keys = torch.cat([k for k, _ in segments], dim=2)
    values = torch.cat([v for _, v in segments], dim=2)
    assert keys.shape == (2, 1, length, 3) and torch.equal(values, -keys)
    return [int(x) for x in keys[0, 0, :, 0]]


# -- the radix tree ------------------------------------------------------------------------------------------
def test_longest_common_prefix_is_served_and_edges_split() -> None:
    cache = PrefixCache(100)
    cache.insert([1, 2, 3, 4, 5], _kv([1, 2, 3, 4, 5]))
    assert _stored(cache, [1, 2, 3, 9]) == [1, 2, 3]  # a prefix of a cached sequence, not only whole entries
    assert _stored(cache, [7, 1]) == []
    assert cache.lookup_segments([1, 2, 3, 4, 5, 6], limit=2)[0] == 2
    cache.insert([1, 2, 3, 9, 9], _kv([1, 2, 3, 9, 9]))  # splits the edge after 3; shared tokens stored once
    assert cache.tokens == 7
    assert _stored(cache, [1, 2, 3, 9, 9, 1]) == [1, 2, 3, 9, 9]
    assert _stored(cache, [1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5]
    assert cache.match_length([1, 2, 3, 4, 0]) == 4
    assert cache.nbytes == 7 * 2 * (2 * 3 * 4)


def test_least_recently_used_leaves_go_first_and_budget_holds() -> None:
    cache = PrefixCache(9)
    cache.insert([1, 2, 3, 4], _kv([1, 2, 3, 4]))
    cache.insert([1, 2, 7, 8], _kv([1, 2, 7, 8]))
    cache.insert([5, 6], _kv([5, 6]))
    cache.lookup_segments([1, 2, 3, 4])  # now [7, 8] and [5, 6] are older
    cache.insert([9, 9, 9, 9], _kv([9, 9, 9, 9]))
    assert cache.tokens <= 9
    assert _stored(cache, [1, 2, 3, 4]) == [1, 2, 3, 4]
    assert _stored(cache, [9, 9, 9, 9]) == [9, 9, 9, 9]
    assert cache.match_length([1, 2, 7, 8]) == 2  # its own edge was evicted, the shared one stays
    assert cache.match_length([5, 6]) == 0
    cache.insert(
        list(range(100, 130)), _kv(list(range(100, 130)))
    )  # longer than the budget: its head is kept
    assert cache.tokens == 9 and cache.match_length(list(range(100, 130))) == 9
    cache.clear()
    assert cache.tokens == 0 and cache.match_length([100]) == 0


def test_weights_fingerprint_sees_in_place_updates_and_new_tensors() -> None:
    model, _ = tiny_model(seed=0)
    before = weights_fingerprint(model)
    assert weights_fingerprint(model) == before
    with torch.no_grad():
        next(model.parameters()).add_(0.0)  # an optimizer step is in place too
    assert weights_fingerprint(model) != before
    middle = weights_fingerprint(model)
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    assert weights_fingerprint(model) != middle
    last = weights_fingerprint(model)
    for parameter in model.parameters():
        parameter.data.mul_(1.01)  # ``.data`` has its own version counter: only the value probe sees this
    assert weights_fingerprint(model) != last


# -- the engine ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engines() -> tuple[HFEngine, HFEngine]:
    """The same model with and without the prefix cache."""
    model, tokenizer = tiny_model(seed=0)
    return HFEngine(model, tokenizer), HFEngine(model, tokenizer, prefix_cache_tokens=0)


def _assert_same(ours, theirs) -> None:
    for mine, other in zip(ours, theirs):
        assert len(mine) == len(other)
        for a, b in zip(mine, other):
            assert (a.text, a.token_ids, a.finish_reason) == (b.text, b.token_ids, b.finish_reason)
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_search_waves_equal_uncached_and_process_fewer_tokens(engines) -> None:
    cached, plain = engines
    cached.reset_prefix_cache()
    steps: list[list[str]] = [[]]
    processed = full = 0
    for wave in range(3):
        prompts = [cached.step_prompt(QUESTION, s, INSTRUCTION) for s in steps]
        kwargs = {"n": 2, "max_new_tokens": 10, "temperature": 0, "stop": ["\n\n", "."]}
        before = cached.stats.snapshot()["prompt_tokens"]
        ours = cached.generate(prompts, **kwargs)
        _assert_same(ours, plain.generate(prompts, **kwargs))
        processed += cached.stats.snapshot()["prompt_tokens"] - before
        full += sum(len(cached.encode(p)) for p in prompts)
        if wave:
            # every prompt extends one sent before: only its new tokens are prefilled
            assert all(g[0].prompt_tokens < len(cached.encode(p)) for g, p in zip(ours, prompts))
        steps = [s + [c.text.strip() or "step"] for s, g in zip(steps, ours) for c in g[:1]] + [
            s + ["another step"] for s in steps
        ]
    assert processed < 0.6 * full


def test_rows_with_different_cached_lengths_in_one_batch(engines) -> None:
    cached, plain = engines
    cached.reset_prefix_cache()
    long = cached.step_prompt(QUESTION, ["We add the tens.", "Then the ones."], INSTRUCTION)
    cached.generate([long, "Once upon a time"], max_new_tokens=3, temperature=0)
    prompts = [
        long + "So the answer",  # most of it cached
        "Once upon a time there was",  # a short cached prefix
        "The cat sat on the mat",  # nothing cached
        long,  # all but its last token cached
    ]
    for kwargs in ({"temperature": 0}, {"temperature": 0.9, "top_p": 0.95, "seed": 4, "n": 3}):
        ours = cached.generate(prompts, max_new_tokens=8, **kwargs)
        _assert_same(ours, plain.generate(prompts, max_new_tokens=8, **kwargs))  # seeded samples too
        if "seed" not in kwargs:
            assert [g[0].prompt_tokens for g in ours][2:] == [len(cached.encode(prompts[2])), 1]
            assert 1 < ours[0][0].prompt_tokens < 10
    assert cached.prefix_cache.tokens <= cached.prefix_cache.max_tokens


def test_a_prefix_shared_within_one_call_is_prefilled_once(engines) -> None:
    cached, plain = engines
    cached.reset_prefix_cache()
    head = cached.step_prompt(QUESTION, ["We add the tens and then the ones, carefully."], INSTRUCTION)
    tails = ["So", "Then we add", "Then we find that", "Then we find the sum", "Once upon a time"]
    prompts = [head + tail for tail in tails[:4]] + [tails[4]]  # nested shared prefixes, and a stranger
    before = cached.stats.snapshot()["prompt_tokens"]
    ours = cached.generate(prompts, n=2, max_new_tokens=6, temperature=0)
    _assert_same(ours, plain.generate(prompts, n=2, max_new_tokens=6, temperature=0))
    processed = cached.stats.snapshot()["prompt_tokens"] - before
    assert processed == sum(g[0].prompt_tokens for g in ours)
    # every distinct prefix of the prompts was computed exactly once: the size of their token trie
    encoded = [cached.encode(p) for p in prompts]
    assert processed == len({tuple(ids[:k]) for ids in encoded for k in range(1, len(ids) + 1)})
    assert ours[4][0].prompt_tokens == len(encoded[4])  # nothing shared with the others


def test_prompts_of_very_different_lengths_are_prefilled_in_groups_exactly(engines) -> None:
    cached, plain = engines
    reference = HFEngine(plain.model, plain.tokenizer, decoder="generate")
    long = plain.step_prompt(QUESTION, ["We add the tens.", "Then the ones.", "So we get 42."], INSTRUCTION)
    prompts = ["Hi", long, "Once upon a time", long + " Check:", "The cat"]
    lengths = [len(plain.encode(p)) for p in prompts]
    assert len(prompts) * max(lengths) > 1.5 * sum(lengths)  # one padded batch would waste most of its work
    cached.reset_prefix_cache()
    for engine in (plain, cached):
        ours = engine.generate(prompts, n=2, max_new_tokens=6, temperature=0)
        _assert_same(ours, reference.generate(prompts, n=2, max_new_tokens=6, temperature=0))
    assert [g[0].prompt_tokens for g in ours][:3] == lengths[:3]  # cold cache: every token was prefilled


def test_an_in_place_weight_update_invalidates_the_cache() -> None:
    model, tokenizer = tiny_model(seed=1)
    cached = HFEngine(model, tokenizer)
    plain = HFEngine(model, tokenizer, prefix_cache_tokens=0)
    prompt = cached.step_prompt(QUESTION, ["We add the tens."], INSTRUCTION)
    cached.generate([prompt], max_new_tokens=6, temperature=0)
    assert cached.generate([prompt], max_new_tokens=1, temperature=0)[0][0].prompt_tokens == 1
    with torch.no_grad():  # what an optimizer step does to the shared model
        for parameter in model.parameters():
            parameter.mul_(1.5)
    ours = cached.generate([prompt], max_new_tokens=6, temperature=0)
    assert ours[0][0].prompt_tokens == len(cached.encode(prompt))  # nothing stale was reused
    _assert_same(ours, plain.generate([prompt], max_new_tokens=6, temperature=0))
    cached.reset_prefix_cache()
    assert cached.prefix_cache.tokens == 0
    assert cached.generate([prompt], max_new_tokens=1, temperature=0)[0][0].prompt_tokens == len(
        cached.encode(prompt)
    )


def test_caching_pauses_while_every_call_sees_new_weights() -> None:
    model, tokenizer = tiny_model(seed=2)
    engine = HFEngine(model, tokenizer)
    prompt = engine.step_prompt(QUESTION, [], INSTRUCTION)
    stored = []
    for _ in range(4):  # an RL loop: rollout, optimizer step, rollout, ...
        engine.generate([prompt], max_new_tokens=3, temperature=0)
        stored.append(engine.prefix_cache.tokens)
        with torch.no_grad():
            next(model.parameters()).add_(0.01)
    assert stored[0] > 0 and stored[1] > 0 and stored[2:] == [0, 0]  # paused from the third changed call
    engine.generate([prompt], max_new_tokens=3, temperature=0)  # weights changed once more: still paused
    first = engine.generate([prompt], max_new_tokens=3, temperature=0)  # stable weights: caching resumes
    assert first[0][0].prompt_tokens == len(engine.encode(prompt)) and engine.prefix_cache.tokens > 0
    assert engine.generate([prompt], max_new_tokens=3, temperature=0)[0][0].prompt_tokens == 1
    for _ in range(4):  # clearing by hand is not a weight change: caching never pauses for it
        engine.reset_prefix_cache()
        engine.generate([prompt], max_new_tokens=3, temperature=0)
        assert engine.prefix_cache.tokens > 0


def test_budget_bounds_memory_and_zero_disables() -> None:
    model, tokenizer = tiny_model(seed=0)
    small = HFEngine(model, tokenizer, prefix_cache_tokens=40)
    prompts = [small.step_prompt(f"What is {i} + {i}?", [], INSTRUCTION) for i in range(4)]
    small.generate(prompts, max_new_tokens=5, temperature=0)
    assert 0 < small.prefix_cache.tokens <= 40
    assert small.prefix_cache.nbytes == small.prefix_cache.tokens * small.prefix_cache_bytes_per_token
    assert (
        small.prefix_cache_bytes_per_token == 2 * 2 * 1 * 64 * 4
    )  # K+V x layers x kv heads x head dim x fp32
    off = HFEngine(model, tokenizer, prefix_cache_tokens=0)
    assert off.prefix_cache is None
    off.generate(prompts[:1], max_new_tokens=2, temperature=0)
    assert off.generate(prompts[:1], max_new_tokens=2, temperature=0)[0][0].prompt_tokens == len(
        off.encode(prompts[0])
    )


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.isdir(os.path.expanduser("~/.cache/openr-gym/models/smollm2-135m-instruct")),
    reason="SmolLM2 not converted here",
)
def test_smollm2_search_steps_equal_uncached() -> None:
    from agents.engines import load_model

    model, tokenizer = load_model("smollm2-135m-instruct", dtype=torch.float32)
    cached = HFEngine(model, tokenizer)
    plain = HFEngine(model, tokenizer, prefix_cache_tokens=0)
    steps: list[list[str]] = [[], []]
    questions = ["What is 12 + 30?", "What is 7 * 6?"]
    for _ in range(3):
        prompts = [cached.step_prompt(q, s, INSTRUCTION) for q, s in zip(questions, steps)]
        kwargs = {"max_new_tokens": 24, "temperature": 0, "stop": ["\n\n"]}
        ours = cached.generate(prompts, **kwargs)
        _assert_same(ours, plain.generate(prompts, **kwargs))
        steps = [s + [g[0].text] for s, g in zip(steps, ours)]
    assert all(g[0].prompt_tokens < len(cached.encode(p)) for g, p in zip(ours, prompts))
