"""HFEngine's decode-step attention and sampler: same results as the stock paths, and a trainer never sees them."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agents.engines.attention import NAME, decode_attention, fast_decode_attention  # noqa: E402
from agents.engines.hf import _choose  # noqa: E402
from agents.engines.testing import tiny_model  # noqa: E402


class _Module(torch.nn.Module):
    num_key_value_groups = 3


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_decode_attention_equals_sdpa(mask_kind: str) -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(4, 9, 1, 16, generator=generator)
    key = torch.randn(4, 3, 7, 16, generator=generator)
    value = torch.randn(4, 3, 7, 16, generator=generator)
    mask = None
    if mask_kind != "none":
        allowed = torch.ones(4, 1, 1, 7, dtype=torch.bool)
        allowed[0, ..., :3] = False  # left padding
        allowed[2, ..., 4:6] = False  # padding in the middle (a prefix-cache row)
        mask = allowed if mask_kind == "bool" else torch.zeros(4, 1, 1, 7).masked_fill(~allowed, -1e9)
    module = _Module().eval()
    ours, _ = decode_attention(module, query, key, value, mask, scaling=0.3)
    theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    assert ours.shape == theirs.shape == (4, 1, 9, 16)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_fast_attention_only_inside_the_block(monkeypatch) -> None:
    import transformers.integrations.sdpa_attention as sdpa

    stock = sdpa.sdpa_attention_forward
    fallback_query_lengths: list[int] = []

    def counting_sdpa(module, query, *args, **kwargs):
        fallback_query_lengths.append(query.shape[2])
        return stock(module, query, *args, **kwargs)

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", counting_sdpa)
    model, _ = tiny_model(seed=0)
    assert model.config._attn_implementation == "sdpa"
    with fast_decode_attention(model) as used:
        assert used and model.config._attn_implementation == NAME
        ids = torch.tensor([[5, 6, 7, 8]])
        cached = model(ids, use_cache=True)  # prefill falls back to SDPA; the next token takes the fast path
        assert fallback_query_lengths and set(fallback_query_lengths) == {4}
        step = model(torch.tensor([[9]]), past_key_values=cached.past_key_values).logits
        assert set(fallback_query_lengths) == {4}  # the one-token step never reached SDPA
    assert model.config._attn_implementation == "sdpa"
    reference = model(torch.tensor([[5, 6, 7, 8, 9]])).logits[:, -1:]
    torch.testing.assert_close(step, reference, atol=1e-4, rtol=1e-4)
    with fast_decode_attention(model, enabled=False) as used:
        assert not used and model.config._attn_implementation == "sdpa"


def test_sampler_frequencies_and_top_p() -> None:
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0, -30.0]).expand(40000, 5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        draws = _choose(logits, 1.0, 1.0)
        nucleus = _choose(logits, 1.0, 0.7)
    frequencies = torch.bincount(draws, minlength=5).float() / len(draws)
    torch.testing.assert_close(frequencies, torch.softmax(logits[0], -1), atol=0.01, rtol=0)
    # top_p=0.7 keeps tokens 2 (0.64) and 1 (0.24) only, renormalised
    assert set(nucleus.tolist()) == {1, 2}
    assert abs((nucleus == 2).float().mean().item() - 0.64 / 0.88) < 0.01
    assert _choose(logits[:3], 0.0, 1.0).tolist() == [2, 2, 2]
