"""Outcome judgers and process reward models (never imports ``agents``: language models are handed in)."""

from rewards.answer import extract_answer
from rewards.judge import MathJudger

__all__ = ["MathJudger", "extract_answer"]
