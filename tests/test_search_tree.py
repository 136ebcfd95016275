"""MCTS building blocks on a small known tree: PUCT scores and choices, backup, and priors."""

from __future__ import annotations

import math

import pytest

from agents.search.tree import (
    Node,
    backup,
    best_child_by_visits,
    normalized_priors,
    puct_score,
    select_child,
    select_leaf,
)


def node(**kwargs) -> Node:
    return Node(problem=0, state=None, info={}, **kwargs)


def known_tree():
    """root(N=4) -> a (N=3, W=1.5, P=0.5), b (N=1, W=0.9, P=0.5); a -> a1 (N=2, W=1.0), a2 (unvisited)."""
    root = node(visits=4, value_sum=2.4)
    a = root.add_child(node(prior=0.5, visits=3, value_sum=1.5))
    b = root.add_child(node(prior=0.5, visits=1, value_sum=0.9))
    a1 = a.add_child(node(prior=0.7, visits=2, value_sum=1.0))
    a2 = a.add_child(node(prior=0.3))
    return root, a, b, a1, a2


def test_puct_score_matches_the_formula():
    root, a, b, *_ = known_tree()
    assert puct_score(root, a, c_puct=1.0) == pytest.approx(0.5 + 0.5 * math.sqrt(4) / 4)  # 0.75
    assert puct_score(root, b, c_puct=1.0) == pytest.approx(0.9 + 0.5 * math.sqrt(4) / 2)  # 1.4
    assert puct_score(root, b, c_puct=0.0) == pytest.approx(0.9)


def test_select_child_and_leaf():
    root, a, b, a1, a2 = known_tree()
    assert select_child(root, 1.0) is b
    assert select_leaf(root, 1.0) is b  # b is unexpanded
    # with a strong exploration weight the unvisited a2 wins inside a
    assert select_child(a, 10.0) is a2
    # exploitation only: a1 (Q=0.5) beats a2 (Q=0)
    assert select_child(a, 0.0) is a1


def test_select_leaf_stops_at_finished_nodes():
    root = node(visits=1)
    done = root.add_child(node(terminated=True))
    done.add_child(node())  # never descended into
    assert select_leaf(root, 1.0) is done


def test_backup_adds_to_every_ancestor():
    root, a, b, a1, a2 = known_tree()
    backup(a2, 0.9)
    assert (a2.visits, a2.value_sum) == (1, pytest.approx(0.9))
    assert (a.visits, a.value_sum) == (4, pytest.approx(2.4))
    assert (root.visits, root.value_sum) == (5, pytest.approx(3.3))
    assert (b.visits, a1.visits) == (1, 2)  # siblings untouched
    backup(b, 1.5, visits=3)
    assert (b.visits, root.visits) == (4, 8) and root.q == pytest.approx(4.8 / 8)


def test_most_visited_child_and_path():
    root, a, b, a1, a2 = known_tree()
    assert best_child_by_visits(root) is a
    assert a1.path() == [root, a, a1]
    assert [n for n in root.iter_subtree()] == [root, a, a1, a2, b]


def test_priors_are_a_softmax_of_mean_logprobs():
    priors = normalized_priors([-1.0, -4.0, 0.0], [1, 4, 0])
    assert sum(priors) == pytest.approx(1.0)
    assert priors[0] == pytest.approx(priors[1])  # same mean log-prob (-1) whatever the length
    assert priors[2] < priors[0]  # an empty step gets almost nothing
    assert normalized_priors([], []) == []
