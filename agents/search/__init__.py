"""Test-time search agents: greedy chain-of-thought, best-of-N, PRM-guided beam search and MCTS."""

__all__: list[str] = []
