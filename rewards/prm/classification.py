"""Classification-head PRMs (Qwen2.5-Math-PRM style): a token classifier read at a step-separator token.

The solution is rendered as the assistant turn with a separator token (Qwen uses ``<extra_0>``) after every step;
the model outputs class logits per token and the step's score is the probability of the positive class at its
separator. The separator must be a single token of the tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rewards.prm._batching import score_positions_in_eval_mode

__all__ = ["ClassificationPRM", "QWEN_PRM_SYSTEM_PROMPT"]

QWEN_PRM_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


class ClassificationPRM:
    """Process reward model from per-token class logits at a separator token.

    Arguments:
        model: returns logits of shape (batch, length, num_classes) (``AutoModelForTokenClassification``, or
            Qwen2.5-Math-PRM's ``AutoModel`` with ``trust_remote_code``); with one class the sigmoid is used.
        tokenizer: its tokenizer; ``separator`` must encode to exactly one token.
        use_chat_template: render system / user (question) / assistant (steps) with the tokenizer's chat template
            when it has one; otherwise ``question + "\\n" + steps``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        separator: str = "<extra_0>",
        positive_class: int = 1,
        system_prompt: str | None = QWEN_PRM_SYSTEM_PROMPT,
        use_chat_template: bool = True,
        batch_size: int = 16,
        max_batch_tokens: int = 16384,
        max_length: int = 4096,
    ) -> None:
        ids = tokenizer(separator, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"separator {separator!r} must be one token, got ids {ids}")
        self.model = model
        self.tokenizer = tokenizer
        self.separator = separator
        self.separator_id = int(ids[0])
        self.positive_class = positive_class
        self.system_prompt = system_prompt
        self.use_chat_template = use_chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_length = max_length

    def render(self, question: str, steps: Sequence[str]) -> str:
        body = "".join(str(s).replace(self.separator, " ").strip() + self.separator for s in steps)
        if not self.use_chat_template:
            return f"{question}\n{body}"
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": body}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def encode(self, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        clean_question = question.replace(self.separator, " ")
        ids = list(self.tokenizer(self.render(clean_question, steps), add_special_tokens=False)["input_ids"])
        positions = [i for i, t in enumerate(ids) if t == self.separator_id][: len(steps)]
        if len(ids) > self.max_length:
            cut = len(ids) - self.max_length
            ids = ids[cut:]
            positions = [p - cut if p >= cut else -1 for p in positions]
        return ids, positions + [-1] * (len(steps) - len(positions))

    def score(self, questions: Sequence[str], step_lists: Sequence[Sequence[str]]) -> list[list[float]]:
        if len(questions) != len(step_lists):
            raise ValueError(f"{len(questions)} questions but {len(step_lists)} step lists")
        encoded = [self.encode(q, steps) for q, steps in zip(questions, step_lists)]

        def reader(input_ids, attention_mask, rows, cols):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            logits = (out.logits if hasattr(out, "logits") else out[0])[rows, cols].float()
            if logits.shape[-1] == 1:
                return torch.sigmoid(logits[:, 0])
            return logits.softmax(dim=-1)[:, self.positive_class]

        return score_positions_in_eval_mode(self, encoded, reader)
