"""Agents that act in the ``openr/*`` environments: test-time search (greedy, best-of-N, beam search, MCTS) and RL.

Exports are lazy (module-level ``__getattr__`` over the table below) so ``import agents`` stays cheap and never
pulls in torch / transformers. To add an agent, add one line to ``_LAZY``.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> "module:attribute"
_LAZY: dict[str, str] = {
    "Agent": "agents.base:Agent",
    "AgentConfig": "agents.base:AgentConfig",
    "StepAdapter": "agents.adapters:StepAdapter",
    "TextGameAdapter": "agents.adapters:TextGameAdapter",
    "Greedy": "agents.search.greedy:Greedy",
    "BestOfN": "agents.search.best_of_n:BestOfN",
    "BeamSearch": "agents.search.beam_search:BeamSearch",
    "MCTS": "agents.search.mcts:MCTS",
    "GRPO": "agents.rl.grpo:GRPO",
    "PPO": "agents.rl.ppo:PPO",
    "SFT": "agents.rl.sft:SFT",
    "OREO": "agents.rl.oreo:OREO",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'agents' has no attribute {name!r}")
    module_name, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
