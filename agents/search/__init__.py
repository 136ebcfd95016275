"""Test-time search agents: greedy chain-of-thought, best-of-N, PRM-guided beam search and MCTS.

Exports are lazy (``lazy_loader``): ``from agents.search import MCTS`` imports only what MCTS needs.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "common": ["SearchAgent", "SearchConfig"],
        "greedy": ["Greedy", "GreedyConfig"],
        "best_of_n": ["BestOfN", "BestOfNConfig"],
        "beam_search": ["BeamSearch", "BeamSearchConfig"],
        "mcts": ["MCTS", "MCTSConfig"],
        "selection": ["select"],
        "values": ["LikelihoodValue", "NodeValue", "PRMValue", "make_value"],
    },
)
