"""What the trainable agents (SFT, GRPO, PPO, OREAL, OREO) share: the model to train (optionally LoRA), the frozen
reference policy and its no-grad forward, the optimizer, gradient accumulation, mixed precision, logging,
checkpoints with exact resume, evaluation and acting.

The policy's weights are the engine's: an ``HFEngine`` built on the same model object samples from the current
policy with no copy. Engines with their own weights (vLLM) get ``engine.update_weights(model)`` after each update.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.base import Agent, AgentConfig
from agents.engines.hardware import AutocastSetting, autocast_context, device_of
from agents.rl.checkpoint import atomic_folder, load_training_state, save_training_state
from agents.rl.forward import PolicyOutput, policy_forward, prompt_groups
from agents.rl.logger import make_logger
from agents.rl.rollout import Episode, TokenBatch, collect_episodes, rollout_stats

__all__ = ["TrainConfig", "TrainableAgent", "make_vec_env"]


@dataclass
class TrainConfig(AgentConfig):
    """Fields every trainable agent has (on top of ``AgentConfig``: seed, max_steps, max_new_tokens, temperature)."""

    learning_rate: float = 1e-5
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip per optimizer step (0 disables)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass; larger batches accumulate gradients over several passes."""
    autocast: AutocastSetting = "auto"
    """Mixed precision for forward/backward and rollouts, on the model's device; master weights and optimizer stay
    fp32. ``"auto"``: bf16 autocast only where the device runs bf16 natively (CUDA Ampere+, CPUs with AVX512-BF16 /
    AMX; on an AVX2 CPU bf16 is ~30x slower), else fp32; ``"bf16"``: always; ``"off"``: never."""
    lora_r: int = 0
    """LoRA rank; 0 trains all weights. With LoRA the KL reference is the base model (adapters disabled)."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path."""
    lora_target_modules: str = "all-linear"
    """Modules that get adapters (peft syntax: "all-linear" or a comma-separated list)."""
    chunk_size: int = 256
    """Response tokens projected to the vocabulary at once when computing log-probs."""
    max_response_tokens: int = 384
    """Response tokens kept per episode for training (longer ones are cut)."""
    log_dir: str | None = None
    """Folder for CSV and TensorBoard logs (None: stdout only)."""
    log_formats: tuple[str, ...] = ("stdout", "csv", "tensorboard")
    """SB3 logger output formats."""
    verbose: int = 1
    """0 silences stdout logging."""
    eval_batch_size: int = 32
    """Episodes run together by ``evaluate``."""
    rollout_mode: str = "step"
    """``"step"``: one engine call per reasoning step; ``"episode"``: one call per solution, cut into steps."""


def make_vec_env(env: Any, num_envs: int, env_kwargs: Mapping[str, Any] | None = None) -> Any:
    """A synchronous vector env with ``num_envs`` copies of ``env`` (an id, an env with a spec, or a vector env)."""
    import gymnasium as gym

    import reasoning_gym  # noqa: F401  (registers the openr/* ids)

    if isinstance(env, gym.vector.VectorEnv):
        if env.num_envs != num_envs:
            raise ValueError(f"the vector env has {env.num_envs} sub-envs; this agent needs {num_envs}")
        return env
    if isinstance(env, str):
        return gym.make_vec(env, num_envs=num_envs, vectorization_mode="sync", **dict(env_kwargs or {}))
    spec = getattr(env, "spec", None)
    if spec is None:
        raise ValueError("pass an env id, a registered env (with .spec) or a vector env")
    # The spec carries the env's kwargs and its wrapper stack (``additional_wrappers``, e.g. a PRM reward wrapper).
    return gym.make_vec(spec, num_envs=num_envs, vectorization_mode="sync", **dict(env_kwargs or {}))


def _apply_lora(model: Any, config: TrainConfig) -> Any:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError("lora_r > 0 needs peft: pip install 'openr-gym[lora]'") from error
    targets: Any = config.lora_target_modules
    if targets != "all-linear":
        targets = [name.strip() for name in targets.split(",") if name.strip()]
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


class TrainableAgent(Agent):
    """Base of SFT / GRPO / PPO / OREAL / OREO. ``model`` defaults to ``engine.model`` (weights shared with the
    engine).

    The frozen reference policy (for a KL penalty or a log-ratio to it) is kept here so every trainable agent gets
    it the same way: a subclass returns True from ``needs_reference()`` and then reads ``reference_logprobs(batch)``.
    Without LoRA the reference is ``self.reference``, a frozen deep copy of the policy taken at construction;
    under LoRA it is the base model (adapters disabled), so no copy is kept and ``self.reference`` is None.
    """

    config_class = TrainConfig
    config: TrainConfig

    def __init__(
        self,
        engine: Any,
        env: Any = None,
        config: TrainConfig | None = None,
        *,
        model: Any = None,
        env_kwargs: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(engine, env, config, **overrides)
        model = model if model is not None else getattr(engine, "model", None)
        if model is None:
            raise ValueError(
                f"{type(self).__name__} needs the model to train: pass model=... for this engine"
            )
        self.env_kwargs = dict(env_kwargs or {})
        self.tokenizer = engine.tokenizer
        self.pad_token_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        if self.config.lora_r > 0:
            model = _apply_lora(model, self.config)
            if (
                hasattr(engine, "model")
                and engine.model is not model
                and not hasattr(engine, "update_weights")
            ):
                engine.model = model  # the engine must sample from the adapted policy
        self.model = model
        self.has_reference = self.needs_reference()
        """Whether ``reference_logprobs`` is available (decided once, by ``needs_reference()``)."""
        self.reference: torch.nn.Module | None = (
            frozen_copy(model) if self.has_reference and self.config.lora_r == 0 else None
        )
        """The frozen reference policy (None under LoRA, where the reference is the adapter-free base model)."""
        self.num_timesteps = 0
        """Env steps taken by the training rollouts (SB3's meaning)."""
        self.num_updates = 0
        """Policy updates done (SB3's ``_n_updates``)."""
        self._callback: Any = None
        self.logger: Any = None
        self.last_rollout_stats: dict[str, float] = {}
        self.last_rollout_timings: dict[str, float] = {}
        self._problem_rng = np.random.default_rng(self.config.seed)
        self._build_extra_modules()
        device = device_of(self.model)
        for module in self.checkpoint_modules().values():  # critics / value heads live with the policy
            module.to(device)
        self.optimizer = torch.optim.AdamW(
            self.parameter_groups(),
            lr=self.config.learning_rate,
            weight_decay=self.config.weight_decay,
            betas=tuple(self.config.adam_betas),
        )

    # --- hooks for subclasses -----------------------------------------------------------------------------------

    def needs_reference(self) -> bool:
        """Keep a frozen reference policy? (GRPO / PPO / OREAL: when their KL coefficient is positive.)"""
        return False

    def _build_extra_modules(self) -> None:
        """Create modules besides the policy and the reference (a critic, a reward model) before the optimizer
        is built."""

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.model}

    # --- shared machinery ---------------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` on the policy's device as ``config.autocast`` decides (a no-op for fp32)."""
        return autocast_context(self.config.autocast, device_of(self.model))

    def _ensure_logger(self) -> Any:
        if self.logger is None:  # a resumed agent continues its log dir from its own update count
            self.logger = make_logger(
                self.config.log_dir, self.config.log_formats, self.config.verbose, self.num_updates or None
            )
        return self.logger

    def micro_batches(self, size: int) -> Iterator[slice]:
        step = max(1, self.config.micro_batch_size)
        for start in range(0, size, step):
            yield slice(start, min(size, start + step))

    def optimizer_step(self) -> float:
        """Clip, step, zero; returns the pre-clip gradient norm."""
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = 0.0
        if params:
            max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # --- no-grad passes: the policy and the reference ---------------------------------------------------------

    @torch.no_grad()
    def no_grad_forward(self, batch: TokenBatch, *, reference: bool = False, value_head=None) -> PolicyOutput:
        """Log-probs (and values) of the whole batch without gradients, micro-batch by micro-batch (rows of
        similar length together, so little padding is computed). ``reference=True`` runs the reference policy."""
        if reference and not self.has_reference:
            raise ValueError(f"{type(self).__name__} keeps no reference policy (needs_reference() is False)")
        shape, device = batch.response_mask.shape, batch.response_mask.device
        logprobs = torch.zeros(shape, device=device)
        values = torch.zeros(shape, device=device) if value_head is not None and not reference else None
        was_training = self.model.training
        self.model.eval()
        try:
            for rows in self.length_sorted_chunks(batch, list(range(len(batch)))):
                sub = batch.select(rows)
                with self.autocast():
                    if reference:
                        out = self._reference_forward(sub)
                    else:
                        out = policy_forward(
                            self.model,
                            sub,
                            chunk_size=self.config.chunk_size,
                            temperature=self.config.temperature,
                            value_head=value_head,
                        )
                logprobs[rows] = out.logprobs.float()
                if values is not None:
                    values[rows] = out.values.float()
        finally:
            self.model.train(was_training)
        return PolicyOutput(logprobs=logprobs, values=values)

    def reference_logprobs(self, batch: TokenBatch) -> torch.Tensor:
        """``(B, R)`` log-probs of the response tokens under the frozen reference policy (no gradient)."""
        return self.no_grad_forward(batch, reference=True).logprobs

    def _reference_forward(self, batch: TokenBatch) -> PolicyOutput:
        kwargs = {"chunk_size": self.config.chunk_size, "temperature": self.config.temperature}
        if self.reference is not None:
            return policy_forward(self.reference, batch, **kwargs)
        with self.model.disable_adapter():  # LoRA: the base model is the reference
            return policy_forward(self.model, batch, **kwargs)

    def length_sorted_chunks(self, batch: TokenBatch, rows: list[int]) -> list[list[int]]:
        """``rows`` cut into micro-batches of ``micro_batch_size``, longest first and the samples of one prompt
        next to each other: a micro-batch is padded to its longest row only, and ``policy_forward`` runs a prompt
        its rows share once. Gradients are summed over the micro-batches of a minibatch, so the grouping does
        not change the update."""
        lengths = batch.lengths.tolist()
        group_of_row = {row: index for index, group in enumerate(prompt_groups(batch)) for row in group}
        longest: dict[int, int] = {}
        for row in rows:
            group = group_of_row[row]
            longest[group] = max(longest.get(group, 0), lengths[row])
        ordered = sorted(
            rows, key=lambda row: (-longest[group_of_row[row]], group_of_row[row], -lengths[row])
        )
        step = max(1, self.config.micro_batch_size)
        return [ordered[start : start + step] for start in range(0, len(ordered), step)]

    def sync_engine(self) -> None:
        """Push the new weights to an engine that keeps its own copy (vLLM); in-process engines share them.

        Under LoRA the adapters are merged for the push and unmerged afterwards."""
        update = getattr(self.engine, "update_weights", None)
        if not callable(update):
            return
        update(_MergedWeights(self.model) if self.config.lora_r > 0 else self.model)

    def adapter(self, env: Any) -> Any:
        """The agent's adapter, with text games (ALFWorld) seen as a multi-turn chat (``agents.game_chat``): the
        view the SFT / OREO data and ``experiments/eval_alfworld.py`` use, so the trainers' own rollouts (GRPO,
        PPO, OREAL, evaluation) match it and train only the commands, never the game's text."""
        from agents.adapters import TextGameAdapter
        from agents.game_chat import ChatGameAdapter

        adapter = super().adapter(env)
        if type(adapter) is TextGameAdapter:
            chat = ChatGameAdapter.from_env(env)
            chat.instruction = adapter.instruction
            return chat
        return adapter

    def vec_env(self, num_envs: int, env: Any = None) -> Any:
        env = env if env is not None else self.env
        if env is None:
            raise ValueError(f"{type(self).__name__} needs an env (id, env or vector env)")
        return make_vec_env(env, num_envs, self.env_kwargs)

    def run_episodes(
        self,
        vec_env: Any,
        reset_seeds: Sequence[int],
        *,
        temperature: float,
        seed: int | None,
        max_new_tokens: int | None = None,
    ) -> list[Episode]:
        """Episodes of the current policy; ``last_rollout_timings`` gets the seconds in the engine and the env."""
        self.last_rollout_timings = {}
        with self.autocast():
            return collect_episodes(
                self.engine,
                vec_env,
                self.adapter(vec_env.envs[0] if hasattr(vec_env, "envs") else vec_env),
                reset_seeds,
                max_steps=self._max_steps(vec_env),
                max_new_tokens=max_new_tokens or self.config.max_new_tokens,
                temperature=temperature,
                top_p=self.config.top_p,
                seed=seed,
                mode=self.config.rollout_mode,
                timings=self.last_rollout_timings,
            )

    def _max_steps(self, vec_env: Any) -> int:
        if self.config.max_steps is not None:
            return int(self.config.max_steps)
        first = vec_env.envs[0] if hasattr(vec_env, "envs") else None
        return self.max_steps(first) if first is not None else 10

    # --- evaluation and acting ----------------------------------------------------------------------------------

    def evaluate(
        self,
        reset_seeds: Sequence[int],
        *,
        k: int = 1,
        temperature: float = 0.0,
        env: Any = None,
        seed: int = 12345,
    ) -> dict[str, float]:
        """Accuracy on held-out problems (the env draws the problem from each reset seed).

        Returns ``accuracy`` (mean over all ``k`` samples: pass@1), ``pass@k`` (a problem counts if any sample is
        right), ``answered`` (episodes that gave a final answer) and ``tokens`` (generated per episode).
        """
        seeds = [int(s) for s in reset_seeds for _ in range(k)]
        size = min(self.config.eval_batch_size, len(seeds))
        vec_env = self.vec_env(size, env)
        episodes: list[Episode] = []
        try:
            for start in range(0, len(seeds), size):
                chunk = seeds[start : start + size]
                if len(chunk) < size:
                    chunk = chunk + [chunk[-1]] * (size - len(chunk))
                batch = self.run_episodes(vec_env, chunk, temperature=temperature, seed=seed + start)
                episodes.extend(batch[: min(size, len(seeds) - start)])
        finally:
            if vec_env is not self.env:
                vec_env.close()
        correct = np.array([e.correct for e in episodes], dtype=float).reshape(len(reset_seeds), k)
        return {
            "accuracy": float(correct.mean()),
            f"pass@{k}": float(correct.max(axis=1).mean()),
            "answered": float(np.mean([e.terminated for e in episodes])),
            "tokens": float(np.mean([e.generated_tokens for e in episodes])),
        }

    def predict(self, obs: str, info: Mapping[str, Any] | None = None) -> str:
        """The next step, greedy (``temperature`` 0) from the current policy."""
        if info is None:
            raise ValueError(f"{type(self).__name__}.predict needs the env's info dict (problem and steps)")
        adapter = self.adapter(self.env) if self.env is not None else _default_adapter()
        with self.autocast():
            completion = self.engine.generate(
                [adapter.prompt(self.engine, info)],
                n=1,
                max_new_tokens=self.config.max_new_tokens,
                temperature=0.0,
                stop=adapter.stop,
            )[0][0]
        return adapter.to_action(completion)

    def solve(
        self, env: Any = None, options: Mapping[str, Any] | None = None, seed: int | None = None
    ) -> dict:
        env = self._env(env)
        if isinstance(env, str):
            import gymnasium as gym

            env = gym.make(env, **self.env_kwargs)
        return super().solve(env, options, seed)

    # --- learning loop ------------------------------------------------------------------------------------------

    def _learn_loop(
        self,
        total_updates: int,
        callback: Any,
        one_update: Callable[[], tuple[dict[str, float], int]],
        reset_num_timesteps: bool,
    ) -> TrainableAgent:
        """The SB3-shaped loop: ``one_update`` returns (metrics, env steps taken) for one policy update.

        As in SB3, ``num_timesteps`` counts env steps (one per sub-env step of the rollouts) and ``num_updates``
        counts policy updates (logged as ``train/n_updates``; TensorBoard's x-axis is the update count, which a
        resumed run's log continues from; the env steps are ``time/total_timesteps``).
        ``callback.on_rollout_end()`` runs after each collection, ``callback.on_step()`` after each update (SB3
        calls it after each vector-env step: here one update is the unit a callback can stop at).
        """
        from agents.rl.callbacks import make_callback

        if reset_num_timesteps and self.num_updates:
            raise ValueError(
                "learn(reset_num_timesteps=True) after training: build a new agent or pass False"
            )
        logger = self._ensure_logger()
        callback = make_callback(callback)
        self._callback = callback
        callback.init_callback(self)
        callback.on_training_start(locals(), globals())
        target = self.num_updates + int(total_updates)
        start_time = time.time()
        try:
            while self.num_updates < target:
                update_start = time.time()
                metrics, env_steps = one_update()
                self.num_updates += 1
                self.num_timesteps += int(env_steps)
                elapsed = max(time.time() - update_start, 1e-9)
                for key, value in metrics.items():
                    logger.record(key, value)
                logger.record("train/n_updates", self.num_updates)
                logger.record("time/fps", env_steps / elapsed)
                logger.record("time/update_seconds", elapsed)
                logger.record("time/total_seconds", time.time() - start_time)
                logger.record("time/total_timesteps", self.num_timesteps)
                logger.record("time/updates", self.num_updates)
                callback.update_locals(locals())
                keep_going = callback.on_step()
                logger.dump(step=self.num_updates)
                if not keep_going:
                    break
            callback.on_training_end()
        finally:
            self._callback = None
        return self

    def next_problem_seeds(self, count: int) -> list[int]:
        """Training problems: fresh reset seeds from the agent's own RNG (saved in checkpoints)."""
        return [int(s) for s in self._problem_rng.integers(0, 2**31 - 1, size=count)]

    def collect(self, num_problems: int, group_size: int) -> list[Episode]:
        """``num_problems`` problems x ``group_size`` samples (each group's sub-envs share a reset seed)."""
        seeds = [s for s in self.next_problem_seeds(num_problems) for _ in range(group_size)]
        if not hasattr(self, "_train_vec_env"):
            self._train_vec_env = self.vec_env(len(seeds))
        started = time.perf_counter()
        episodes = self.run_episodes(
            self._train_vec_env,
            seeds,
            temperature=self.config.temperature,
            seed=self.config.seed * 1_000_003 + self.num_updates,
        )
        self.last_rollout_stats = rollout_stats(episodes)
        self.last_rollout_stats["time/rollout_seconds"] = time.perf_counter() - started
        for part, seconds in self.last_rollout_timings.items():  # where the rollout time went
            self.last_rollout_stats[f"time/rollout_{part}_seconds"] = seconds
        if self._callback is not None:  # SB3: on_rollout_end after each collection
            self._callback.update_locals({"episodes": episodes})
            self._callback.on_rollout_end()
        return episodes

    # --- persistence --------------------------------------------------------------------------------------------

    def save_checkpoint(self, path: str | Path) -> Path:
        """A resumable checkpoint: config, trainable weights, optimizer, RNG streams and counters.

        Written to a folder aside and renamed into place (``atomic_folder``): never half old, half new."""
        folder = Path(path)
        with atomic_folder(folder) as staging:
            super().save(staging)
            save_training_state(
                staging,
                modules=self.checkpoint_modules(),
                optimizer=self.optimizer,
                counters={
                    "num_timesteps": self.num_timesteps,
                    "num_updates": self.num_updates,
                    "problem_rng": self._problem_rng.bit_generator.state,
                },
            )
        return folder

    def load_checkpoint(self, path: str | Path) -> TrainableAgent:
        """Restore a checkpoint written by ``save_checkpoint`` into this agent (built with the same config)."""
        counters = load_training_state(path, modules=self.checkpoint_modules(), optimizer=self.optimizer)
        self.num_timesteps = int(counters["num_timesteps"])
        self.num_updates = int(counters.get("num_updates", counters["num_timesteps"]))
        self._problem_rng.bit_generator.state = counters["problem_rng"]
        return self

    def _save_state(self, folder: Path) -> None:
        """``save(path)``: the policy in transformers format (adapters only under LoRA), loadable by any engine."""
        self.model.save_pretrained(folder / "policy")
        self.tokenizer.save_pretrained(folder / "policy")

    def _load_state(self, folder: Path) -> None:
        policy = folder / "policy"
        if not policy.is_dir():
            return
        if self.config.lora_r > 0:
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights

            set_peft_model_state_dict(self.model, load_peft_weights(str(policy)))
            return
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(policy, dtype=next(self.model.parameters()).dtype)
        self.model.load_state_dict(loaded.state_dict())

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in eval mode with every parameter frozen (the KL reference policy)."""
    reference = copy.deepcopy(model).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference


class _MergedWeights:
    """What ``update_weights`` reads (``state_dict()``) for a LoRA policy: the adapters merged into plain weights,
    under the base model's parameter names; the live model is left unmerged."""

    def __init__(self, peft_model: Any) -> None:
        self.peft_model = peft_model

    def state_dict(self) -> dict[str, torch.Tensor]:
        self.peft_model.merge_adapter()
        try:
            return {
                name.replace(".base_layer", ""): tensor.detach().clone()
                for name, tensor in self.peft_model.get_base_model().state_dict().items()
                if "lora_" not in name
            }
        finally:
            self.peft_model.unmerge_adapter()


def _default_adapter() -> Any:
    from agents.adapters import StepAdapter

    return StepAdapter()
