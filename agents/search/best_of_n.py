"""Best-of-N: sample N full trajectories per problem, then pick one with a selection rule (OpenR)."""

from __future__ import annotations

from dataclasses import dataclass

from agents.search.common import SearchAgent, SearchConfig
from agents.search.expansion import Expander
from agents.search.tree import Node

__all__ = ["BestOfN", "BestOfNConfig"]


@dataclass
class BestOfNConfig(SearchConfig):
    """Best-of-N sampling."""

    n: int = 4
    """Trajectories sampled per problem."""


class BestOfN(SearchAgent):
    """N samples per problem; the first wave asks for all N in one request per problem (shared prompt), later
    waves extend every unfinished sample by one step; finished samples are scored by the PRM in one call and
    chosen by ``config.selection`` (majority vote without a PRM)."""

    config_class = BestOfNConfig
    config: BestOfNConfig

    def _search(self, expander: Expander, roots: list[Node]) -> list[tuple[Node, list[Node]]]:
        if self.config.n < 1:
            raise ValueError("n must be >= 1")
        first = expander.expand(
            roots, n=self.config.n, temperature=self.config.temperature, merge_duplicates=False
        )
        flat = [child for children in first for child in children]
        leaves = expander.complete(flat, temperature=self.config.temperature)
        self.value.evaluate(leaves, expander.ledgers)
        per_root: list[list[Node]] = [[] for _ in roots]
        for leaf in leaves:
            per_root[_root_index(leaf, roots)].append(leaf)
        return [(self.choose(candidates), candidates) for candidates in per_root]


def _root_index(node: Node, roots: list[Node]) -> int:
    root = node.path()[0]
    return next(i for i, r in enumerate(roots) if r is root)
