"""Monte-Carlo tree search over reasoning steps: PUCT selection, expansion with K sampled steps, leaf values from
a PRM / value model (or the policy's likelihood), backup, and a simulation budget; branching by env snapshots.

Batched: each wave selects one leaf per problem tree, expands all of them in one engine call (K samples each) and
scores all new children in one PRM call. Every new child counts as one evaluated visit; its value is backed up to
the root. With ``leaf_value="rollout"`` each new child is instead finished by a greedy rollout (all rollouts of a
wave advance together, one engine call per step) and valued by the PRM's last-step score of the finished
rollout, or without a PRM by the env's outcome reward (the game's win in ALFWorld; for math that reward uses the
reference answer, so treat it as an oracle, e.g. for collecting training data). The answer is chosen among the finished nodes the search found (``config.selection``), or, when none
finished, by following the most visited path and completing it greedily.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.search.common import SearchAgent, SearchConfig
from agents.search.expansion import Expander
from agents.search.tree import Node, backup, best_child_by_visits, select_leaf

__all__ = ["MCTS", "MCTSConfig"]


@dataclass
class MCTSConfig(SearchConfig):
    """MCTS planner."""

    num_simulations: int = 8
    """Selection-expansion-backup rounds per problem (the search budget)."""
    num_expansions: int = 4
    """Candidate steps sampled when a leaf is expanded (K); duplicates merge into one child."""
    c_puct: float = 1.0
    """Exploration weight in PUCT."""
    leaf_value: str = "value"
    """``"value"``: the PRM (or likelihood) score of the new node; ``"rollout"``: finish it greedily and score that."""


class MCTS(SearchAgent):
    """PUCT tree search guided by a PRM (or likelihood), batched across problems."""

    config_class = MCTSConfig
    config: MCTSConfig

    def _search(self, expander: Expander, roots: list[Node]) -> list[tuple[Node, list[Node]]]:
        cfg = self.config
        if cfg.num_simulations < 1 or cfg.num_expansions < 1:
            raise ValueError("num_simulations and num_expansions must be >= 1")
        if cfg.leaf_value not in ("value", "rollout"):
            raise ValueError(f"leaf_value must be 'value' or 'rollout', got {cfg.leaf_value!r}")
        simulations = [0] * len(roots)
        rollouts: list[list[Node]] = [[] for _ in roots]
        while any(s < cfg.num_simulations for s in simulations):
            leaves = []
            for p, root in enumerate(roots):
                if simulations[p] >= cfg.num_simulations:
                    continue
                simulations[p] += 1
                leaf = select_leaf(root, cfg.c_puct)
                if leaf.done:  # a finished path: re-count its value, nothing to expand
                    backup(leaf, leaf.value if leaf.value is not None else 0.0)
                else:
                    leaves.append(leaf)
            if not leaves:
                continue
            children = expander.expand(leaves, n=cfg.num_expansions, temperature=cfg.temperature)
            new_nodes = [c for kids in children for c in kids]
            if cfg.leaf_value == "rollout":
                self._rollout(new_nodes, expander, rollouts)
            else:
                self.value.evaluate(new_nodes, expander.ledgers)
            for leaf, kids in zip(leaves, children):
                for child in kids:
                    child.visits, child.value_sum = 1, float(child.value or 0.0)
                backup(leaf, sum(child.value_sum for child in kids), visits=len(kids))
        return self._answers(expander, roots, rollouts)

    def _rollout(self, nodes: list[Node], expander: Expander, rollouts: list[list[Node]]) -> None:
        """Value ``nodes`` by greedy rollouts; finished rollouts become answer candidates, not tree nodes.

        One value call for the wave: the nodes that finished and the ends of the others' rollouts."""
        fresh = [node for node in nodes if not node.done]
        ends = expander.complete(fresh, temperature=0.0)
        scored = [node for node in nodes if node.done] + [end for end in ends if end.path_tokens]
        self.value.evaluate(scored, expander.ledgers)
        for node, end in zip(fresh, ends):
            node.children = []  # the rollout chain stays reachable from ``end`` only
            rollouts[end.problem].append(end)
        for node, end in [*zip(fresh, ends), *((n, n) for n in nodes if n.done)]:
            node.value = float(end.value or 0.0) if self.prm is not None else end.return_

    def _answers(
        self, expander: Expander, roots: list[Node], rollouts: list[list[Node]]
    ) -> list[tuple[Node, list[Node]]]:
        candidates = [
            [n for n in root.iter_subtree() if n.done] + ends for root, ends in zip(roots, rollouts)
        ]
        use_visits = self.selection_rule == "most_visited"
        pending = [p for p, found in enumerate(candidates) if use_visits or not found]
        if pending:
            starts = [_most_visited_path_end(roots[p]) for p in pending]
            ends = expander.complete(starts, temperature=0.0)
            self.value.evaluate([e for e, s in zip(ends, starts) if e is not s], expander.ledgers)
            for p, end in zip(pending, ends):
                if use_visits:
                    candidates[p] = [end]
                else:
                    candidates[p].append(end)
        return [(found[0] if use_visits else self.choose(found), found) for found in candidates]


def _most_visited_path_end(root: Node) -> Node:
    node = root
    while node.children and not node.done:
        node = best_child_by_visits(node)
    return node
