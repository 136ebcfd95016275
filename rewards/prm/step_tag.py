"""Step-tag PRMs: a causal LM that, at a tag after each step, prefers a "good" token over a "bad" one.

The score of a step is ``softmax([logit(good), logit(bad)])[0]`` at the tag position (Math-Shepherd, Wang et al.
2024; OpenR's Math-psa). Only the hidden states at tag positions go through the LM head, so scoring never builds
the full (batch x length x vocab) logits tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rewards.prm._batching import score_positions_in_eval_mode
from rewards.prm.formats import MATH_SHEPHERD, StepFormat, encode_steps, get_format, token_id

__all__ = ["StepTagPRM", "candidate_logits", "last_hidden_states"]


def last_hidden_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final (normed) hidden states of a causal LM without computing its vocabulary logits."""
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    if base is not None and base is not model:
        return base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return out.hidden_states[-1]


def candidate_logits(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    candidates: Sequence[int],
) -> torch.Tensor:
    """Logits of the ``candidates`` token ids at the given (row, col) positions: shape (len(rows), len(candidates)).

    Used by inference and by ``experiments/train_prm.py`` (the loss is taken only at step tags)."""
    hidden = last_hidden_states(model, input_ids, attention_mask)[rows, cols]
    head = model.get_output_embeddings()
    weight = head.weight[list(candidates)]
    logits = hidden.to(weight.dtype) @ weight.T
    bias = getattr(head, "bias", None)
    if bias is not None:
        logits = logits + bias[list(candidates)]
    return logits


class StepTagPRM:
    """Process reward model read from a causal LM at step tags.

    Arguments:
        model: a transformers causal LM (e.g. from ``AutoModelForCausalLM.from_pretrained``, or one trained by
            ``experiments/train_prm.py``).
        tokenizer: its tokenizer.
        step_format: ``"math-shepherd"`` (tag ``ки``), ``"math-psa"`` (OpenR) or a custom ``StepFormat``.
        batch_size / max_batch_tokens: chunking of the forward passes.
        max_length: longer inputs are cut from the left.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        step_format: str | StepFormat = MATH_SHEPHERD,
        *,
        batch_size: int = 16,
        max_batch_tokens: int = 16384,
        max_length: int = 2048,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.step_format = get_format(step_format)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_length = max_length
        self.good_id = token_id(tokenizer, self.step_format.good_token)
        self.bad_id = token_id(tokenizer, self.step_format.bad_token)
        if self.good_id == self.bad_id:
            raise ValueError("good and bad tokens map to the same id")

    def encode(self, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        return encode_steps(self.tokenizer, self.step_format, question, steps, self.max_length)

    def score(self, questions: Sequence[str], step_lists: Sequence[Sequence[str]]) -> list[list[float]]:
        if len(questions) != len(step_lists):
            raise ValueError(f"{len(questions)} questions but {len(step_lists)} step lists")
        encoded = [self.encode(q, steps) for q, steps in zip(questions, step_lists)]

        def reader(input_ids, attention_mask, rows, cols):
            logits = candidate_logits(
                self.model, input_ids, attention_mask, rows, cols, (self.good_id, self.bad_id)
            )
            return logits.float().softmax(dim=-1)[:, 0]

        return score_positions_in_eval_mode(self, encoded, reader)
