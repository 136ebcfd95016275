"""Chunked, length-sorted forward passes shared by the transformer PRMs.

Why: search agents score dozens of candidates per call; one padded batch of all of them wastes compute on padding
and can exhaust memory, while one call per candidate is slow. Sorting by length and cutting into chunks bounded by
both a row count and a token budget keeps padding small and memory flat.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["chunked_position_scores", "model_device", "pad_id_of", "score_positions_in_eval_mode"]

# reader(input_ids, attention_mask, rows, cols) -> scores (1-D float tensor), one per (row, col) pair.
Reader = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def pad_id_of(tokenizer: object) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


@torch.inference_mode()
def chunked_position_scores(
    encoded: Sequence[tuple[list[int], list[int]]],
    reader: Reader,
    *,
    pad_id: int,
    device: torch.device,
    batch_size: int = 16,
    max_batch_tokens: int = 16384,
    unknown: float = 0.5,
) -> list[list[float]]:
    """Run ``reader`` over ``(input_ids, positions)`` items in length-sorted chunks; return per-item scores.

    Positions equal to ``-1`` (cut off by truncation) get ``unknown``.
    """
    results: list[list[float]] = [[unknown] * len(pos) for _, pos in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]), reverse=True)
    start = 0
    truncated = False
    while start < len(order):
        longest = max(1, len(encoded[order[start]][0]))
        rows = max(1, min(batch_size, max_batch_tokens // longest))
        chunk = order[start : start + rows]
        start += rows
        width = max(1, max(len(encoded[i][0]) for i in chunk))
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        row_index: list[int] = []
        col_index: list[int] = []
        owners: list[tuple[int, int]] = []
        for row, item in enumerate(chunk):
            ids, positions = encoded[item]
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
            for step, pos in enumerate(positions):
                if pos < 0:
                    truncated = True
                    continue
                row_index.append(row)
                col_index.append(pos)
                owners.append((item, step))
        if not owners:
            continue
        scores = reader(
            input_ids.to(device),
            attention_mask.to(device),
            torch.tensor(row_index, device=device),
            torch.tensor(col_index, device=device),
        )
        for (item, step), value in zip(owners, scores.float().cpu().tolist()):
            results[item][step] = float(value)
    if truncated:
        warnings.warn("PRM input longer than max_length: early steps were cut and scored 0.5", stacklevel=3)
    return results


def score_positions_in_eval_mode(prm: Any, encoded: Sequence, reader: Any) -> list[list[float]]:
    """``chunked_position_scores`` for a PRM (``model``, ``tokenizer``, ``batch_size``, ``max_batch_tokens``), with
    the model in eval mode for the call and its training mode restored after (a trainer may share it).

    Sets ``prm.last_read_tokens``: the input tokens read per scored candidate (padding excluded), so a caller can
    count the PRM's compute next to the policy's (the test-time scaling benchmark's x-axis)."""
    prm.last_read_tokens = [len(ids) for ids, _ in encoded]
    was_training = prm.model.training
    prm.model.eval()
    try:
        return chunked_position_scores(
            encoded,
            reader,
            pad_id=pad_id_of(prm.tokenizer),
            device=model_device(prm.model),
            batch_size=prm.batch_size,
            max_batch_tokens=prm.max_batch_tokens,
        )
    finally:
        prm.model.train(was_training)
