"""Greedy chain-of-thought: one temperature-0 step per wave until the episode ends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agents.search.common import SearchAgent, SearchConfig
from agents.search.expansion import Expander
from agents.search.tree import Node

__all__ = ["Greedy", "GreedyConfig"]


@dataclass
class GreedyConfig(SearchConfig):
    """Greedy decoding step by step (``temperature`` is ignored: always 0)."""


class Greedy(SearchAgent):
    """The baseline: the policy's most likely step at every step, batched across problems."""

    config_class = GreedyConfig

    def predict(self, obs: str, info: Mapping[str, Any] | None = None) -> str:
        """One greedy step from the env's current state (no look-ahead needed)."""
        env = self._env(None)
        if info is None:
            raise ValueError("Greedy.predict needs the env's info dict (problem and steps)")
        expander = self.expander(env)
        root = expander.root_from_current(obs, info)
        try:
            [[child]] = expander.expand([root], n=1, temperature=0.0)
        finally:
            expander.restore(root)
        return child.action

    def _search(self, expander: Expander, roots: list[Node]) -> list[tuple[Node, list[Node]]]:
        leaves = expander.complete(roots, temperature=0.0)
        if self.prm is not None:  # scores only for the report; greedy never uses them
            self.value.evaluate(leaves, expander.ledgers)
        return [(leaf, [leaf]) for leaf in leaves]
