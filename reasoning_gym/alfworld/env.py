"""``openr/ALFWorld-v0``: ALFWorld household tasks as a step-level text environment (ReAct style), fully offline."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym

from reasoning_gym.alfworld.commands import THINK_PREFIX, command_variants, parse_step
from reasoning_gym.alfworld.engine import (
    GameLoadError,
    base_env,
    last_operator_id,
    make_textworld_env,
    planner_plan,
    replay_operators,
)
from reasoning_gym.alfworld.games import GamePool, GameRef
from reasoning_gym.alfworld.status import ADMISSIBLE_MARK, STATUS_MARK, game_status, task_text
from reasoning_gym.base import STEP_CHARSET, sanitize_step
from reasoning_gym.spaces import StepText

__all__ = ["ALFWorldEnv", "DEFAULT_INSTRUCTION"]

DEFAULT_INSTRUCTION = (
    "Interact with a household to solve a task. Each step is one command, such as: go to countertop 1, "
    "take apple 1 from countertop 1, move apple 1 to fridge 1, open fridge 1, close fridge 1, "
    "heat apple 1 with microwave 1, cool apple 1 with fridge 1, clean apple 1 with sinkbasin 1, use desklamp 1, "
    f"examine apple 1, inventory, look. A step may instead be a thought starting with '{THINK_PREFIX}'."
)
_BANNER = "-= Welcome to TextWorld, ALFRED! =-"
_ECHO_CHARS = 200  # how much of an invalid step is echoed back into the observation


def _one_line(text: str, limit: int = _ECHO_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ALFWorldEnv(gym.Env[str, str]):
    """ALFWorld (TextWorld engine) with one game command or one thought per step.

    ## Description
    Each episode is one household task ("heat some potato and put it in sinkbasin") in a text-described room. The
    agent moves between receptacles, opens them, takes, moves, heats, cools, cleans and examines objects, and uses
    lamps. Games come from ``$ALFWORLD_DATA/json_2.1.1`` when present, otherwise from an offline generator that covers
    the six ALFWorld task types and checks every game with the fast-downward planner (see ``generate.py``).

    ## Action Space
    ``StepText``: one game command (``go to countertop 1``; case, surrounding whitespace, a ``>``/``Action:`` prefix
    and a final period are ignored, ALFWorld 0.3's ``put X in Y`` means ``move X to Y``) or a thought
    ``think: ...`` that leaves the world unchanged. Any text is accepted: empty, unknown, inadmissible or oversized
    steps leave the world unchanged, answer "Nothing happens." plus the reason, and set ``info["invalid"]``.

    ## Observation Space
    ``StepText``: the instruction, the room description with the task, then ``> step`` and the game's answer for
    every step so far (oldest steps are elided if it would exceed ``max_observation_chars``). With
    ``show_admissible_commands=True`` the commands possible now are listed at the end; with ``show_status=True`` a
    status line comes before them (the task, what the player holds, the receptacles not visited yet; ``status.py``).

    ## Rewards
    ``1.0`` on the step that completes the task, else ``0.0``; ``invalid_step_penalty`` (default 0) is added to
    invalid steps.

    ## Episode End
    Terminates when the task is done; truncation comes from ``max_episode_steps`` (50 for ``openr/ALFWorld-v0``).

    ## Information
    ``problem_id``, ``problem`` (the goal text), ``task_type``, ``instruction``, ``admissible_commands``, ``won``,
    ``steps`` (the steps as recorded), ``step_index``, ``feedback`` (the game's last answer), ``invalid``,
    ``invalid_reason``.

    ## Arguments
    ``split`` (train / valid_seen / valid_unseen), ``num_games`` (size of the generated pool), ``game_files``
    (explicit games), ``task_types``, ``source`` (auto / files / alfworld / generated), ``data_dir`` (instead of
    ``$ALFWORLD_DATA``), ``cache_dir`` (generated games and translations), ``instruction``,
    ``show_admissible_commands``, ``show_status``, ``max_action_chars``, ``max_observation_chars``, ``invalid_step_penalty``,
    ``render_mode`` ("ansi").

    Planners branch with ``get_state()`` / ``set_state(state)`` (a small dict; restoring replays the game commands
    from the cached start, a few ms per command) and ask ``expert_plan()`` for the fast-downward plan from the
    current state.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        split: str = "train",
        num_games: int = 300,
        game_files: Iterable[str | os.PathLike] | None = None,
        task_types: Sequence[str] | None = None,
        source: str = "auto",
        data_dir: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        instruction: str = DEFAULT_INSTRUCTION,
        show_admissible_commands: bool = False,
        show_status: bool = False,
        max_action_chars: int = 1000,
        max_observation_chars: int = 24_000,
        invalid_step_penalty: float = 0.0,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        if max_observation_chars < 2 * len(instruction) + 2000:
            raise ValueError(
                "max_observation_chars is too small to hold the instruction and the room description"
            )
        self.pool = GamePool(
            split=split,
            num_games=num_games,
            game_files=game_files,
            task_types=task_types,
            source=source,
            data_dir=data_dir,
            cache_dir=cache_dir,
        )
        self.instruction = instruction
        self.show_admissible_commands = show_admissible_commands
        self.show_status = show_status
        self.max_action_chars = max_action_chars
        self.max_observation_chars = max_observation_chars
        self.invalid_step_penalty = float(invalid_step_penalty)
        self.render_mode = render_mode
        self.observation_space = StepText(max_observation_chars, charset=STEP_CHARSET)
        self.action_space = StepText(max_action_chars, charset=STEP_CHARSET)
        self._tw: Any = None
        self._loaded_file: Path | None = None
        self._ref: GameRef | None = None
        self._reset_episode_fields()

    # ----------------------------------------------------------------------------------------------- game plumbing
    def _reset_episode_fields(self) -> None:
        self._intro = ""
        self._goal = ""
        self._task_type = ""
        self._transcript: list[tuple[str, str]] = []
        self._steps: list[str] = []
        self._commands: list[str] = []
        self._operators: list[int] = []
        self._admissible: list[str] = []
        self._won = False
        self._feedback = ""
        self._raw_feedback = ""

    def _textworld(self) -> Any:
        if self._tw is None:
            self._tw = make_textworld_env(fast=True, translation_dir=self.pool.cache_dir / "sas")
        return self._tw

    def _start_game(self, ref: GameRef) -> None:
        """Load (if needed) and reset the game; sets the episode fields from the intro."""
        game_file = self.pool.game_file(ref)
        tw = self._textworld()
        if game_file != self._loaded_file:
            self._loaded_file = None
            tw.load(str(game_file))
            self._loaded_file = game_file
        state = tw.reset()
        self._ref = ref
        self._reset_episode_fields()
        self._raw_feedback = state.feedback
        intro = state.feedback.replace(_BANNER, "").strip()
        self._intro = self._in_charset(intro)
        goal = task_text(intro) or intro.splitlines()[-1]
        self._goal = self._in_charset(goal)
        self._task_type = self._read_task_type(game_file)
        self._admissible = list(state["admissible_commands"])
        self._won = bool(state["won"])
        self._feedback = self._intro

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def _read_task_type(game_file: Path) -> str:
        try:
            return str(json.loads((game_file.parent / "traj_data.json").read_text())["task_type"])
        except (OSError, ValueError, KeyError):
            return ""

    @staticmethod
    def _in_charset(text: str) -> str:
        return sanitize_step(text, max(len(text), 1))[0] if text else text

    def _play(self, command: str) -> str:
        state, _, _ = self._tw.step(command)
        self._commands.append(command)
        op_id = last_operator_id(self._tw)
        if op_id is not None:
            self._operators.append(op_id)
        self._raw_feedback = state.feedback
        self._admissible = list(state["admissible_commands"])
        self._won = bool(state["won"])
        return self._in_charset(state.feedback.strip())

    # ------------------------------------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        options = options or {}
        if options.get("problem_id") is not None:
            ref = self.pool.get(str(options["problem_id"]))
        else:
            ref = self.pool.refs[int(self.np_random.integers(len(self.pool)))]
        self._start_game(ref)
        return self._observation(), self._info(invalid_reason="")

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self._ref is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if self._won:  # stepping a finished episode is a caller bug, but never a crash
            info = self._info(invalid_reason="the episode is over (task done); call reset()")
            return self._observation(), 0.0, True, False, info
        text, problems = sanitize_step(action, self.max_action_chars)
        parsed = parse_step(text)
        invalid_reason = ""
        if any("longer than" in p for p in problems):
            invalid_reason = f"step longer than {self.max_action_chars} characters"
            shown = _one_line(text)
            feedback = f"Nothing happens. The step is too long; write one short command (at most {self.max_action_chars} characters)."
        elif parsed.kind == "empty":
            invalid_reason = "empty step"
            shown = ""
            feedback = f"Nothing happens. The step is empty; write one command (for example: look) or a thought starting with '{THINK_PREFIX}'."
        elif parsed.kind == "think":
            shown = _one_line(f"{THINK_PREFIX} {parsed.thought}", self.max_action_chars)
            feedback = "OK."
        else:
            command = next((c for c in command_variants(parsed.command) if c in self._admissible), None)
            if command is not None:
                shown = command
                feedback = self._play(command)
            else:
                shown = _one_line(text)
                invalid_reason = "not an admissible command"
                feedback = (
                    f'Nothing happens. "{_one_line(parsed.command, 80)}" is not a command you can do now '
                    "(try: look, inventory, or help for the list of command forms)."
                )
        self._steps.append(shown)
        self._transcript.append((shown, feedback))
        self._feedback = feedback
        reward = (1.0 if self._won else 0.0) + (self.invalid_step_penalty if invalid_reason else 0.0)
        return self._observation(), reward, self._won, False, self._info(invalid_reason=invalid_reason)

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self._observation()
        return None

    def close(self) -> None:
        """Free the game's planner memory. The fast-downward library copy itself stays mapped: ``dlclose`` of a C++
        library whose static state other copies share crashes the process later, so it is never unloaded."""
        tw, self._tw, self._loaded_file, self._ref = self._tw, None, None, None
        base = base_env(tw) if tw is not None else None
        lib = getattr(base, "downward_lib", None)
        if lib is not None:
            base.downward_lib = None
            lib.cleanup()

    # ------------------------------------------------------------------------------------------- text for the model
    def _observation(self) -> str:
        head = f"{self.instruction}\n\n{self._intro}"
        blocks = [f"> {shown}\n{feedback}" for shown, feedback in self._transcript]
        tail = ""
        if self.show_status:
            tail += STATUS_MARK + game_status(self._intro, self._transcript)
        if self.show_admissible_commands and not self._won:
            tail += ADMISSIBLE_MARK + ", ".join(self._admissible)
        budget = self.max_observation_chars - len(head) - len(tail)
        kept, used = [], 0
        for block in reversed(blocks):
            if used + len(block) + 2 > budget - 60:
                break
            kept.append(block)
            used += len(block) + 2
        kept.reverse()
        omitted = len(blocks) - len(kept)
        body = "".join("\n\n" + block for block in kept)
        if omitted:
            body = f"\n\n[... {omitted} earlier steps omitted ...]" + body
        return (head + body + tail)[: self.max_observation_chars]

    def _info(self, invalid_reason: str) -> dict[str, Any]:
        assert self._ref is not None
        return {
            "problem_id": self._ref.problem_id,
            "problem": self._goal,
            "task_type": self._task_type,
            "instruction": self.instruction,
            "admissible_commands": list(self._admissible),
            "won": self._won,
            "is_success": self._won,  # SB3's key (``won`` is its alias); final at the episode's end
            "steps": list(self._steps),
            "step_index": len(self._steps),
            "feedback": self._feedback,
            "invalid": bool(invalid_reason),
            "invalid_reason": invalid_reason,
        }

    # ------------------------------------------------------------------------------------ planners and experts
    @property
    def problem_id(self) -> str | None:
        return self._ref.problem_id if self._ref else None

    @property
    def game_file(self) -> Path | None:
        """The ``game.tw-pddl`` being played (its folder also holds ``traj_data.json``)."""
        return self._loaded_file

    @property
    def textworld_env(self) -> Any:
        """The underlying TextWorld env (ALFWorld demangler over the cached ``PddlEnv``), for experts and tests."""
        return self._tw

    @property
    def raw_feedback(self) -> str:
        """The game's last answer exactly as TextWorld gave it (the intro banner included after reset)."""
        return self._raw_feedback

    def expert_plan(self) -> list[str]:
        """The fast-downward plan (game commands) from the current state; ``[]`` once the task is done."""
        if self._ref is None:
            raise gym.error.ResetNeeded("call reset() before expert_plan()")
        if self._won:
            return []
        try:
            return planner_plan(self._tw)
        except GameLoadError:
            return []

    def expert_action(self) -> str:
        """The next command of :meth:`expert_plan` (``look`` if the planner has none)."""
        plan = self.expert_plan()
        return plan[0] if plan else "look"

    def get_state(self) -> dict[str, Any]:
        """A small picklable snapshot: the game id, the game commands (and their planner operators), the transcript."""
        if self._ref is None:
            raise gym.error.ResetNeeded("call reset() before get_state()")
        return {
            "problem_id": self._ref.problem_id,
            "commands": list(self._commands),
            "operators": list(self._operators),
            "transcript": [list(pair) for pair in self._transcript],
            "steps": list(self._steps),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`get_state` snapshot: restart the game from its cached start, then re-apply its operators
        (or replay its commands when the snapshot has none); only the final state's text is generated."""
        ref = self.pool.get(str(state["problem_id"]))
        self._start_game(ref)
        commands = [str(c) for c in state["commands"]]
        operators = [int(o) for o in state.get("operators", [])]
        if commands and len(operators) == len(commands):
            feedback = state["transcript"][-1][1] if state["transcript"] else self._raw_feedback
            game_state = replay_operators(self._tw, operators, feedback)
            self._commands, self._operators = commands, operators
            self._admissible = list(game_state["admissible_commands"])
            self._won = bool(game_state["won"])
            self._raw_feedback = feedback
        else:
            for command in commands:
                if command not in self._admissible:
                    raise ValueError(
                        f"state does not match game {ref.problem_id!r}: {command!r} is not admissible"
                    )
                self._play(command)
        self._transcript = [(str(a), str(b)) for a, b in state["transcript"]]
        self._steps = [str(s) for s in state["steps"]]
        if self._transcript:
            self._feedback = self._transcript[-1][1]
