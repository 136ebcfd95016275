"""Node evaluators for guided search: a process reward model, or the policy's own step likelihood.

Why a fallback: the benchmark must run without a trained PRM (and ALFWorld has none), so beam search and MCTS can
rank nodes by the policy's per-token likelihood, which costs no model call. With a PRM, every wave's new nodes are
scored in ONE ``prm.score(questions, step_lists)`` call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from agents.search.expansion import Ledger
from agents.search.tree import Node

__all__ = ["LikelihoodValue", "NodeValue", "PRMValue", "make_value"]


class NodeValue(Protocol):
    """Sets ``node.value`` and ``node.step_scores`` for a batch of nodes."""

    name: str

    def evaluate(self, nodes: Sequence[Node], ledgers: Sequence[Ledger]) -> None: ...


class PRMValue:
    """Scores with a process reward model: ``prm.score(questions, step_lists) -> list[list[float]]`` in [0, 1].

    ``node.value`` is the last step's score (OpenR's beam-search value); ``node.step_scores`` holds every step's.
    """

    name = "prm"

    def __init__(self, prm: Any) -> None:
        if not callable(getattr(prm, "score", None)):
            raise TypeError("a PRM needs a score(questions, step_lists) method")
        self.prm = prm

    def evaluate(self, nodes: Sequence[Node], ledgers: Sequence[Ledger]) -> None:
        """Score every node with steps in ONE call; identical candidates (same problem text and steps, e.g. repeated
        best-of-N samples) are scored once and share the scores."""
        for node in nodes:
            if not node.steps:
                node.value, node.step_scores = 0.5, []
        groups: dict[tuple[str, tuple[str, ...]], list[Node]] = {}
        for node in nodes:
            if node.steps:
                groups.setdefault((str(node.info.get("problem", "")), tuple(node.steps)), []).append(node)
        if not groups:
            return
        keys = list(groups)
        scores = self.prm.score([question for question, _ in keys], [list(steps) for _, steps in keys])
        if len(scores) != len(keys):
            raise ValueError(f"PRM returned {len(scores)} score lists for {len(keys)} candidates")
        for problem in {node.problem for members in groups.values() for node in members}:
            ledgers[problem].prm_calls += 1
        read = getattr(self.prm, "last_read_tokens", None)  # set by rewards.prm's models on every score call
        if isinstance(read, list) and len(read) == len(keys):
            for key, tokens in zip(keys, read):
                ledgers[groups[key][0].problem].prm_tokens += int(tokens)
                for node in groups[key]:
                    node.prm_tokens = int(tokens)
        for key, step_scores in zip(keys, scores):
            for node in groups[key]:
                node.step_scores = [float(s) for s in step_scores]
                node.value = node.step_scores[-1] if node.step_scores else 0.0


class LikelihoodValue:
    """No model call: a node's value is exp(mean token log-prob of its path), its step score that of its step."""

    name = "likelihood"

    def evaluate(self, nodes: Sequence[Node], ledgers: Sequence[Ledger]) -> None:
        for node in nodes:
            node.step_scores = [_mean_prob(n.logprob, n.num_tokens) for n in node.path()[1:]]
            node.value = _mean_prob(node.path_logprob, node.path_tokens)


def _mean_prob(logprob: float, num_tokens: int) -> float:
    return math.exp(logprob / num_tokens) if num_tokens else 0.0


def make_value(prm: Any = None) -> NodeValue:
    """``PRMValue(prm)`` when a PRM is given, else ``LikelihoodValue()``; a scorer that evaluates nodes itself
    (OREO's value model reads each node's own prompt, game observations included) is used as it is."""
    if prm is not None and callable(getattr(prm, "evaluate", None)):
        return prm
    return PRMValue(prm) if prm is not None else LikelihoodValue()
