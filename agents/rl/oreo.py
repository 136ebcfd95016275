"""OREO: offline soft-Bellman policy and value learning (Wang et al. 2024, "Offline Reinforcement Learning for LLM
Multi-Step Reasoning", arXiv 2412.16145), and its value model as a search guide.

From trajectories with an outcome reward R (recorder files, OREO's JSONL rows, or collected by the agent from its
current policy), OREO learns a value V(s) and a policy pi that satisfy the soft Bellman equation of the
KL-regularised MDP, V(s_t) = R - beta * sum_{i >= t} log pi(a_i | s_i) / pi_ref(a_i | s_i) along a trajectory:
the value loss (Eq. 8) fits V to it with the policy fixed; the policy loss (Eq. 9) moves only the current step's
log-ratio towards it with V fixed, plus alpha * KL(pi || pi_ref). Both losses are in ``agents.rl.losses``. Like
the released code, the values in the policy loss are those from before the value update and the log-ratios in the
value loss those from before the policy update: both losses come from one forward pass and one optimizer step
updates the value model and the policy together (each with its own learning rate and gradient clip).

Iterative OREO (``collect_problems > 0``): every ``updates_per_collection`` updates, sample new trajectories from
the current policy (written in the recorder's format when ``data_path`` is set) and train on them.
At test time ``agent.value_scorer()`` guides ``BeamSearch`` / ``MCTS`` / ``BestOfN`` like a PRM
(``OREO.search_agent`` is OREO's own procedure: step-level beam search keeping the B best states by V).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agents.rl.forward import policy_forward, response_scores
from agents.rl.losses import full_vocab_kl, oreo_kl, oreo_policy_loss, oreo_value_loss
from agents.rl.oreo_data import (
    OREOTrajectory,
    TokenTrajectory,
    load_trajectories,
    replay_observations,
    tokenize_trajectory,
    trajectory_from_episode,
    write_records,
)
from agents.rl.oreo_value import ValueScorer
from agents.rl.rollout import TokenBatch, TokenizedEpisode, make_token_batch
from agents.rl.trainer import TrainableAgent, TrainConfig, frozen_copy

__all__ = ["OREO", "OREOConfig"]


@dataclass
class OREOConfig(TrainConfig):
    """OREO hyper-parameters (defaults: the paper and its released scripts, except where noted)."""

    beta: float = 0.03
    """Soft-Bellman temperature beta: weight of the log-ratio log pi / pi_ref in both residuals."""
    alpha: float | None = None
    """Weight of the KL(pi || pi_ref) regulariser; None: 0.01 at token level, 0.1 at step level (the paper)."""
    kl_estimator: str = "k3"
    """``"k3"``: the per-token k3 estimate on the sampled tokens; ``"full"``: the exact KL over the whole
    vocabulary, computed in chunks (one more policy pass: slower)."""
    granularity: str = "step"
    """``"step"``: a state before each reasoning step / game command; ``"token"``: before every action token."""
    value_model: str = "separate"
    """``"separate"``: a value head on its own copy of the LM (the paper); ``"shared"``: a head on the policy's
    backbone (cheaper; the value loss then also trains the backbone)."""
    learning_rate: float = 5e-6
    """Policy AdamW learning rate (released scripts: 5e-6)."""
    value_learning_rate: float = 5e-6
    """Value-model AdamW learning rate (released scripts: 5e-6)."""
    value_init: str = "zero"
    """Value head at the start of training: ``"zero"`` (V = 0, the paper) or ``"mean_reward"`` (weights 0, bias =
    the mean reward of the training pool at the first update: the least-squares constant fit of Eq. 8 while the
    log-ratios are 0, so the updates go into telling states apart instead of into the offset; with few updates
    at a small value learning rate, a zero head spends them climbing towards the mean reward)."""
    batch_size: int = 16
    """Trajectories per update (drawn from the data with the agent's seeded RNG)."""
    data_files: tuple[str, ...] = ()
    """Offline data read by ``learn`` when the pool is empty: JSONL files of recorder records or OREO rows."""
    reward_key: str = "correct"
    """R for recorder records: ``"correct"`` (1 / 0, the paper's rewards) or ``"return"`` (the env's sum)."""
    cache_reference: bool = True
    """Keep each trajectory's reference log-probs after their first use (they never change)."""
    collect_problems: int = 0
    """Iterative OREO: problems per collection (0: train only on the data given to ``learn``)."""
    samples_per_problem: int = 4
    """Iterative OREO: trajectories sampled per problem."""
    updates_per_collection: int = 4
    """Iterative OREO: updates between two collections."""
    keep_old_data: bool = False
    """Iterative OREO: train on all data collected so far (True) or only the newest collection (False)."""
    data_path: str | None = None
    """Iterative OREO: append collected trajectories to this JSONL (recorder schema v1); None keeps them in memory."""
    temperature: float = 1.0
    """Sampling temperature of collected trajectories; log-probs use it too, so the ratio is on the sampler."""
    max_new_tokens: int = 96
    """Token limit per step when collecting."""

    @property
    def kl_weight(self) -> float:
        if self.alpha is not None:
            return float(self.alpha)
        return 0.01 if self.granularity == "token" else 0.1


class OREO(TrainableAgent):
    """Offline soft-Bellman RL: a policy, a frozen reference and a value model trained from outcome rewards."""

    config_class = OREOConfig
    config: OREOConfig

    # --- modules ------------------------------------------------------------------------------------------------

    def needs_reference(self) -> bool:
        return True

    def _build_extra_modules(self) -> None:
        from rewards.prm.value_head import CausalLMWithValueHead

        config = self.config
        if config.granularity not in ("step", "token"):
            raise ValueError(f"granularity must be 'step' or 'token', got {config.granularity!r}")
        if config.value_model not in ("separate", "shared"):
            raise ValueError(f"value_model must be 'separate' or 'shared', got {config.value_model!r}")
        if config.kl_estimator not in ("k3", "full"):
            raise ValueError(f"kl_estimator must be 'k3' or 'full', got {config.kl_estimator!r}")
        if config.value_init not in ("zero", "mean_reward"):
            raise ValueError(f"value_init must be 'zero' or 'mean_reward', got {config.value_init!r}")
        self.value_lm: CausalLMWithValueHead | None = None
        if config.value_model == "separate":
            backbone = frozen_copy(self.model).train()
            for name, parameter in backbone.named_parameters():
                parameter.requires_grad_(config.lora_r == 0 or "lora_" in name)
            self.value_lm = CausalLMWithValueHead(backbone)  # zero-initialised head: V = 0 at the start
            self.value_head = self.value_lm.v_head
        else:
            hidden = self.model.config.hidden_size
            self.value_head = torch.nn.Linear(hidden, 1)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
        self.pool: list[OREOTrajectory] = []
        self._tokens: dict[int, TokenTrajectory] = {}
        self._reference_cache: dict[int, torch.Tensor] = {}

    def value_backbone(self) -> Any:
        return self.value_lm.backbone if self.value_lm is not None else self.model

    def _value_parameters(self) -> list[torch.nn.Parameter]:
        module = self.value_lm if self.value_lm is not None else self.value_head
        return [p for p in module.parameters() if p.requires_grad]

    def parameter_groups(self) -> list[dict[str, Any]]:
        policy = [p for p in self.model.parameters() if p.requires_grad]
        return [
            {"params": policy, "lr": self.config.learning_rate},
            {"params": self._value_parameters(), "lr": self.config.value_learning_rate},
        ]

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        return {
            "policy": self.model,
            "value": self.value_lm if self.value_lm is not None else self.value_head,
        }

    def optimizer_step(self) -> float:
        """Clip the policy's and the value model's gradients separately (two models in the paper), step both."""
        norms = []
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        for group in self.optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._last_value_grad_norm = norms[1]
        return norms[0]

    def value_scorer(self, **kwargs: Any) -> ValueScorer:
        """The value model as a search guide (the PRM protocol and the node-value protocol)."""
        adapter = self.adapter(self.env) if self.env is not None and not isinstance(self.env, str) else None
        if adapter is None and isinstance(self.env, str):
            import gymnasium as gym

            probe = gym.make(self.env, **self.env_kwargs)
            adapter = self.adapter(probe)
            probe.close()
        instruction = getattr(adapter, "instruction", "") if adapter is not None else ""
        settings = {"log_probs": self.action_logprobs, "beta": self.config.beta, **kwargs}
        return ValueScorer(
            self.value_backbone(),
            self.value_head,
            self.engine,
            instruction=instruction,
            adapter=adapter,
            autocast=self.autocast,
            **settings,
        )

    @torch.no_grad()
    def action_logprobs(
        self, rows: Sequence[tuple[list[int], list[int], int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, R)`` log-probs of each row's response tokens (rows of context ids, response ids, and an index the
        caller masks from) under the policy and under the reference, as the training computes them (same
        temperature and autocast): what ``ValueScorer`` needs for a finished candidate's soft-Bellman value."""
        batch = make_token_batch(
            [TokenizedEpisode(list(c), list(r), []) for c, r, _ in rows], self.pad_token_id
        )
        return self.no_grad_forward(batch).logprobs, self.reference_logprobs(batch)

    def search_agent(
        self, beam_width: int = 2, num_expansions: int = 4, terminal: str | None = None, **config: Any
    ) -> Any:
        """OREO's test-time procedure: step-level beam search keeping the ``beam_width`` best states by V out of
        ``num_expansions`` samples per beam; the finished candidate with the highest value is the answer, its
        value V(s_last) + beta * log pi / pi_ref of its last step (``terminal``, see ``ValueScorer``). With
        ``beam_width=1`` on a text game this samples K commands per turn and plays the one of highest value."""
        from agents.search.beam_search import BeamSearch, BeamSearchConfig

        settings = {"temperature": self.config.temperature, "max_new_tokens": self.config.max_new_tokens}
        settings.update(config)
        settings.setdefault("selection", "prm_last_max")
        search_config = BeamSearchConfig(beam_width=beam_width, num_expansions=num_expansions, **settings)
        return BeamSearch(self.engine, self.env, search_config, prm=self.value_scorer(terminal=terminal))

    # --- data ---------------------------------------------------------------------------------------------------

    def add_data(self, data: str | Path | Sequence[Any]) -> int:
        """Add trajectories: JSONL path(s) (recorder or OREO rows) or ``OREOTrajectory`` objects; returns the count."""
        if isinstance(data, (str, Path)):
            new = load_trajectories(data, self.config.reward_key)
        elif data and isinstance(data[0], (str, Path)):
            new = load_trajectories(data, self.config.reward_key)
        else:
            new = list(data)
        self.pool.extend(new)
        return len(new)

    def collect_trajectories(self, num_problems: int, samples_per_problem: int) -> list[OREOTrajectory]:
        """Sample trajectories from the current policy (``collect``), written to ``data_path`` if set."""
        episodes = self.collect(num_problems, samples_per_problem)
        if self.config.data_path:
            env_id = (
                self.env
                if isinstance(self.env, str)
                else getattr(getattr(self.env, "spec", None), "id", None)
            )
            write_records(self.config.data_path, episodes, env_id, temperature=self.config.temperature)
        return [trajectory_from_episode(e) for e in episodes]

    def _text_game_env(self) -> Any:
        """The env as a single env when it is a text game (no ``step_delimiter``: ALFWorld), else None."""
        env = self.env
        if env is None:
            return None
        if isinstance(env, str):
            if not hasattr(self, "_replay_env"):
                import gymnasium as gym

                self._replay_env = gym.make(env, **self.env_kwargs)
            env = self._replay_env
        return None if hasattr(env.unwrapped, "step_delimiter") else env

    def _tokenized(self, index: int) -> TokenTrajectory:
        if index not in self._tokens:
            trajectory = self.pool[index]
            game = self._text_game_env()
            replay = (
                trajectory.observations is None and trajectory.prompt is None and not trajectory.conversation
            )
            if game is not None and replay:  # what the policy read before each command
                trajectory.observations = replay_observations(game, trajectory)
            self._tokens[index] = tokenize_trajectory(
                trajectory,
                self.tokenizer,
                self.engine,
                granularity=self.config.granularity,
                delimiter=getattr(self.engine, "step_delimiter", "\n\n"),
                max_response_tokens=self.config.max_response_tokens,
                adapter=self.adapter(game) if game is not None else None,
            )
        return self._tokens[index]

    # --- the update ---------------------------------------------------------------------------------------------

    def train_on(self, indices: Sequence[int]) -> dict[str, float]:
        """One OREO update on the pool's trajectories ``indices`` (micro-batched; one optimizer step)."""
        sums = {"value_loss": 0.0, "policy_loss": 0.0, "kl": 0.0, "value_mean": 0.0, "log_ratio": 0.0}
        total = len(indices)
        tokens = 0.0
        # Samples of one problem side by side: a micro-batch then runs their shared prompt once (``policy_forward``);
        # the update is a sum over micro-batches, so the order does not change it.
        ordered = sorted(indices, key=lambda i: self._tokenized(i).rows[0].context)
        for start in range(0, total, max(1, self.config.micro_batch_size)):
            chunk = ordered[start : start + self.config.micro_batch_size]
            batch = TrajectoryBatch([self._tokenized(i) for i in chunk], self.pad_token_id)
            reference = self._reference_logprobs(chunk, batch)
            with self.autocast():
                terms = self.objective(batch, reference)
            loss = (
                terms["value_loss"] + terms["policy_loss"] + self.config.kl_weight * terms["kl"]
            ).sum() / total
            loss.backward()
            for name in sums:
                sums[name] += float(terms[name].detach().sum())
            tokens += float(batch.action_mask.sum())
        policy_grad_norm = self.optimizer_step()
        self.sync_engine()
        metrics = {f"train/{name}": value / total for name, value in sums.items()}
        metrics.update(
            {
                "train/grad_norm": policy_grad_norm,
                "train/value_grad_norm": self._last_value_grad_norm,
                "train/reward_mean": sum(self._tokenized(i).reward for i in indices) / total,
                "train/tokens": tokens,
                "train/trajectories": float(total),
            }
        )
        return metrics

    def objective(self, batch: TrajectoryBatch, reference: torch.Tensor) -> dict[str, torch.Tensor]:
        """OREO's three terms per trajectory (Eq. 8, Eq. 9 and the KL regulariser) from one policy pass and one
        value pass; also V's mean over states and the mean log-ratio, for logging."""
        shared = self.value_lm is None
        out = policy_forward(
            self.model,
            batch.rows,
            chunk_size=self.config.chunk_size,
            temperature=self.config.temperature,
            value_head=self.value_head if shared else None,
        )
        logprobs = batch.to_trajectories(out.logprobs)
        if shared:
            row_values = out.values
        else:  # the value LM reads each row only up to its last state (values after it are never used)
            row_values = batch.widen(
                response_scores(self.value_lm.backbone, batch.value_rows, self.value_head)
            )
        values = batch.to_trajectories(row_values)
        actions, states, rewards = batch.action_mask, batch.state_mask, batch.rewards
        log_ratio = (logprobs - reference) * actions
        beta = self.config.beta
        value_loss = oreo_value_loss(
            values, log_ratio.detach(), states, rewards, beta
        )  # Eq. 8: only V learns
        policy_loss = oreo_policy_loss(
            values.detach(), log_ratio, states, rewards, beta
        )  # Eq. 9: only pi learns
        if self.config.kl_estimator == "k3":
            kl = oreo_kl(logprobs, reference, actions)
        else:
            kl = self._full_kl(batch)
        value_mean = (values.detach() * states).sum(-1) / states.sum(-1).clamp(min=1.0)
        log_ratio_mean = log_ratio.detach().sum(-1) / actions.sum(-1).clamp(min=1.0)
        return {
            "value_loss": value_loss,
            "policy_loss": policy_loss,
            "kl": kl,
            "value_mean": value_mean,
            "log_ratio": log_ratio_mean,
        }

    def _full_kl(self, batch: TrajectoryBatch) -> torch.Tensor:
        """Per trajectory, the mean over its action tokens of the exact KL(pi || pi_ref) over the vocabulary."""
        from agents.engines.logprobs import hidden_states

        rows = batch.rows
        r, c = rows.response_mask.nonzero(as_tuple=True)
        positions = rows.response_positions[r, c]
        hidden = hidden_states(self.model, rows.input_ids, rows.attention_mask)[:, :-1][r, positions]
        reference = self.reference if self.reference is not None else self.model
        # LoRA: the reference is the base model, i.e. the policy with its adapters off
        adapters_off = self.model.disable_adapter() if self.reference is None else contextlib.nullcontext()
        with torch.no_grad(), adapters_off:
            ref_hidden = hidden_states(reference, rows.input_ids, rows.attention_mask)[:, :-1][r, positions]
        head, ref_head = (
            self.model.get_output_embeddings(),
            (self.reference or self.model).get_output_embeddings(),
        )
        pieces = []
        for start in range(0, r.numel(), self.config.chunk_size):
            piece = slice(start, start + self.config.chunk_size)
            with torch.no_grad():
                ref_logits = ref_head(ref_hidden[piece]).float() / self.config.temperature
            logits = head(hidden[piece]).float() / self.config.temperature
            pieces.append(full_vocab_kl(logits, ref_logits))
        per_token = torch.zeros(rows.response_mask.shape, device=hidden.device).index_put(
            (r, c), torch.cat(pieces)
        )
        per_token = batch.to_trajectories(per_token) * batch.action_mask
        return per_token.sum(-1) / batch.action_mask.sum(-1).clamp(min=1.0)

    def _reference_logprobs(self, indices: list[int], batch: TrajectoryBatch) -> torch.Tensor:
        """Reference log-probs of ``batch`` (the trajectories ``indices``), each trajectory computed once: from the
        cache, else in one reference pass over the uncached ones (``batch`` itself when none is cached or repeated)."""
        missing = list(dict.fromkeys(i for i in indices if i not in self._reference_cache))
        if missing:
            fresh = (
                batch
                if missing == list(indices)
                else TrajectoryBatch([self._tokenized(i) for i in missing], self.pad_token_id)
            )
            per_traj = fresh.to_trajectories(self.reference_logprobs(fresh.rows))
            for row, index in enumerate(missing):
                count = fresh.lengths[row]
                self._reference_cache[index] = per_traj[row, :count].detach().clone()
        width = batch.action_mask.shape[1]
        out = torch.zeros(len(indices), width)
        for row, index in enumerate(indices):
            cached = self._reference_cache[index]
            out[row, : cached.numel()] = cached
        if not self.config.cache_reference:
            for index in indices:
                self._reference_cache.pop(index, None)
        return out

    @torch.no_grad()
    def init_value_to_mean_reward(self) -> float:
        """Set the value head to the constant mean reward of the pool (``value_init="mean_reward"``); returns it."""
        if not self.pool:
            raise ValueError("init_value_to_mean_reward needs trajectories in the pool")
        mean = sum(float(t.reward) for t in self.pool) / len(self.pool)
        self.value_head.weight.zero_()
        self.value_head.bias.fill_(mean)
        return mean

    # --- learning loop ------------------------------------------------------------------------------------------

    def learn(
        self,
        total_steps: int,
        callback: Any = None,
        data: str | Path | Sequence[Any] | None = None,
        reset_num_timesteps: bool = False,
    ) -> OREO:
        """``total_steps`` OREO updates of ``batch_size`` trajectories each, from ``data`` (added to the pool) and,
        in iterative mode, from trajectories the agent collects from its current policy."""
        config = self.config
        if data is not None:
            self.add_data(data)
        elif not self.pool and config.data_files:
            self.add_data(list(config.data_files))
        if not self.pool and config.collect_problems <= 0:
            raise ValueError("OREO.learn needs data (a JSONL path or trajectories) or collect_problems > 0")
        self.model.train()

        def one_update() -> tuple[dict[str, float], int]:
            rollout: dict[str, float] = {}
            if config.collect_problems > 0 and self.num_updates % max(1, config.updates_per_collection) == 0:
                new = self.collect_trajectories(config.collect_problems, config.samples_per_problem)
                if not config.keep_old_data:
                    self.pool, self._tokens, self._reference_cache = [], {}, {}
                self.pool.extend(new)
                rollout = dict(self.last_rollout_stats)
            if self.num_updates == 0 and config.value_init == "mean_reward":
                self.init_value_to_mean_reward()
            indices = [int(i) for i in self._problem_rng.integers(0, len(self.pool), size=config.batch_size)]
            metrics = self.train_on(indices)
            metrics.update(rollout)
            return metrics, len(indices)

        with torch.enable_grad():
            return self._learn_loop(total_steps, callback, one_update, reset_num_timesteps)

    # --- persistence --------------------------------------------------------------------------------------------

    def _save_state(self, folder: Path) -> None:
        super()._save_state(folder)
        if self.value_lm is not None:
            self.value_lm.save_pretrained(folder / "value")
        else:
            torch.save(self.value_head.state_dict(), folder / "value_head.pt")

    def _load_state(self, folder: Path) -> None:
        super()._load_state(folder)
        if self.value_lm is not None and (folder / "value").is_dir():
            from rewards.prm.value_head import CausalLMWithValueHead

            dtype = next(self.value_lm.parameters()).dtype
            loaded = CausalLMWithValueHead.from_pretrained(folder / "value", dtype=dtype)
            self.value_lm.load_state_dict(loaded.state_dict(), strict=False)
        elif (folder / "value_head.pt").is_file():
            self.value_head.load_state_dict(torch.load(folder / "value_head.pt", weights_only=True))


class TrajectoryBatch:
    """Trajectories as model rows (a ``TokenBatch``) and as ``(N, T)`` trajectory tensors (their rows' responses
    concatenated): ``action_mask``, ``state_mask``, ``rewards``; ``to_trajectories`` maps a row tensor over.

    ``value_rows`` are the same rows cut after their last state: V(s) at a state reads only the tokens before it,
    so a separate value model need not run over the last step (at step level often half of a short solution)."""

    def __init__(self, trajectories: Sequence[TokenTrajectory], pad_token_id: int) -> None:
        items, value_items, owners, offsets = [], [], [], []
        for index, trajectory in enumerate(trajectories):
            offset = 0
            for row in trajectory.rows:
                items.append(TokenizedEpisode(row.context, row.response, []))
                last_state = max((j for j, s in enumerate(row.state) if s), default=0)
                value_items.append(TokenizedEpisode(row.context, row.response[: last_state + 1], []))
                owners.append(index)
                offsets.append(offset)
                offset += len(row.response)
        self.rows: TokenBatch = make_token_batch(items, pad_token_id)
        self.value_rows: TokenBatch = make_token_batch(value_items, pad_token_id)
        self.lengths = [t.num_tokens for t in trajectories]
        width = max(self.lengths)
        self.action_mask = torch.zeros(len(trajectories), width)
        self.state_mask = torch.zeros(len(trajectories), width)
        self.rewards = torch.tensor([t.reward for t in trajectories], dtype=torch.float32)
        row_index, col_index, traj_index, pos_index = [], [], [], []
        flat = [row for t in trajectories for row in t.rows]
        for r, (row, owner, offset) in enumerate(zip(flat, owners, offsets)):
            count = len(row.response)
            self.action_mask[owner, offset : offset + count] = torch.tensor(row.action, dtype=torch.float32)
            self.state_mask[owner, offset : offset + count] = torch.tensor(row.state, dtype=torch.float32)
            row_index += [r] * count
            col_index += list(range(count))
            traj_index += [owner] * count
            pos_index += list(range(offset, offset + count))
        self._source = (torch.tensor(row_index), torch.tensor(col_index))
        self._target = (torch.tensor(traj_index), torch.tensor(pos_index))

    def widen(self, value_row_tensor: torch.Tensor) -> torch.Tensor:
        """A ``value_rows`` tensor padded with zeros to the width of ``rows``."""
        missing = self.rows.response_mask.shape[1] - value_row_tensor.shape[1]
        return torch.nn.functional.pad(value_row_tensor, (0, missing))

    def to_trajectories(self, row_tensor: torch.Tensor) -> torch.Tensor:
        """``(rows, R)`` over row responses -> ``(N, T)`` over trajectories (keeps the gradient)."""
        out = torch.zeros(self.action_mask.shape, dtype=row_tensor.dtype, device=row_tensor.device)
        return out.index_put(self._target, row_tensor[self._source])
