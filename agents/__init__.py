"""Agents that act in the ``openr/*`` environments: test-time search (greedy, best-of-N, beam search, MCTS) and RL.

Exports are lazy (``lazy_loader``, as in every package of the project) so ``import agents`` stays cheap and never
pulls in torch / transformers. To add an agent, add its name under its module below.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "base": ["Agent", "AgentConfig"],
        "adapters": ["StepAdapter", "TextGameAdapter"],
        "search.greedy": ["Greedy"],
        "search.best_of_n": ["BestOfN"],
        "search.beam_search": ["BeamSearch"],
        "search.mcts": ["MCTS"],
        "rl.grpo": ["GRPO"],
        "rl.oreal": ["OREAL"],
        "rl.ppo": ["PPO"],
        "rl.sft": ["SFT"],
        "rl.oreo": ["OREO"],
        "slot_policy": ["SlotScorerPolicy", "SlotQPolicy"],
    },
)
