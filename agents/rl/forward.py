"""One forward pass of the policy over a ``TokenBatch``: per-token log-probs (and entropy, and critic values) of
the response tokens, with the vocabulary projection done in checkpointed chunks so memory stays bounded."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from agents.engines.logprobs import _position_ids, hidden_states
from agents.engines.prefix_cache import full_attention_cache
from agents.rl.rollout import TokenBatch

__all__ = ["PolicyOutput", "policy_forward", "prompt_groups", "response_scores"]


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
    entropy (no gradient, for logging) and ``value_head(hidden)`` at the state before each response token.

    The batch may live anywhere (the trainers keep it on the CPU): it is moved to the model's device for the pass,
    and the outputs come back on the batch's device (gradients flow through the copy)."""
    home = batch.input_ids.device
    device = next(model.parameters()).device
    if device != home:
        out = policy_forward(
            model,
            TokenBatch(*(getattr(batch, f.name).to(device) for f in fields(batch))),
            chunk_size=chunk_size,
            temperature=temperature,
            with_entropy=with_entropy,
            value_head=value_head,
        )
        return PolicyOutput(
            *(None if t is None else t.to(home) for t in (out.logprobs, out.entropy, out.values))
        )
    rows, cols, picked_hidden = _picked_hidden(model, batch)
    positions = batch.response_positions[rows, cols]
    picked_targets = batch.input_ids[:, 1:][rows, positions]
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


def _picked_hidden(model: Any, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, hidden): the final hidden state before each response token, in ``response_mask`` order."""
    rows, cols = batch.response_mask.nonzero(as_tuple=True)
    positions = batch.response_positions[rows, cols]
    groups = prompt_groups(batch)
    if len(groups) < len(batch) and full_attention_cache(model):
        return rows, cols, _response_hidden_shared_prompts(model, batch, groups)[rows, cols]
    return rows, cols, hidden_states(model, batch.input_ids, batch.attention_mask)[:, :-1][rows, positions]


def response_scores(model: Any, batch: TokenBatch, head: torch.nn.Module) -> torch.Tensor:
    """``(B, R)`` ``head(hidden)`` at the state before each response token (0 on padding): a scalar head on a
    causal LM's hidden states, e.g. OREAL's token-level reward model, without the vocabulary projection."""
    home, device = batch.input_ids.device, next(model.parameters()).device
    if device != home:
        moved = TokenBatch(*(getattr(batch, f.name).to(device) for f in fields(batch)))
        return response_scores(model, moved, head).to(home)
    rows, cols, hidden = _picked_hidden(model, batch)
    scores = head(hidden.float()).squeeze(-1).float()
    shape = batch.response_mask.shape
    return torch.zeros(shape, dtype=torch.float32, device=hidden.device).index_put((rows, cols), scores)


def prompt_groups(batch: TokenBatch) -> list[list[int]]:
    """Rows that share the same prompt tokens (GRPO/PPO groups: samples of one problem), first-seen order."""
    prompt_lengths = (batch.response_positions[:, 0] + 1).tolist()
    groups: dict[tuple[int, ...], list[int]] = {}
    for row, length in enumerate(prompt_lengths):
        groups.setdefault(tuple(batch.input_ids[row, :length].tolist()), []).append(row)
    return list(groups.values())


def _response_hidden_shared_prompts(model: Any, batch: TokenBatch, groups: list[list[int]]) -> torch.Tensor:
    """``(B, R, H)``: at ``[b, j]`` the final hidden state that predicts response token j of row b, with each
    distinct prompt run through the model once (its keys and values are then shared by its rows).

    Why: the G samples of a problem share a prompt that is often as long as the response; computing it once
    saves (G - 1) / G of the prompt's forward and backward. The maths is the same: the rows attend to the same
    prompt keys and values, and the gradient through them is summed over the rows, as it is when each row
    recomputes them. Prompts are left-padded to a common length, responses right-padded.
    """
    from transformers import DynamicCache

    decoder = model.get_decoder()
    device = batch.input_ids.device
    prompt_lengths = batch.response_positions[:, 0] + 1
    lengths = batch.attention_mask.sum(1)
    width = int(prompt_lengths.max())
    prompt_ids = torch.zeros((len(groups), width), dtype=torch.long, device=device)
    prompt_mask = torch.zeros((len(groups), width), dtype=torch.long, device=device)
    group_of_row = torch.zeros(len(batch), dtype=torch.long, device=device)
    for index, group in enumerate(groups):
        length = int(prompt_lengths[group[0]])
        prompt_ids[index, width - length :] = batch.input_ids[group[0], :length]
        prompt_mask[index, width - length :] = 1
        group_of_row[group] = index
    prompt_out = decoder(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=_position_ids(prompt_mask),
        use_cache=True,
    )
    shared = prompt_out.past_key_values
    cache = DynamicCache(config=model.config)
    for layer_index, layer in enumerate(shared.layers):
        cache.update(layer.keys[group_of_row], layer.values[group_of_row], layer_index)
    response_lengths = lengths - prompt_lengths
    response_width = max(int(response_lengths.max()), 1)
    response_ids = torch.zeros((len(batch), response_width), dtype=torch.long, device=device)
    response_mask = torch.zeros((len(batch), response_width), dtype=torch.long, device=device)
    for row in range(len(batch)):
        start, count = int(prompt_lengths[row]), int(response_lengths[row])
        response_ids[row, :count] = batch.input_ids[row, start : start + count]
        response_mask[row, :count] = 1
    positions = prompt_lengths[:, None] + torch.arange(response_width, device=device)[None, :]
    response_out = decoder(
        input_ids=response_ids,
        attention_mask=torch.cat([prompt_mask[group_of_row], response_mask], dim=1),
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    )
    last_prompt_hidden = prompt_out.last_hidden_state[group_of_row, -1:]
    return torch.cat([last_prompt_hidden, response_out.last_hidden_state[:, :-1]], dim=1)
