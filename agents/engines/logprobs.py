"""Per-token log-probabilities in chunks: what scoring, PPO/GRPO/OREO losses and PRMs need.

Why chunks: the logits of a whole batch (8 x 256 tokens x 49152 vocab in fp32 = 403 MB for SmolLM2) dominate
memory. We run the transformer body once, then project hidden states to the vocabulary a few hundred positions at
a time, keeping only the gathered log-prob of each target token. Under autograd each chunk is checkpointed, so
the backward pass recomputes one chunk's logits instead of storing them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["hidden_states", "sequence_logprobs", "token_logprobs"]


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding (works for left and right padding alike)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def hidden_states(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Final (post-norm) hidden states of a causal LM, without computing any logits."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    decoder = model.get_decoder()
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=_position_ids(attention_mask),
        use_cache=False,
    )
    return out.last_hidden_state


def _chunk_logprobs(
    head: Any, softcap: float | None, hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.gather(F.log_softmax(logits, dim=-1), -1, targets.unsqueeze(-1)).squeeze(-1)


def token_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    target_mask: torch.Tensor | None = None,
    chunk_size: int = 512,
) -> torch.Tensor:
    """``out[b, t] = log p(input_ids[b, t + 1] | input_ids[b, :t + 1])``, shape ``(B, T - 1)``, fp32.

    ``target_mask`` (``(B, T - 1)`` bool) picks the targets to compute (e.g. only continuation tokens); other
    entries are 0. ``chunk_size`` bounds how many positions are projected to the vocabulary at once. Works with
    gradients enabled (training) and under ``torch.no_grad()`` (scoring).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, time), got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    targets = input_ids[:, 1:]
    if target_mask is None:
        target_mask = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    hidden = hidden_states(model, input_ids, attention_mask)[:, :-1]
    out = torch.zeros(targets.shape, dtype=torch.float32, device=input_ids.device)
    rows, cols = target_mask.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return out
    picked_hidden, picked_targets = hidden[rows, cols], targets[rows, cols]
    head = model.get_output_embeddings()
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    pieces = []
    for start in range(0, rows.numel(), chunk_size):
        h, t = picked_hidden[start : start + chunk_size], picked_targets[start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_logprobs, head, softcap, h, t, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(head, softcap, h, t))
    return out.index_put((rows, cols), torch.cat(pieces))


def sequence_logprobs(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    continuation_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int = 0,
    chunk_size: int = 512,
    batch_size: int = 16,
) -> list[list[float]]:
    """Log-probs of each continuation's tokens given its prompt, one list per pair (no gradients)."""
    if len(prompt_ids) != len(continuation_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(continuation_ids)} continuations")
    device = next(model.parameters()).device
    results: list[list[float]] = []
    for start in range(0, len(prompt_ids), batch_size):
        prompts = prompt_ids[start : start + batch_size]
        conts = continuation_ids[start : start + batch_size]
        width = max(len(p) + len(c) for p, c in zip(prompts, conts))
        ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        target_mask = torch.zeros((len(prompts), max(width - 1, 1)), dtype=torch.bool)
        for row, (p, c) in enumerate(zip(prompts, conts)):
            if not p:
                raise ValueError("scoring needs a non-empty prompt (the first token has no log-prob)")
            seq = list(p) + list(c)
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
            target_mask[row, len(p) - 1 : len(seq) - 1] = True
        with torch.no_grad():
            lp = token_logprobs(
                model,
                ids.to(device),
                mask.to(device),
                target_mask=target_mask.to(device),
                chunk_size=chunk_size,
            )
        for row, (p, c) in enumerate(zip(prompts, conts)):
            results.append(lp[row, len(p) - 1 : len(p) - 1 + len(c)].tolist())
    return results
