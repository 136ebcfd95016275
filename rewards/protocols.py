"""Small structural types the reward code needs from a language model, without importing ``agents``.

Why: an LLM judge or a generative PRM needs an engine, but ``rewards`` sits below ``agents`` in the dependency
order (experiments -> agents -> wrappers -> rewards). Any ``agents.engines`` engine satisfies these Protocols
structurally, and so does any user object with the same methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["CompletionLike", "LanguageModel", "OutcomeJudger", "Prompt", "StepLanguageModel"]

# Plain text, or chat messages [{"role": ..., "content": ...}] (same as agents.engines.base.Prompt).
Prompt = str | list[dict[str, str]]


class CompletionLike(Protocol):
    """What reward code reads from one generated completion (``agents.engines.Completion`` fits)."""

    text: str


@runtime_checkable
class LanguageModel(Protocol):
    """The batched engine interface (``generate`` / ``score`` / ``tokenizer``) as reward code uses it."""

    @property
    def tokenizer(self) -> Any: ...

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        n: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[list[CompletionLike]]: ...

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[list[float]]: ...


@runtime_checkable
class StepLanguageModel(LanguageModel, Protocol):
    """A ``LanguageModel`` that also renders step prompts, as every ``agents.engines`` engine does (its completions
    carry ``token_ids``, ``logprobs`` and ``finish_reason``); ``wrappers.CandidateChoice`` proposes steps with it."""

    def step_prompt(self, question: str, steps: Sequence[str], instruction: str = "") -> Prompt: ...


@runtime_checkable
class OutcomeJudger(Protocol):
    """Anything with ``judge(prediction_text, reference_answer) -> bool`` (``rewards.MathJudger``, ``LLMJudge``)."""

    def judge(self, prediction_text: str, reference_answer: str) -> bool: ...
