"""One forward pass of the policy over a ``TokenBatch``: per-token log-probs (and entropy, and critic values) of
the response tokens, with the vocabulary projection done in checkpointed chunks so memory stays bounded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from agents.engines.logprobs import hidden_states
from agents.rl.rollout import TokenBatch

__all__ = ["PolicyOutput", "policy_forward"]


@dataclass
class PolicyOutput:
    """All ``(B, R)`` over response tokens, zero on padding."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None


def _chunk(head: Any, temperature: float, hidden: torch.Tensor, targets: torch.Tensor, with_entropy: bool):
    logits = head(hidden).float() / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    logp = torch.gather(logp_all, -1, targets.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logp, torch.zeros_like(logp).detach()
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def policy_forward(
    model: Any,
    batch: TokenBatch,
    *,
    chunk_size: int = 256,
    temperature: float = 1.0,
    with_entropy: bool = False,
    value_head: torch.nn.Module | None = None,
) -> PolicyOutput:
    """Log-probs of the response tokens under ``softmax(logits / temperature)`` (the sampling policy), optional
    entropy (no gradient, for logging) and ``value_head(hidden)`` at the state before each response token."""
    hidden = hidden_states(model, batch.input_ids, batch.attention_mask)[:, :-1]
    targets = batch.input_ids[:, 1:]
    rows, cols = batch.response_mask.nonzero(as_tuple=True)
    positions = batch.response_positions[rows, cols]
    picked_hidden = hidden[rows, positions]
    picked_targets = targets[rows, positions]
    head = model.get_output_embeddings()
    logp_pieces, entropy_pieces = [], []
    for start in range(0, rows.numel(), chunk_size):
        h = picked_hidden[start : start + chunk_size]
        t = picked_targets[start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            logp, entropy = checkpoint(_chunk, head, temperature, h, t, with_entropy, use_reentrant=False)
        else:
            logp, entropy = _chunk(head, temperature, h, t, with_entropy)
        logp_pieces.append(logp)
        entropy_pieces.append(entropy)
    shape = batch.response_mask.shape
    logprobs = torch.zeros(shape, dtype=torch.float32, device=picked_hidden.device).index_put(
        (rows, cols), torch.cat(logp_pieces)
    )
    out = PolicyOutput(logprobs=logprobs)
    if with_entropy:
        out.entropy = torch.zeros(shape, dtype=torch.float32, device=picked_hidden.device).index_put(
            (rows, cols), torch.cat(entropy_pieces)
        )
    if value_head is not None:
        values = value_head(picked_hidden.float()).squeeze(-1).float()
        out.values = torch.zeros(shape, dtype=torch.float32, device=picked_hidden.device).index_put(
            (rows, cols), values
        )
    return out
