"""Final-answer extraction; re-exported from ``reasoning_gym.judging.answer`` (where it lives, so environments need
not import ``rewards``)."""

from __future__ import annotations

from reasoning_gym.judging.answer import (
    extract_answer,
    extract_boxed,
    extract_final_answer_line,
    has_unbalanced_boxed,
    last_number,
    normalize_number,
)

__all__ = [
    "extract_answer",
    "extract_boxed",
    "extract_final_answer_line",
    "has_unbalanced_boxed",
    "last_number",
    "normalize_number",
]
