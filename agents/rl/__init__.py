"""Trainable agents: online RL (GRPO, PPO, OREAL), offline RL (OREO) and supervised warm-starts (SFT, rejection sampling).

Exports are lazy (``lazy_loader``) so ``import agents.rl`` does not pull in torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "grpo": ["GRPO", "GRPOConfig"],
        "oreal": ["OREAL", "OREALConfig"],
        "ppo": ["PPO", "PPOConfig"],
        "sft": ["SFT", "SFTConfig", "SFTExample"],
        "oreo": ["OREO", "OREOConfig"],
        "trainer": ["TrainConfig"],
        "callbacks": ["BaseCallback", "CheckpointCallback", "EvalCallback", "StopTrainingOnRewardThreshold"],
    },
)
