"""Per-environment prompt adapters: how an agent turns an env's ``info`` into an engine prompt and a completion
back into an action.

Why: agents must run unchanged on math envs (a step is a paragraph ended by a blank line) and on text games such as
ALFWorld (a step is one command, and the game's feedback belongs in the prompt). The env's own attributes
(``step_delimiter``, ``instruction``) decide; nothing here hard-codes math.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agents.engines.base import Completion, Prompt

__all__ = ["StepAdapter", "TextGameAdapter", "adapter_for"]


class StepAdapter:
    """Builds ``engine.step_prompt(question, transcript, instruction)`` and cuts completions into actions.

    The transcript is ``info["transcript"]`` when the env provides one (e.g. actions interleaved with game feedback)
    and ``info["steps"]`` otherwise; either way a child's prompt extends its parent's, which is what lets engines
    re-use the shared prefix (KV / prefix caching).
    """

    def __init__(
        self, instruction: str = "", step_delimiter: str = "\n\n", max_action_chars: int = 4000
    ) -> None:
        if not step_delimiter:
            raise ValueError("step_delimiter must be a non-empty string")
        self.instruction = instruction
        self.step_delimiter = step_delimiter
        self.max_action_chars = max_action_chars

    @classmethod
    def from_env(cls, env: Any) -> StepAdapter:
        """Read ``instruction`` and ``step_delimiter`` from ``env.unwrapped`` (math defaults when absent)."""
        base = getattr(env, "unwrapped", env)
        return cls(
            instruction=str(getattr(base, "instruction", "") or ""),
            step_delimiter=str(getattr(base, "step_delimiter", "\n\n") or "\n\n"),
        )

    @property
    def stop(self) -> list[str]:
        """Stop strings that end one step."""
        return [self.step_delimiter]

    @staticmethod
    def question(info: Mapping[str, Any]) -> str:
        """The problem text (or the task goal) the PRM and the prompt see."""
        return str(info.get("problem", ""))

    @staticmethod
    def steps(info: Mapping[str, Any]) -> list[str]:
        """The agent's actions so far (what a PRM scores)."""
        return [str(s) for s in info.get("steps", [])]

    def transcript(self, info: Mapping[str, Any]) -> list[str]:
        """What the model reads as 'the solution so far'."""
        return [str(s) for s in info.get("transcript", info.get("steps", []))]

    def prompt(self, engine: Any, info: Mapping[str, Any], observation: str | None = None) -> Prompt:
        """``engine.step_prompt``; rendered here with the env's delimiter when the engine's default differs.

        ``observation`` is unused here (math prompts are rebuilt from ``info``); text games need it."""
        question, transcript = self.question(info), self.transcript(info)
        if getattr(engine, "step_delimiter", self.step_delimiter) == self.step_delimiter:
            return engine.step_prompt(question, transcript, self.instruction)
        from agents.engines.prompting import step_prompt

        return step_prompt(
            engine.tokenizer, question, transcript, self.instruction, delimiter=self.step_delimiter
        )

    def to_action(self, completion: Completion | str) -> str:
        """The env action for one completion: text before the delimiter, stripped (never raises)."""
        text = completion if isinstance(completion, str) else completion.text
        text = text.split(self.step_delimiter, 1)[0] if self.step_delimiter in text else text
        return text.strip()[: self.max_action_chars]


class TextGameAdapter(StepAdapter):
    """Text games (ALFWorld): the model reads the whole observation (instruction, room, every ``> command`` with the
    game's answer) as the user turn and answers with one command line.

    The observation only grows by appended blocks, so a child's prompt still shares its parent's long prefix
    (what vLLM's prefix caching re-uses).
    """

    def __init__(
        self, instruction: str = "", step_delimiter: str = "\n", max_action_chars: int = 1000
    ) -> None:
        super().__init__(instruction, step_delimiter, max_action_chars)

    @classmethod
    def from_env(cls, env: Any) -> TextGameAdapter:
        base = getattr(env, "unwrapped", env)
        return cls(instruction=str(getattr(base, "instruction", "") or ""))

    def prompt(self, engine: Any, info: Mapping[str, Any], observation: str | None = None) -> Prompt:
        if observation is None:  # degraded: goal and commands only, without the game's answers
            observation = "\n".join(
                [self.instruction, str(info.get("problem", ""))] + [f"> {s}" for s in self.steps(info)]
            )
        tokenizer = getattr(engine, "tokenizer", None)
        if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
            return observation + "\n> "  # base model: continue the transcript
        return [{"role": "user", "content": observation}]

    def to_action(self, completion: Completion | str) -> str:
        text = completion if isinstance(completion, str) else completion.text
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return lines[0][: self.max_action_chars] if lines else ""


def adapter_for(env: Any, overrides: Sequence[tuple[str, Any]] = ()) -> StepAdapter:
    """The adapter for ``env``: ``StepAdapter`` for envs that declare a ``step_delimiter`` (math), otherwise
    ``TextGameAdapter``; ``overrides`` are (attribute, value) pairs set on it (e.g. a custom instruction)."""
    base = getattr(env, "unwrapped", env)
    adapter = StepAdapter.from_env(env) if hasattr(base, "step_delimiter") else TextGameAdapter.from_env(env)
    for name, value in overrides:
        setattr(adapter, name, value)
    return adapter
