"""How a question and its steps are laid out as tokens for a PRM, and where each step's score is read.

Why segment-wise encoding: instead of rendering one string and searching the token ids for a tag (which breaks
when a tokenizer merges the tag with its neighbours, or when a step happens to contain the tag text), each piece
is tokenized on its own and the tag's token ids are appended, so the position that carries each step's score is
known exactly. Training (``experiments/train_prm.py``) and inference use the same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FORMATS",
    "MATH_PSA",
    "MATH_SHEPHERD",
    "VALUE_HEAD",
    "StepFormat",
    "encode_steps",
    "get_format",
    "token_id",
]


@dataclass(frozen=True)
class StepFormat:
    """Text layout of a tagged solution: ``question_template`` then, per step,
    ``step_template + tag_prefix + step_tag + tag_suffix``. The score of step ``j`` is read at the last token of
    its ``tag_prefix + step_tag``. ``good_token`` / ``bad_token`` are the two candidate tokens a step-tag PRM
    compares there (unused by value-head PRMs)."""

    name: str
    step_tag: str
    good_token: str = "+"
    bad_token: str = "-"
    question_template: str = "{question} "
    step_template: str = "{step}"
    tag_prefix: str = " "
    tag_suffix: str = "\n"

    def render(self, question: str, steps: Sequence[str], labels: Sequence[str] | None = None) -> str:
        """The whole text as one string; with ``labels`` each tag is replaced by its label (Math-Shepherd's
        ``label`` field)."""
        parts = [self.question_template.format(question=question)]
        for index, step in enumerate(steps):
            tag = self.step_tag if labels is None else labels[index]
            parts.append(self.step_template.format(step=_clean(step, self), index=index + 1))
            parts.append(self.tag_prefix + tag + self.tag_suffix)
        return "".join(parts)


# Math-Shepherd (Wang et al., 2024): "question Step 1: ... ки\nStep 2: ... ки"; "+" / "-" replace the tag.
MATH_SHEPHERD = StepFormat(name="math-shepherd", step_tag="ки", step_template="Step {index}: {step}")
# OpenR's Math-psa PRM: steps separated by a run of five newlines, scored with " +" / " -".
MATH_PSA = StepFormat(
    name="math-psa",
    step_tag="\n\n\n\n\n",
    good_token=" +",
    bad_token=" -",
    question_template="{question}\n",
    tag_suffix="",
)
# Value-head PRMs / critics: the environment's own layout (steps separated by a blank line), read at the delimiter.
VALUE_HEAD = StepFormat(
    name="value-head", step_tag="\n\n", question_template="{question}\n\n", tag_prefix="", tag_suffix=""
)

FORMATS: dict[str, StepFormat] = {f.name: f for f in (MATH_SHEPHERD, MATH_PSA, VALUE_HEAD)}


def get_format(fmt: str | StepFormat) -> StepFormat:
    """Look a format up by name (``math-shepherd``, ``math-psa``, ``value-head``) or pass one through."""
    if isinstance(fmt, StepFormat):
        return fmt
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown step format {fmt!r}; known: {sorted(FORMATS)}") from None


def _clean(step: str, fmt: StepFormat) -> str:
    """Remove the tag text from inside a step so a step can never forge an extra tag."""
    text = str(step).strip()
    if fmt.step_tag.strip():
        text = text.replace(fmt.step_tag, " ")
    return text


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def encode_steps(
    tokenizer: Any, fmt: StepFormat, question: str, steps: Sequence[str], max_length: int | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of the tagged solution and, per step, the position whose output scores that step.

    When the sequence is longer than ``max_length`` it is cut from the left (the question goes first); a step
    whose tag was cut gets position ``-1`` and the PRMs report it as 0.5 (unknown).
    """
    ids: list[int] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and getattr(tokenizer, "add_bos_token", False):
        ids.append(int(bos))
    tag_ids = _encode(tokenizer, fmt.tag_prefix + fmt.step_tag)
    if not tag_ids:
        raise ValueError(f"step tag {fmt.step_tag!r} encodes to no tokens")
    suffix_ids = _encode(tokenizer, fmt.tag_suffix)
    ids += _encode(tokenizer, fmt.question_template.format(question=question))
    positions: list[int] = []
    for index, step in enumerate(steps):
        ids += _encode(tokenizer, fmt.step_template.format(step=_clean(step, fmt), index=index + 1))
        ids += tag_ids
        positions.append(len(ids) - 1)
        ids += suffix_ids
    if max_length is not None and len(ids) > max_length:
        cut = len(ids) - max_length
        ids = ids[cut:]
        positions = [p - cut if p >= cut else -1 for p in positions]
    return ids, positions


def token_id(tokenizer: Any, text: str) -> int:
    """The id of the last token of ``text`` (how Math-Shepherd / OpenR pick the ``+`` / ``-`` candidates)."""
    ids = _encode(tokenizer, text)
    if not ids:
        raise ValueError(f"{text!r} encodes to no tokens")
    return ids[-1]
