"""The rule-based math judger; re-exported from ``reasoning_gym.judging.judge`` (where it lives, so environments
need not import ``rewards``)."""

from __future__ import annotations

from reasoning_gym.judging.judge import MathJudger, normalize_reference, rule_verdict

__all__ = ["MathJudger", "normalize_reference", "rule_verdict"]
