"""The batched engine interface every agent, PRM and judge talks to.

Why one interface: search agents, RL trainers and LLM judges all need the same three things from a language
model (sample steps, score continuations, build step-level prompts), and the backend (in-process transformers,
vLLM, an HTTP server) should be a constructor argument, not a code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "Completion",
    "Engine",
    "FinishReason",
    "GenerationStats",
    "Prompt",
    "StepPrompter",
    "check_generate_args",
]

FinishReason = Literal["stop", "length", "eos"]

# A prompt is either plain text (sent as is) or a list of chat messages ({"role": ..., "content": ...}).
Prompt = str | list[dict[str, str]]


@dataclass
class Completion:
    """One sampled continuation.

    ``text`` excludes the stop string that ended it; ``token_ids`` are the generated ids (stop string excluded
    where the backend can tell); ``logprobs`` holds one log-probability per entry of ``token_ids`` under the
    sampling distribution's model (before temperature); ``finish_reason`` is ``"stop"`` (a stop string matched),
    ``"eos"`` (end-of-sequence token) or ``"length"`` (hit ``max_new_tokens``).
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: FinishReason = "length"
    prompt_tokens: int = 0
    """Prompt tokens this completion's request actually had to process (after any prefix/KV reuse)."""
    stop_reason: str | None = None
    """The stop string that ended the completion (``finish_reason == "stop"``), else None."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Sampled tokens after ``token_ids`` that wrote the stop string (empty unless ``finish_reason == "stop"``).
    ``token_ids + stop_token_ids`` is exactly what the model sampled: a trainer trains on both."""
    stop_logprobs: list[float] = field(default_factory=list)
    """The log-probs of ``stop_token_ids``."""


@dataclass
class GenerationStats:
    """Running counters an engine keeps so agents can report compute per problem."""

    calls: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0

    def snapshot(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
        }

    def record(self, completions: Sequence[Sequence[Completion]]) -> None:
        """Count one ``generate`` call; a prompt's tokens count once however many samples it has."""
        self.calls += 1
        for group in completions:
            if group:
                self.prompt_tokens += group[0].prompt_tokens
            self.generated_tokens += sum(len(c.token_ids) for c in group)


@runtime_checkable
class Engine(Protocol):
    """Batched generation and scoring over one model."""

    stats: GenerationStats
    step_delimiter: str

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
    ) -> list[list[Completion]]:
        """Return, per prompt, ``n`` completions (``temperature == 0`` is greedy)."""
        ...

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[list[float]]:
        """Per-token log-probs of each continuation given its prompt (computed in chunks, never full-vocab for all)."""
        ...

    def step_prompt(self, question: str, steps: Sequence[str], instruction: str = "") -> Prompt:
        """The prompt whose continuation is the next reasoning step (see ``agents.engines.prompting``)."""
        ...


class StepPrompter(Protocol):
    """Builds the model input for 'problem + steps so far -> next step'."""

    def step_prompt(self, question: str, steps: Sequence[str], instruction: str = "") -> Prompt: ...


def check_generate_args(
    prompts: Any,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop: Any,
    min_new_tokens: int = 0,
) -> list[str]:
    """Validate ``generate``'s arguments the same way for every backend; return the non-empty stop strings."""
    if n < 1 or max_new_tokens < min_new_tokens:
        raise ValueError(
            f"need n >= 1 and max_new_tokens >= {min_new_tokens}, got n={n}, max_new_tokens={max_new_tokens}"
        )
    if not 0 <= temperature < float("inf") or not 0 < top_p <= 1:  # NaN fails both comparisons
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if isinstance(prompts, (str, dict)):
        raise TypeError("generate takes a sequence of prompts; wrap a single prompt in a list")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    return [s for s in stops if s]
