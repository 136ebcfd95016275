"""Training callbacks in the Stable-Baselines3 style: ``on_step`` returns False to stop training.

The trainable agents call ``on_training_start`` once, ``on_rollout_end`` after each batch of episodes is collected,
``on_step`` after each policy update and ``on_training_end`` once. As in SB3, ``num_timesteps`` counts env steps;
``agent.num_updates`` counts policy updates (SB3 calls ``on_step`` after every vector-env step; here the unit a
callback can stop at is one update, so ``n_calls`` counts updates). A plain function ``fn(locals, globals) -> bool``
is accepted wherever a callback is, as in SB3.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BaseCallback",
    "CallbackList",
    "CheckpointCallback",
    "EvalCallback",
    "FunctionCallback",
    "StopTrainingOnRewardThreshold",
    "make_callback",
]


class BaseCallback:
    """Base class: override the ``_on_*`` hooks; ``self.agent`` and ``self.logger`` are set at training start."""

    def __init__(self, verbose: int = 0) -> None:
        self.verbose = verbose
        self.agent: Any = None
        self.logger: Any = None
        self.n_calls = 0
        self.num_timesteps = 0
        self.locals: dict[str, Any] = {}
        self.globals: dict[str, Any] = {}

    def init_callback(self, agent: Any) -> None:
        self.agent = agent
        self.logger = getattr(agent, "logger", None)
        self._init_callback()

    def on_training_start(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        self.locals, self.globals = locals_, globals_
        self.num_timesteps = getattr(self.agent, "num_timesteps", 0)
        self._on_training_start()

    def on_rollout_end(self) -> None:
        self._on_rollout_end()

    def on_step(self) -> bool:
        """Called after every policy update; False stops training."""
        self.n_calls += 1
        self.num_timesteps = getattr(self.agent, "num_timesteps", self.num_timesteps + 1)
        return bool(self._on_step())

    def on_training_end(self) -> None:
        self._on_training_end()

    def update_locals(self, locals_: dict[str, Any]) -> None:
        self.locals.update(locals_)

    def _init_callback(self) -> None: ...

    def _on_training_start(self) -> None: ...

    def _on_rollout_end(self) -> None: ...

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None: ...


class CallbackList(BaseCallback):
    """Runs several callbacks in order; training stops if any of them returns False."""

    def __init__(self, callbacks: Sequence[BaseCallback]) -> None:
        super().__init__()
        self.callbacks = list(callbacks)

    def _init_callback(self) -> None:
        for callback in self.callbacks:
            callback.init_callback(self.agent)

    def _on_training_start(self) -> None:
        for callback in self.callbacks:
            callback.on_training_start(self.locals, self.globals)

    def _on_rollout_end(self) -> None:
        for callback in self.callbacks:
            callback.on_rollout_end()

    def _on_step(self) -> bool:
        keep_going = True
        for callback in self.callbacks:
            keep_going = callback.on_step() and keep_going
        return keep_going

    def _on_training_end(self) -> None:
        for callback in self.callbacks:
            callback.on_training_end()

    def update_locals(self, locals_: dict[str, Any]) -> None:
        super().update_locals(locals_)
        for callback in self.callbacks:
            callback.update_locals(locals_)


class FunctionCallback(BaseCallback):
    """Wraps ``fn(locals, globals) -> bool`` (None counts as True, as in SB3's ``ConvertCallback``)."""

    def __init__(self, fn: Callable[[dict[str, Any], dict[str, Any]], bool | None]) -> None:
        super().__init__()
        self.fn = fn

    def _on_step(self) -> bool:
        result = self.fn(self.locals, self.globals)
        return True if result is None else bool(result)


class CheckpointCallback(BaseCallback):
    """Every ``save_freq`` updates, write a resumable checkpoint to ``save_path/checkpoint_<updates>``.

    Each checkpoint is written aside and renamed into place (``agents.rl.checkpoint.atomic_folder``), so
    ``agents.rl.checkpoint.latest_checkpoint(save_path)`` always finds a complete one; leftovers of killed writers
    are cleared at training start. ``keep_last`` (None: all) deletes older checkpoints once a newer one is in place.
    """

    def __init__(
        self, save_freq: int, save_path: str | Path, verbose: int = 0, keep_last: int | None = None
    ) -> None:
        super().__init__(verbose)
        if save_freq < 1:
            raise ValueError("save_freq must be >= 1")
        if keep_last is not None and keep_last < 1:
            raise ValueError("keep_last must be None or >= 1")
        self.save_freq = save_freq
        self.save_path = Path(save_path)
        self.keep_last = keep_last

    def _on_training_start(self) -> None:
        from agents.rl.checkpoint import clean_stale_folders

        clean_stale_folders(self.save_path)

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            path = self.agent.save_checkpoint(self.save_path / f"checkpoint_{self.agent.num_updates}")
            if self.verbose:
                print(f"saved checkpoint {path}")
            if self.keep_last is not None:
                self._drop_old()
        return True

    def _drop_old(self) -> None:
        from agents.rl.checkpoint import remove_folder

        numbered = sorted(
            (int(p.name.removeprefix("checkpoint_")), p)
            for p in self.save_path.glob("checkpoint_*")
            if p.name.removeprefix("checkpoint_").isdigit()
        )
        for _, old in numbered[: -self.keep_last]:
            remove_folder(old)


class StopTrainingOnRewardThreshold(BaseCallback):
    """Stop once the last rollout's mean episode reward reaches ``reward_threshold``."""

    def __init__(self, reward_threshold: float, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.reward_threshold = reward_threshold

    def _on_step(self) -> bool:
        reward = getattr(self.agent, "last_rollout_stats", {}).get("rollout/ep_rew_mean")
        return reward is None or reward < self.reward_threshold


class EvalCallback(BaseCallback):
    """Every ``eval_freq`` updates, run ``agent.evaluate(problems)`` and log its metrics under ``eval/``;
    ``history`` holds ``(policy updates so far, metrics)`` per evaluation."""

    def __init__(
        self,
        problems: Sequence[Any],
        eval_freq: int,
        verbose: int = 0,
        evaluate_at_start: bool = True,
        **evaluate_kwargs: Any,
    ) -> None:
        super().__init__(verbose)
        self.problems = list(problems)
        self.eval_freq = eval_freq
        self.evaluate_kwargs = evaluate_kwargs
        self.evaluate_at_start = evaluate_at_start
        self.history: list[tuple[int, dict[str, float]]] = []

    def _evaluate(self) -> None:
        metrics = self.agent.evaluate(self.problems, **self.evaluate_kwargs)
        updates = getattr(self.agent, "num_updates", self.n_calls)
        self.history.append((updates, metrics))
        for key, value in metrics.items():
            self.logger.record(f"eval/{key}", value)
        self.logger.record("time/updates", updates)

    def _on_training_start(self) -> None:
        if getattr(self.agent, "num_updates", 0) == 0 and self.evaluate_at_start:
            self._evaluate()
            self.logger.dump(step=0)

    def _on_step(self) -> bool:
        if self.n_calls % self.eval_freq == 0:
            self._evaluate()
        return True


def make_callback(callback: Any) -> BaseCallback:
    """None, a callback, a list of callbacks, or a function -> one ``BaseCallback``."""
    if callback is None:
        return CallbackList([])
    if isinstance(callback, BaseCallback):
        return callback
    if isinstance(callback, (list, tuple)):
        return CallbackList([make_callback(c) for c in callback])
    if callable(callback):
        return FunctionCallback(callback)
    raise TypeError(f"not a callback: {callback!r}")
