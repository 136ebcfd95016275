"""A faster attention for one-token decode steps on CPU, switched on only inside ``HFEngine``'s decode loop.

Why: with a padding mask, transformers' SDPA path repeats the KV heads of grouped-query attention
(``repeat_kv``) and torch's CPU SDPA kernel is slow in bf16. For SmolLM2-135M (9 query / 3 KV heads) at batch 64
and ~200 cached tokens that cost ~30 ms per layer per step, about as much as the rest of the model, which is
why decode throughput stopped growing past batch 8. For a single query token attention is two small matmuls:
the query heads of a group are stacked against their shared KV head (no copy), the scores are taken to fp32 for
the mask and the softmax, and the weighted sum runs in the model dtype (~14x faster here in bf16).

Prefill (several query tokens), sliding windows, soft-capping, attention sinks, dropout and training all go to
the stock SDPA function unchanged. The implementation is registered under its own name and selected by setting
the model config's ``_attn_implementation`` for the duration of a ``with`` block; the previous value is restored,
so a trainer sharing the model never sees it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["NAME", "decode_attention", "fast_decode_attention"]

NAME = "openr_gym_cpu_decode"
_UNSUPPORTED = ("sliding_window", "softcap", "s_aux", "sinks", "position_bias")


def decode_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Transformers attention interface: ``query`` (B, H, Q, D), ``key``/``value`` (B, KV, T, D) -> (B, Q, H, D)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    if (
        length != 1
        or dropout
        or module.training
        or heads % key.shape[1]
        or any(kwargs.get(name) is not None for name in _UNSUPPORTED)
        or (attention_mask is not None and attention_mask.dim() != 4)
    ):
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    scale = scaling if scaling is not None else dim**-0.5
    stacked = query.reshape(batch, key.shape[1], groups, dim)  # the query heads sharing one KV head
    scores = torch.matmul(stacked, key.transpose(-1, -2)).float() * scale  # (B, KV, groups, T)
    if attention_mask is not None:  # (B, 1, 1, T): True / 0.0 where a key may be attended
        mask = attention_mask[:, :, -1:, -key.shape[2] :]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    output = torch.matmul(weights, value)  # (B, KV, groups, D)
    return output.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


@contextmanager
def fast_decode_attention(model: Any, enabled: bool = True) -> Iterator[bool]:
    """Use :func:`decode_attention` in ``model`` inside the block when it runs SDPA on CPU; yields whether it does."""
    config = getattr(model, "config", None)
    device = next(model.parameters()).device
    if not enabled or config is None or device.type != "cpu" or config._attn_implementation != "sdpa":
        yield False
        return
    _register()
    config._attn_implementation = NAME
    try:
        yield True
    finally:
        config._attn_implementation = "sdpa"
