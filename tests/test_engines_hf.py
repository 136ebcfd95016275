"""HFEngine on a tiny random Llama with the SmolLM2 tokenizer: generation, stop strings, log-probs, prompts."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agents.engines import Completion, Engine, HFEngine  # noqa: E402
from agents.engines.logprobs import token_logprobs  # noqa: E402
from agents.engines.prompting import plain_step_prompt  # noqa: E402
from agents.engines.stopping import finish_completion  # noqa: E402
from agents.engines.testing import byte_level_tokenizer, tiny_model  # noqa: E402

QUESTION = "What is 12 + 30?"
INSTRUCTION = "Solve step by step."


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    model, tokenizer = tiny_model(seed=0)
    return HFEngine(model, tokenizer)


def test_engine_satisfies_protocol(engine: HFEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.tokenizer.chat_template


def test_generate_shapes_and_stats(engine: HFEngine) -> None:
    before = engine.stats.snapshot()
    out = engine.generate(["Hello there", [{"role": "user", "content": "Hi"}]], n=3, max_new_tokens=5, seed=0)
    assert len(out) == 2 and all(len(group) == 3 for group in out)
    for group in out:
        for c in group:
            assert isinstance(c, Completion)
            assert len(c.token_ids) == len(c.logprobs) == 5
            assert c.finish_reason == "length"
            assert all(lp <= 0 for lp in c.logprobs)
    after = engine.stats.snapshot()
    assert after["calls"] == before["calls"] + 1
    assert after["generated_tokens"] == before["generated_tokens"] + 30
    assert (
        after["prompt_tokens"] - before["prompt_tokens"] == out[0][0].prompt_tokens + out[1][0].prompt_tokens
    )


def test_greedy_is_deterministic_and_padding_invariant(engine: HFEngine) -> None:
    short = "2 + 2 ="
    long = engine.step_prompt(QUESTION, ["We add the tens.", "Then the ones."], INSTRUCTION)
    alone = engine.generate([short], n=2, max_new_tokens=8, temperature=0)[0]
    batched = engine.generate([long, short], max_new_tokens=8, temperature=0)[1]
    assert alone[0].token_ids == alone[1].token_ids == batched[0].token_ids


def test_generate_logprobs_match_score(engine: HFEngine) -> None:
    prompt = engine.step_prompt(QUESTION, [], INSTRUCTION)
    for temperature, top_p in [(0.0, 1.0), (0.7, 0.9)]:
        completion = engine.generate(
            [prompt], max_new_tokens=6, temperature=temperature, top_p=top_p, seed=3
        )[0][0]
        scored = engine.score_ids([engine.encode(prompt)], [completion.token_ids])[0]
        # log-probs are under the raw model (before temperature / top-p), as vLLM reports them
        assert scored == pytest.approx(completion.logprobs, abs=1e-4)


def test_score_text_matches_score_ids(engine: HFEngine) -> None:
    prompt, continuation = "The answer is", " 42, clearly."
    ids = engine.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    assert engine.score([prompt], [continuation]) == engine.score_ids([engine.encode(prompt)], [ids])
    assert len(engine.score([prompt], [continuation])[0]) == len(ids)


def test_seed_reproducible(engine: HFEngine) -> None:
    def sample(seed: int) -> list[list[int]]:
        return [c.token_ids for c in engine.generate(["Once upon"], n=4, max_new_tokens=6, seed=seed)[0]]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    assert len({tuple(ids) for ids in sample(7)}) > 1  # n samples differ from each other


def test_tiny_top_p_is_greedy(engine: HFEngine) -> None:
    greedy = engine.generate(["Once upon"], max_new_tokens=6, temperature=0)[0][0]
    nucleus = engine.generate(["Once upon"], max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=1)[0][0]
    assert nucleus.token_ids == greedy.token_ids


def test_stop_string_cuts_text_and_ends_only_that_sequence(engine: HFEngine) -> None:
    prompts = ["Once upon", "The cat"]
    free = engine.generate(prompts, max_new_tokens=16, temperature=0)
    text = free[0][0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = engine.generate(prompts, max_new_tokens=16, temperature=0, stop=[stop, "never-matches"])
    first = stopped[0][0]
    assert first.finish_reason == "stop" and first.stop_reason == stop
    assert first.text == text[: text.find(stop)]
    assert len(first.token_ids) < 16 and len(first.logprobs) == len(first.token_ids)
    assert engine.tokenizer.decode(first.token_ids).startswith(first.text)
    assert first.token_ids == free[0][0].token_ids[: len(first.token_ids)]
    if stop not in free[1][0].text:  # the other row kept going, unaffected by its neighbour stopping
        assert stopped[1][0].token_ids == free[1][0].token_ids


def test_finish_completion_reasons(engine: HFEngine) -> None:
    tok = engine.tokenizer
    ids = tok("Step one.\n\nStep two", add_special_tokens=False)["input_ids"]
    c = finish_completion(tok, ids, [-1.0] * len(ids), stops=["\n\n"], eos_token_ids={2}, prompt_tokens=4)
    assert (c.text, c.finish_reason, c.stop_reason, c.prompt_tokens) == ("Step one.", "stop", "\n\n", 4)
    assert tok.decode(c.token_ids).startswith("Step one.") and len(c.token_ids) < len(ids)
    eos = finish_completion(
        tok, [*ids, 2], [-1.0] * (len(ids) + 1), stops=[], eos_token_ids={2}, prompt_tokens=4
    )
    assert eos.finish_reason == "eos" and eos.text == "Step one.\n\nStep two" and eos.token_ids[-1] == 2
    empty = finish_completion(tok, ids, [-1.0] * len(ids), stops=["Step"], eos_token_ids={2}, prompt_tokens=4)
    assert (empty.text, empty.token_ids, empty.finish_reason) == ("", [], "stop")


def test_step_prompt_chat_round_trip(engine: HFEngine) -> None:
    empty = engine.step_prompt(QUESTION, [], INSTRUCTION)
    assert empty.endswith("<|im_start|>assistant\n") and INSTRUCTION in empty and QUESTION in empty
    one = engine.step_prompt(QUESTION, ["12 + 30 = 42."], INSTRUCTION)
    two = engine.step_prompt(QUESTION, ["12 + 30 = 42.", "The answer is 42."], INSTRUCTION)
    assert one == empty + "12 + 30 = 42.\n\n"
    assert two == one + "The answer is 42.\n\n"  # observation + step round-trips, turn left open
    assert "<|im_end|>" not in one[len(empty) :]


def test_step_prompt_base_model_is_plain_text() -> None:
    model, tokenizer = tiny_model(seed=0)
    tokenizer.chat_template = None
    base = HFEngine(model, tokenizer)
    prompt = base.step_prompt(QUESTION, ["Add."], INSTRUCTION)
    assert prompt == f"{INSTRUCTION}\n\nProblem: {QUESTION}\n\nSolution:\n\nAdd.\n\n"
    assert prompt == plain_step_prompt(QUESTION, ["Add."], INSTRUCTION)
    with pytest.raises(ValueError, match="chat template"):
        base.generate([[{"role": "user", "content": "hi"}]], max_new_tokens=1)


def test_token_logprobs_chunked_equals_full_and_has_grad() -> None:
    model, tokenizer = tiny_model(seed=1)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [0, 0, 11, 12, 13, 14]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    chunked = token_logprobs(model, ids, mask, chunk_size=3)
    with torch.no_grad():
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, :-1].float()
        full = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    valid = (mask[:, 1:] & mask[:, :-1]).bool()
    assert torch.allclose(chunked[valid], full[valid], atol=1e-5)
    assert (chunked[~valid] == 0).all()
    chunked.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_shared_training_model_keeps_its_mode() -> None:
    model, tokenizer = tiny_model(seed=0)
    model.train()
    shared = HFEngine(model, tokenizer)
    shared.generate(["Hi"], max_new_tokens=2, temperature=0)
    shared.score(["Hi"], [" there"])
    assert model.training


def test_byte_level_fallback_tokenizer() -> None:
    model, tokenizer = tiny_model(seed=0, tokenizer=byte_level_tokenizer())
    fallback = HFEngine(model, tokenizer)
    prompt = fallback.step_prompt(QUESTION, ["Add."], INSTRUCTION)
    assert prompt.endswith("<|im_start|>assistant\nAdd.\n\n")
    out = fallback.generate([prompt], n=2, max_new_tokens=4, seed=0)[0]
    assert all(len(c.token_ids) == 4 for c in out)


def test_bad_input_gives_clear_errors(engine: HFEngine) -> None:
    with pytest.raises(TypeError, match="sequence of prompts"):
        engine.generate("just a string", max_new_tokens=1)
    with pytest.raises(ValueError, match="n >= 1"):
        engine.generate(["x"], n=0)
    with pytest.raises(ValueError, match="temperature"):
        engine.generate(["x"], temperature=-1)
    with pytest.raises(ValueError, match="role"):
        engine.generate([[{"text": "hi"}]], max_new_tokens=1)
    with pytest.raises(ValueError, match="continuations"):
        engine.score(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="tokenizer"):
        HFEngine(tiny_model()[0])


def test_decode_loop_matches_model_generate(engine: HFEngine) -> None:
    reference = HFEngine(engine.model, engine.tokenizer, decoder="generate")
    prompts = ["Once upon", engine.step_prompt(QUESTION, ["We add the tens."], INSTRUCTION), "The cat"]
    free = engine.generate(prompts, max_new_tokens=12, temperature=0)
    stop = free[0][0].text[4:7]
    for kwargs in ({}, {"stop": [stop, "\n\n"]}):
        ours = engine.generate(prompts, n=2, max_new_tokens=12, temperature=0, **kwargs)
        theirs = reference.generate(prompts, n=2, max_new_tokens=12, temperature=0, **kwargs)
        for prompt, mine, other in zip(prompts, ours, theirs):
            for a, b in zip(mine, other):
                assert (a.text, a.token_ids, a.finish_reason) == (b.text, b.token_ids, b.finish_reason)
                assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
                # the loop's prefix cache has seen these prompts: it prefills only their last token
                assert b.prompt_tokens == len(engine.encode(prompt))
                assert a.prompt_tokens == 1
    sampled = reference.generate(prompts[:1], n=3, max_new_tokens=5, temperature=0.8, top_p=0.9, seed=2)[0]
    for c in sampled:
        assert c.logprobs == pytest.approx(
            engine.score_ids([engine.encode(prompts[0])], [c.token_ids])[0], abs=1e-4
        )


def test_many_samples_split_over_batches() -> None:
    model, tokenizer = tiny_model(seed=0)
    small = HFEngine(model, tokenizer, max_batch_size=3)
    out = small.generate(["Once upon", "The cat"], n=5, max_new_tokens=3, seed=0)
    assert [len(g) for g in out] == [5, 5]
    greedy = small.generate(["Once upon", "The cat"], n=4, max_new_tokens=3, temperature=0)
    assert all(c.token_ids == g[0].token_ids for g in greedy for c in g)
