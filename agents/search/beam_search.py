"""Step-level beam search guided by a PRM or a value model (OpenR's ``beam_search``).

Each wave expands every live beam with ``num_expansions`` sampled steps (the roots with
``beam_width * num_expansions``) in one engine call, scores all new nodes in one PRM call, moves finished nodes
aside (each shrinks the beam by one) and keeps the best-scoring unfinished nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.search.common import SearchAgent, SearchConfig
from agents.search.expansion import Expander
from agents.search.tree import Node

__all__ = ["BeamSearch", "BeamSearchConfig"]


@dataclass
class BeamSearchConfig(SearchConfig):
    """Step-level beam search."""

    beam_width: int = 2
    """Trajectories kept per problem (B)."""
    num_expansions: int = 2
    """Candidate next steps sampled per beam (K); the root gets B * K."""


class BeamSearch(SearchAgent):
    """PRM-guided (or, without a PRM, likelihood-guided) step-level beam search, batched across problems."""

    config_class = BeamSearchConfig
    config: BeamSearchConfig

    def _search(self, expander: Expander, roots: list[Node]) -> list[tuple[Node, list[Node]]]:
        width, expansions = self.config.beam_width, self.config.num_expansions
        if width < 1 or expansions < 1:
            raise ValueError("beam_width and num_expansions must be >= 1")
        beams: list[list[Node]] = [[root] for root in roots]
        finished: list[list[Node]] = [[] for _ in roots]
        first = True
        while any(beams):
            owners = [p for p, beam in enumerate(beams) for _ in beam]
            nodes = [node for beam in beams for node in beam]
            n = width * expansions if first else expansions
            first = False
            children = expander.expand(nodes, n=n, temperature=self.config.temperature)
            self.value.evaluate([c for kids in children for c in kids], expander.ledgers)
            pool: list[list[Node]] = [[] for _ in roots]
            for owner, kids in zip(owners, children):
                pool[owner].extend(kids)
            for p, candidates in enumerate(pool):
                if not candidates:
                    beams[p] = []
                    continue
                slots = width - len(finished[p])
                ranked = sorted(candidates, key=lambda node: -(node.value or 0.0))  # stable: ties keep order
                kept = [node for node in ranked if node.done][:slots]
                finished[p].extend(kept)
                slots -= len(kept)
                beams[p] = [node for node in ranked if not node.done][: max(slots, 0)]
        return [(self.choose(done), done) for done in finished]
