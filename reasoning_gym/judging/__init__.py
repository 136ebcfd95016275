"""Answer extraction and rule-based math judging: the leaf the environments and ``rewards`` both build on.

Why here and not in ``rewards``: an environment must decide per step whether a final answer was given and judge it,
and dependencies point ``rewards -> reasoning_gym``, never back. ``rewards.answer`` / ``rewards.judge`` /
``rewards.MathJudger`` re-export these names. Imports nothing from ``rewards``, ``wrappers`` or ``agents``.
"""

from __future__ import annotations

from reasoning_gym.judging.answer import extract_answer, has_unbalanced_boxed
from reasoning_gym.judging.judge import MathJudger, normalize_reference, rule_verdict

__all__ = ["MathJudger", "extract_answer", "has_unbalanced_boxed", "normalize_reference", "rule_verdict"]
