"""Search-tree nodes over env snapshots, with PUCT selection and value backup (AlphaZero-style).

A node is one env state reached by one step (action). Branching is by snapshots of the env and its wrappers
(``wrappers.state``, over ``env.unwrapped.get_state()`` / ``set_state()``), so a planner never replays a trajectory
to try a sibling.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Node",
    "backup",
    "best_child_by_visits",
    "normalized_priors",
    "puct_score",
    "select_child",
    "select_leaf",
]


@dataclass(eq=False)
class Node:
    """One env state in a search tree (identity-compared)."""

    problem: int
    """Index of the problem in the batch this tree belongs to."""
    state: Any
    """``wrappers.state.get_stack_state(env)`` after this node's step (the base env and its wrappers)."""
    info: dict
    """The env ``info`` after this node's step (``problem``, ``steps``, ``answer``, ...)."""
    observation: str | None = None
    """The env observation after this node's step (text games build prompts from it)."""
    parent: Node | None = None
    action: str = ""
    """The step that led here (empty at a root)."""
    depth: int = 0
    terminated: bool = False
    truncated: bool = False
    reward: float = 0.0
    """Env reward of this node's step."""
    return_: float = 0.0
    """Env reward summed along the path."""
    logprob: float = 0.0
    """Sum of the step's token log-probs."""
    num_tokens: int = 0
    """Generated tokens of this node's step."""
    path_logprob: float = 0.0
    path_tokens: int = 0
    prior: float = 1.0
    """P(s, a) in PUCT."""
    value: float | None = None
    """The value model's / PRM's estimate for this node (None until evaluated)."""
    step_scores: list[float] = field(default_factory=list)
    """One score per step along the path (the PRM's per-step scores, or the value used in their place)."""
    prompt_tokens: int = 0
    """Tokens of this node's prompt, once it has been sent to the engine (0 before)."""
    processed_prompt_tokens: int = 0
    """Prompt tokens the engine reported processing when this node was expanded (after prefix reuse; 0 before)."""
    prm_tokens: int = 0
    """Tokens the PRM / value model read to score this node (identical candidates share one reading)."""
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    @property
    def expanded(self) -> bool:
        return bool(self.children)

    @property
    def q(self) -> float:
        """Mean backed-up value (0 before any visit)."""
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def steps(self) -> list[str]:
        return [str(s) for s in self.info.get("steps", [])]

    @property
    def answer(self) -> str | None:
        return self.info.get("answer")

    def add_child(self, child: Node) -> Node:
        child.parent = self
        self.children.append(child)
        return child

    def path(self) -> list[Node]:
        """Nodes from the root to this node."""
        nodes, node = [], self
        while node is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]

    def iter_subtree(self) -> Iterator[Node]:
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))


def puct_score(parent: Node, child: Node, c_puct: float) -> float:
    """Q(s,a) + c_puct * P(s,a) * sqrt(N(s)) / (1 + N(s,a)) (Silver et al. 2017, AlphaGo Zero, PUCT)."""
    exploration = c_puct * child.prior * math.sqrt(max(parent.visits, 1)) / (1 + child.visits)
    return child.q + exploration


def select_child(node: Node, c_puct: float) -> Node:
    """The child with the highest PUCT score (first one on ties)."""
    if not node.children:
        raise ValueError("select_child on a node without children")
    return max(node.children, key=lambda child: puct_score(node, child, c_puct))


def select_leaf(root: Node, c_puct: float) -> Node:
    """Descend by PUCT from ``root`` until an unexpanded or finished node."""
    node = root
    while node.expanded and not node.done:
        node = select_child(node, c_puct)
    return node


def backup(node: Node, value: float, visits: int = 1) -> None:
    """Add ``value`` (summed over ``visits`` evaluations) to ``node`` and every ancestor."""
    while node is not None:
        node.visits += visits
        node.value_sum += value
        node = node.parent


def best_child_by_visits(node: Node) -> Node:
    """The most visited child (ties: higher Q, then first)."""
    return max(node.children, key=lambda child: (child.visits, child.q))


def normalized_priors(logprobs: Sequence[float], num_tokens: Sequence[int]) -> list[float]:
    """Priors from per-token mean log-probs: softmax over candidates, so length does not dominate."""
    means = [lp / n if n else -10.0 for lp, n in zip(logprobs, num_tokens)]
    if not means:
        return []
    top = max(means)
    weights = [math.exp(m - top) for m in means]
    total = sum(weights)
    return [w / total for w in weights]
