"""Prompt rendering shared by every backend, so the same prompt gives the same token ids everywhere.

Why here and not in each engine: agents hand engines either plain text or chat messages, and a step-level agent
needs "problem + steps so far" rendered so that the model continues the *open* assistant turn with the next
step. Doing this once keeps HF, vLLM and the HTTP backends token-for-token identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import Prompt

__all__ = [
    "DEFAULT_STEP_DELIMITER",
    "TokenizerPrompts",
    "encode_prompt",
    "has_chat_template",
    "plain_step_prompt",
    "render_prompt",
    "step_messages",
    "step_prompt",
]

DEFAULT_STEP_DELIMITER = "\n\n"
# Stands in for the open assistant turn while the chat template renders, so templates that trim message content
# cannot eat the trailing step delimiter.
_SENTINEL = "\u2063OPENRGYM_OPEN_TURN\u2063"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _check_messages(messages: Sequence[dict[str, str]]) -> None:
    if not messages:
        raise ValueError("a chat prompt needs at least one message")
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"chat messages need 'role' and 'content' keys, got {message!r}")


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """Text the model reads: plain strings pass through; chat messages go through the chat template.

    A conversation ending in an assistant message is continued (the turn is left open, its content kept byte
    for byte); otherwise the generation prompt for a new assistant turn is appended.
    """
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt)
    _check_messages(messages)
    if not has_chat_template(tokenizer):
        raise ValueError(
            "chat messages need a tokenizer with a chat template; pass plain text for base models"
        )
    if messages[-1]["role"] != "assistant":
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    open_content = messages[-1]["content"]
    messages[-1] = {**messages[-1], "content": _SENTINEL}
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    cut = rendered.rfind(_SENTINEL)
    if cut < 0:
        raise ValueError("the chat template dropped the final assistant message; cannot continue it")
    return rendered[:cut] + open_content


# Appended while encoding a prompt that ends in whitespace, then removed again (see ``encode_prompt``).
_CONTINUATION_PROBE = "A"


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt, tokenised the way the text reads inside a longer one.

    Adds the BOS token only when the text does not already start with it. A step prompt ends with the step
    delimiter, and byte-level BPE tokenisers encode a trailing ``"\n\n"`` as one token that never occurs before
    a word (``"17\n\nThe"`` is ``'\n', '\n', 'The'``). A model trained on whole solutions then reads an
    unfamiliar token at exactly the point where it must write the next step (a warm-started policy wrote
    another equation instead of its answer). So trailing whitespace is encoded as it would be mid-text: encode
    ``text + probe`` and drop the probe's tokens, provided what is left decodes to the same text.
    """
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    ids = list(tokenizer(text, add_special_tokens=add_special)["input_ids"])
    if not text or not text[-1].isspace():
        return ids
    probed = list(tokenizer(text + _CONTINUATION_PROBE, add_special_tokens=add_special)["input_ids"])
    target = tokenizer.decode(ids, skip_special_tokens=False)
    for keep in range(len(probed) - 1, max(len(probed) - 4, 0), -1):
        if tokenizer.decode(probed[:keep], skip_special_tokens=False) == target:
            return probed[:keep]
    return ids


def step_messages(
    question: str, steps: Sequence[str], instruction: str = "", delimiter: str = DEFAULT_STEP_DELIMITER
) -> list[dict[str, str]]:
    """Chat messages for 'next step': the user turn holds instruction + problem, the assistant turn the steps."""
    user = delimiter.join(part for part in (instruction.strip(), question.strip()) if part)
    messages = [{"role": "user", "content": user}]
    if steps:
        messages.append({"role": "assistant", "content": delimiter.join(steps) + delimiter})
    return messages


def plain_step_prompt(
    question: str, steps: Sequence[str], instruction: str = "", delimiter: str = DEFAULT_STEP_DELIMITER
) -> str:
    """Base-model prompt: the env observation format (``reasoning_gym``) followed by the delimiter."""
    head = (
        f"{instruction}{delimiter}Problem: {question}{delimiter}Solution:"
        if instruction
        else (f"Problem: {question}{delimiter}Solution:")
    )
    return head + "".join(delimiter + step for step in steps) + delimiter


def step_prompt(
    tokenizer: Any,
    question: str,
    steps: Sequence[str],
    instruction: str = "",
    delimiter: str = DEFAULT_STEP_DELIMITER,
) -> str:
    """The rendered prompt whose continuation is the next step (chat template when the tokenizer has one)."""
    if has_chat_template(tokenizer):
        return render_prompt(tokenizer, step_messages(question, steps, instruction, delimiter))
    return plain_step_prompt(question, steps, instruction, delimiter)


class TokenizerPrompts:
    """Prompt methods of an engine that holds a local tokenizer (``self._tokenizer``, ``self.step_delimiter``).

    HF and vLLM both render and encode prompts here, so the two backends see the same token ids.
    """

    _tokenizer: Any
    step_delimiter: str

    def render(self, prompt: Prompt) -> str:
        """The text the model reads for ``prompt`` (chat messages go through the chat template)."""
        return render_prompt(self._tokenizer, prompt)

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of ``prompt`` (see ``encode_prompt`` for the trailing-delimiter rule)."""
        return encode_prompt(self._tokenizer, self.render(prompt))

    def step_prompt(self, question: str, steps: Sequence[str], instruction: str = "") -> str:
        """The rendered prompt whose continuation is the next reasoning step."""
        return step_prompt(self._tokenizer, question, steps, instruction, self.step_delimiter)
