"""A scalar value head on a causal LM, and the PRM that reads it at step ends.

Why here (under ``rewards``): the same module serves as a value-head PRM, as PPO's critic and as OREO's value
model, and it must be importable without ``agents``. ``CausalLMWithValueHead.forward`` can also return the LM
logits so a policy and its critic can share one backbone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rewards.prm._batching import score_positions_in_eval_mode
from rewards.prm.formats import VALUE_HEAD, StepFormat, encode_steps, get_format
from rewards.prm.step_tag import last_hidden_states

__all__ = ["CausalLMWithValueHead", "ValueHeadOutput", "ValueHeadPRM"]

_HEAD_FILE = "value_head.pt"
_HEAD_CONFIG = "value_head.json"


@dataclass
class ValueHeadOutput:
    values: torch.Tensor
    """(batch, length) scalar value at every position."""
    logits: torch.Tensor | None = None
    """(batch, length, vocab) LM logits, only when asked for."""


class CausalLMWithValueHead(nn.Module):
    """``backbone`` (a transformers causal LM) plus ``v_head``: Linear(hidden_size -> 1) on its last hidden state."""

    def __init__(self, backbone: Any, *, init_std: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.v_head = nn.Linear(hidden, 1)
        if init_std > 0:
            nn.init.normal_(self.v_head.weight, std=init_std)
        else:
            nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)
        param = next(backbone.parameters())
        self.v_head.to(device=param.device, dtype=torch.float32)

    @property
    def config(self) -> Any:
        return self.backbone.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        return_logits: bool = False,
    ) -> ValueHeadOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if return_logits:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            hidden, logits = out.hidden_states[-1], out.logits
        else:
            hidden, logits = last_hidden_states(self.backbone, input_ids, attention_mask), None
        values = self.v_head(self.dropout(hidden).float()).squeeze(-1)
        return ValueHeadOutput(values=values, logits=logits)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Backbone in transformers format plus ``value_head.pt``; ``from_pretrained`` restores both."""
        os.makedirs(path, exist_ok=True)
        self.backbone.save_pretrained(path)
        torch.save(self.v_head.state_dict(), os.path.join(path, _HEAD_FILE))
        with open(os.path.join(path, _HEAD_CONFIG), "w") as f:
            json.dump({"hidden_size": self.backbone.config.hidden_size}, f)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], **backbone_kwargs: Any) -> CausalLMWithValueHead:
        from transformers import AutoModelForCausalLM

        model = cls(AutoModelForCausalLM.from_pretrained(path, **backbone_kwargs))
        head_path = os.path.join(path, _HEAD_FILE)
        if os.path.exists(head_path):
            model.v_head.load_state_dict(torch.load(head_path, map_location="cpu", weights_only=True))
        return model


class ValueHeadPRM:
    """Process reward model from a value head read at the end of each step (squashed to [0, 1] by a sigmoid)."""

    def __init__(
        self,
        model: CausalLMWithValueHead,
        tokenizer: Any,
        step_format: str | StepFormat = VALUE_HEAD,
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

    def encode(self, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        return encode_steps(self.tokenizer, self.step_format, question, steps, self.max_length)

    def score(self, questions: Sequence[str], step_lists: Sequence[Sequence[str]]) -> list[list[float]]:
        if len(questions) != len(step_lists):
            raise ValueError(f"{len(questions)} questions but {len(step_lists)} step lists")
        encoded = [self.encode(q, steps) for q, steps in zip(questions, step_lists)]

        def reader(input_ids, attention_mask, rows, cols):
            return torch.sigmoid(self.model(input_ids, attention_mask).values[rows, cols])

        return score_positions_in_eval_mode(self, encoded, reader)
