"""The RL losses and advantage estimators, one small function each (CleanRL style: named terms, paper + equation).

Tensors are token-level and right-padded: shape ``(batch, T)`` with a ``mask`` of the same shape that is 1 on the
response tokens of each row (a prefix of the row) and 0 on padding. Everything here is pure torch and has
known-answer tests in ``tests/test_rl_losses.py``.
"""

from __future__ import annotations

import torch

__all__ = [
    "aggregate_token_loss",
    "clip_fraction",
    "clipped_policy_loss",
    "clipped_value_loss",
    "explained_variance",
    "full_vocab_kl",
    "gae_advantages",
    "group_normalized_advantages",
    "k3_kl",
    "masked_mean",
    "masked_whiten",
    "oreal_kl_penalty",
    "oreal_negative_loss",
    "oreal_positive_loss",
    "oreal_token_weights",
    "oreo_kl",
    "oreo_policy_loss",
    "oreo_step_sums",
    "oreo_value_loss",
    "process_group_advantages",
    "rloo_advantages",
    "step_rewards_to_tokens",
    "threshold_rescale",
    "token_reward_model_loss",
]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (0 when the mask is empty instead of NaN)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise to zero mean, unit variance over the masked entries (PPO's advantage normalisation)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask.to(values.dtype)


def group_normalized_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO outcome supervision (Shao et al. 2024, DeepSeekMath, section 4.1.2): A_i = (r_i - mean(r)) / std(r).

    ``rewards`` has shape ``(num_groups * group_size,)`` with each group's samples contiguous. The std is the
    population std of the group; a group whose rewards are all equal gets advantage 0 (no signal, no NaN).
    Every token of sample i receives A_i.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True, unbiased=False)
    return ((grouped - mean) / (std + eps)).view(-1)


def process_group_advantages(
    step_rewards: list[list[float]], group_size: int, eps: float = 1e-6
) -> list[list[float]]:
    """GRPO process supervision (DeepSeekMath, section 4.1.3): normalise every step reward by the mean and std of
    all step rewards in the group, then A at step j = sum of the normalised rewards of steps j, j+1, ... .

    Returns, per sample, one advantage per step (assign it to every token of that step).
    """
    if len(step_rewards) % group_size:
        raise ValueError(f"{len(step_rewards)} samples do not split into groups of {group_size}")
    advantages: list[list[float]] = []
    for start in range(0, len(step_rewards), group_size):
        group = step_rewards[start : start + group_size]
        flat = torch.tensor([r for sample in group for r in sample], dtype=torch.float64)
        mean = flat.mean() if flat.numel() else torch.tensor(0.0)
        std = flat.std(unbiased=False) if flat.numel() else torch.tensor(0.0)
        for sample in group:
            normalised = [(r - float(mean)) / (float(std) + eps) for r in sample]
            suffix_sums, running = [], 0.0
            for value in reversed(normalised):
                running += value
                suffix_sums.append(running)
            advantages.append(suffix_sums[::-1])
    return advantages


def step_rewards_to_tokens(
    step_end_positions: list[list[int]], step_rewards: list[list[float]], length: int
) -> torch.Tensor:
    """Place each step's reward on the last token of that step (PPO with step-level / PRM rewards).

    ``step_end_positions[b][j]`` is the index (within the response) of the last token of step j of sample b.
    """
    rewards = torch.zeros(len(step_rewards), length)
    for row, (positions, values) in enumerate(zip(step_end_positions, step_rewards, strict=True)):
        for position, value in zip(positions, values, strict=True):
            rewards[row, min(position, length - 1)] += value
    return rewards


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), over tokens.

    A_t = sum_l (gamma * lam)^l * delta_{t+l},  delta_t = r_t + gamma * V(s_{t+1}) - V(s_t).
    The episode ends after the last masked token of each row (V after it is 0). Returns (advantages, returns)
    with returns = advantages + values (the value target), both zero on padding.
    """
    batch, length = rewards.shape
    mask = mask.to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    running_gae = torch.zeros(batch, dtype=rewards.dtype)
    for t in reversed(range(length)):
        next_mask = mask[:, t + 1] if t + 1 < length else torch.zeros(batch, dtype=rewards.dtype)
        next_value = (
            values[:, t + 1] * next_mask if t + 1 < length else torch.zeros(batch, dtype=rewards.dtype)
        )
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running_gae = delta + gamma * lam * next_mask * running_gae
        advantages[:, t] = running_gae * mask[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi_theta || pi_ref) estimate 'k3' (Schulman, 'Approximating KL Divergence', 2020;
    DeepSeekMath eq. 4): ratio - log(ratio) - 1 with ratio = pi_ref / pi_theta. Unbiased and always >= 0."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
) -> torch.Tensor:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), per token, negated to be a loss.

    L = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A), ratio = exp(logp - logp_old). GRPO (DeepSeekMath eq. 3)
    uses the same term with group-normalised advantages; ``clip_fraction`` is the logged statistic.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped_objective = ratio * advantages
    clipped_objective = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) * advantages
    loss = -torch.minimum(unclipped_objective, clipped_objective)
    return loss


def clip_fraction(logprobs: torch.Tensor, old_logprobs: torch.Tensor, clip_range: float) -> torch.Tensor:
    """Per token, 1 where the ratio left the clip interval: ``|exp(logp - logp_old) - 1| > eps`` (the
    definition of SB3's ``train/clip_fraction`` and CleanRL's ``clipfracs``; its masked mean is the fraction)."""
    return ((torch.exp(logprobs - old_logprobs) - 1.0).abs() > clip_range).to(logprobs.dtype)


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_range: float | None
) -> torch.Tensor:
    """Value loss, clipped around the rollout's values as in the PPO reference implementation (baselines ppo2,
    CleanRL ``ppo.py``): 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2), per token."""
    unclipped = (values - returns) ** 2
    if clip_range is None:
        return 0.5 * unclipped
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    clipped = (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] over the masked tokens (Stable-Baselines3's
    ``explained_variance``, logged as ``train/explained_variance``): 1 is a perfect critic, 0 is no better than
    a constant, negative is worse than one. NaN when the returns do not vary."""
    variance = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    residual_variance = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return float("nan") if float(variance) == 0 else float(1.0 - residual_variance / variance)


# --- Loss aggregation: how per-token losses become one number ---------------------------------------------------


def aggregate_token_loss(
    loss_tokens: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    total_tokens: float,
    num_sequences: int,
    sequence_tokens: torch.Tensor | None = None,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """A micro-batch's share of its minibatch's loss, so the shares of all micro-batches sum to the loss.

    - ``"token"``: sum over tokens / tokens in the minibatch: every token weighs the same (DAPO, Yu et al. 2025,
      eq. 8; TRL's default; PPO in SB3 / CleanRL);
    - ``"sequence"``: each sequence's token mean, averaged over sequences (DeepSeekMath eq. 3: 1/G sum_i 1/|o_i|
      sum_t); ``sequence_tokens`` ``(B, R)`` gives every token its sequence's length;
    - ``"constant"``: sum over tokens / (sequences x ``max_tokens``), a constant normaliser (Dr. GRPO, Liu et al.
      2025, section 3.1: no length bias);
    - ``"sum"``: the plain sum, for losses whose terms carry their own normalisers (OREAL: token means taken
      separately over the correct and the incorrect samples, see ``agents.rl.oreal``).
    """
    masked = loss_tokens * mask
    if mode == "token":
        return masked.sum() / max(float(total_tokens), 1.0)
    if mode == "sequence":
        if sequence_tokens is None:
            raise ValueError("loss aggregation 'sequence' needs sequence_tokens")
        return (masked / sequence_tokens.clamp(min=1.0)).sum() / max(num_sequences, 1)
    if mode == "sum":
        return masked.sum()
    if mode == "constant":
        if not max_tokens:
            raise ValueError("loss aggregation 'constant' needs max_tokens")
        return masked.sum() / (max(num_sequences, 1) * max_tokens)
    raise ValueError(f"loss aggregation must be 'token', 'sequence', 'constant' or 'sum', got {mode!r}")


# --- OREAL (Lyu et al. 2025, "Exploring the Limit of Outcome Reward for Learning Mathematical Reasoning") --------


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out baseline (Ahmadian et al. 2024; OREAL's ``reward_shaping_type="rloo"``):
    A_i = r_i - mean_{j != i} r_j within each group of ``group_size`` contiguous samples."""
    if rewards.numel() % group_size or group_size < 2:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size} >= 2")
    grouped = rewards.view(-1, group_size)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).view(-1)


def oreal_positive_loss(
    logprobs: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """OREAL's behaviour cloning of correct samples (paper section 2: behaviour cloning on best-of-N positives;
    released ``train_oreal.py``: ``sft_loss * pos_weight * advantage``), per token: -A * w * log pi(y_t). Apply it to correct samples only."""
    return -advantages * weights * logprobs


def oreal_negative_loss(
    logprobs: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """OREAL's reshaped policy gradient on incorrect samples (paper section 2.3: reward shaping for
    negatives; released ``train_oreal.py``), per token:
    -A * w * exp(log pi - stopgrad(log pi)). The value is -A * w (the ratio is 1); the gradient is
    -A * w * grad log pi, so with A < 0 the sample's tokens are pushed down. Apply it to incorrect samples only."""
    return -advantages * weights * torch.exp(logprobs - logprobs.detach())


def oreal_kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """OREAL's KL to the reference on every sample (released code ``kl_type="unbias"``: k3), per token:
    kl_coef * (exp(ref - logp) - (ref - logp) - 1)."""
    return kl_coef * k3_kl(logprobs, ref_logprobs)


def threshold_rescale(probability: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """OREAL's released ``threshold_rescale``: clamp((p - threshold) / (1 - threshold), 0, 1)."""
    return ((probability - threshold) / (1.0 - threshold)).clamp(0.0, 1.0)


def oreal_token_weights(
    scores: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token weights from the token-level reward model's scores (paper: token-level reward model;
    released ``train_oreal.py`` with ``threshold_rescale``): p_t =
    sigmoid(cumulative mean of the scores up to t), positive weight = threshold_rescale(p_t), negative weight =
    threshold_rescale(1 - p_t). Returns (positive weights, negative weights), ``(B, T)``, 0 on padding; no
    gradient flows into the reward model through them."""
    scores = scores.detach() * mask
    counts = mask.cumsum(dim=1).clamp(min=1.0)
    correct_probability = torch.sigmoid(scores.cumsum(dim=1) / counts)
    positive = threshold_rescale(correct_probability, threshold) * mask
    negative = threshold_rescale(1.0 - correct_probability, threshold) * mask
    return positive, negative


def token_reward_model_loss(scores: torch.Tensor, mask: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Per sequence, binary cross-entropy of the mean token score (a logit) against the outcome (1 correct, 0
    not): OREAL's token-level reward model objective (paper: token-level reward model; released
    ``train_oreal.py``: BCE with logits)."""
    sequence_score = masked_mean(scores, mask, dim=1)
    return torch.nn.functional.binary_cross_entropy_with_logits(
        sequence_score, correct.to(sequence_score.dtype), reduction="none"
    )


# --- OREO: offline soft-Bellman policy and value learning -------------------------------------------------------
# Wang et al. 2024, "Offline Reinforcement Learning for LLM Multi-Step Reasoning" (arXiv 2412.16145), section 3.
# Layout: ``(batch, T)`` tensors over a trajectory's tokens after its prompt. ``action_mask`` is 1 on tokens the
# policy wrote (0 on padding and on an env's observation tokens between turns). ``state_mask`` is 1 on the first
# token of every action: its value ``values[b, t]`` is V(s) read at the state just before that token. Token-level
# OREO marks every action token as a state, step-level OREO the first token of each step (or each ALFWorld turn).
# ``rewards`` holds one outcome reward R per trajectory (no intermediate rewards, as in the paper). Each returns
# one loss per trajectory (its mean over its states), so every trajectory weighs the same whatever its length.


def oreo_step_sums(log_ratio: torch.Tensor, state_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(future, current)``: at every token t, ``future[t] = sum_{i >= t} log_ratio[i]`` and ``current[t]`` the sum
    over the step t belongs to (from its state up to, not including, the next state). Tokens before the first
    state belong to no step (``current`` 0 there)."""
    future = log_ratio.flip(-1).cumsum(-1).flip(-1)
    step_index = state_mask.long().cumsum(-1) - 1  # -1 before the first state
    per_step = torch.zeros_like(log_ratio).scatter_add(
        -1, step_index.clamp(min=0), log_ratio * (step_index >= 0)
    )
    current = per_step.gather(-1, step_index.clamp(min=0)) * (step_index >= 0)
    return future, current


def oreo_value_loss(
    values: torch.Tensor,
    log_ratio: torch.Tensor,
    state_mask: torch.Tensor,
    rewards: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """OREO value loss (Eq. 8), one per trajectory: mean over its states s_t of

        (V(s_t) - R + beta * sum_{i >= t} log pi(a_i | s_i) / pi_ref(a_i | s_i))^2

    ``log_ratio`` = (log pi - log pi_ref) * action_mask per token; it is detached (only V learns here)."""
    future_log_ratio, _ = oreo_step_sums(log_ratio.detach(), state_mask)
    residual = values - rewards[:, None] + beta * future_log_ratio
    return masked_mean(residual**2, state_mask, dim=-1)


def oreo_policy_loss(
    values: torch.Tensor,
    log_ratio: torch.Tensor,
    state_mask: torch.Tensor,
    rewards: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """OREO policy loss (Eq. 9), one per trajectory: mean over its states s_t of the same residual,

        (sg[V(s_t)] - R + beta * log pi(a_t | s_t) / pi_ref(a_t | s_t) + beta * sg[sum_{i > t} log-ratio])^2

    with the gradient reaching only the current step's log-ratio (sg = stop-gradient): V is detached and so is
    the sum over the later steps. At step level a_t is the whole step (the sum of its tokens' log-ratios)."""
    future_log_ratio, current_step = oreo_step_sums(log_ratio, state_mask)
    later_steps = (future_log_ratio - current_step).detach()
    residual = values.detach() - rewards[:, None] + beta * (current_step + later_steps)
    return masked_mean(residual**2, state_mask, dim=-1)


def oreo_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """OREO's regulariser KL(pi || pi_ref) (the alpha term of Eq. 9), one per trajectory: the mean over its action
    tokens of the k3 estimate (``k3_kl``), as the released code does by default."""
    return masked_mean(k3_kl(logprobs, ref_logprobs), action_mask, dim=-1)


def full_vocab_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact per-token KL(pi || pi_ref) = sum_v pi(v) (log pi(v) - log pi_ref(v)) over the whole vocabulary (the
    released code's ``--unbiased_kl``). ``(..., V)`` logits in, ``(...)`` out; callers pass chunks of tokens so the
    two ``(tokens, V)`` tensors stay small."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - ref_logp)).sum(-1)
