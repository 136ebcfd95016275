"""The prefix-affinity router of RayEngine (pure Python, no Ray needed): balance, affinity, splitting, forgetting."""

from __future__ import annotations

from collections import Counter

import pytest

from agents.engines.routing import PrefixRouter, block_hashes


def load(pieces) -> Counter:
    counts: Counter = Counter()
    for piece in pieces:
        counts[piece.actor] += piece.samples
    return counts


def test_block_hashes_chain_whole_blocks_only():
    assert block_hashes([1, 2, 3], 4) == []
    a, b = block_hashes(list(range(8)), 4), block_hashes([*range(8), 9, 9, 9], 4)
    assert len(a) == 2 and b[:2] == a
    assert block_hashes([9, *range(1, 8)], 4)[1] != a[1]  # a different first block changes every later hash


def test_unseen_prompts_are_balanced_and_every_sample_placed_once():
    router = PrefixRouter(2, block_tokens=4)
    prompts = [[i] * 10 for i in range(5)]
    pieces = router.route(prompts, [3] * 5, live=[0, 1])
    assert load(pieces) == Counter({0: 8, 1: 7}) or load(pieces) == Counter({0: 7, 1: 8})
    for index in range(5):  # each prompt's samples covered exactly once, in order
        own = [p for p in pieces if p.prompt == index]
        assert [p.first for p in own] == sorted(p.first for p in own)
        assert sum(p.samples for p in own) == 3 and own[0].first == 0


def test_one_prompt_with_many_samples_is_split_over_actors():
    pieces = PrefixRouter(2).route([[1, 2, 3]], [8], live=[0, 1])
    assert load(pieces) == Counter({0: 4, 1: 4})
    assert [(p.first, p.samples) for p in pieces] == [(0, 4), (4, 4)]


def test_children_follow_the_actor_that_holds_their_parent():
    router = PrefixRouter(2, block_tokens=4)
    parents = [[p] * 12 for p in (1, 2)]
    router.observe(0, parents[0] + [7, 7, 7, 7])  # actor 0 generated a step after parent 1
    router.observe(1, parents[1] + [8, 8, 8, 8])
    children = [parents[1] + [8, 8, 8, 8, 5], parents[0] + [7, 7, 7, 7, 5]]
    pieces = router.route(children, [1, 1], live=[0, 1])
    assert [p.actor for p in pieces] == [1, 0]
    assert router.matches(children[0]) == {1: 16}


def test_affinity_never_breaks_the_balance_cap():
    router = PrefixRouter(2, block_tokens=4)
    root = [3] * 16
    router.observe(0, root)  # every child extends a prompt only actor 0 has seen
    children = [root + [i] * 4 for i in range(6)]
    pieces = router.route(children, [1] * 6, live=[0, 1])
    assert load(pieces) == Counter({0: 3, 1: 3})


def test_copies_of_a_prompt_in_one_batch_stay_together_until_the_cap():
    router = PrefixRouter(2, block_tokens=4)
    groups = [[1] * 8, [1] * 8, [2] * 8, [2] * 8]  # two GRPO groups of two copies
    pieces = router.route(groups, [1] * 4, live=[0, 1])
    actors = [p.actor for p in pieces]
    assert actors[0] == actors[1] and actors[2] == actors[3] and actors[0] != actors[2]


def test_queues_and_dead_actors_are_respected():
    router = PrefixRouter(3, block_tokens=4)
    router.observe(2, [5] * 8)
    pieces = router.route([[5] * 8, [6] * 8, [7] * 8], [2, 2, 2], live=[0, 1], queued=[4, 0, 0])
    assert 2 not in load(pieces)
    assert load(pieces) == Counter({0: 1, 1: 5})  # actor 0 already has 4 queued: fair share is (6 + 4) / 2
    with pytest.raises(ValueError):
        router.route([[1]], [1], live=[])


def test_forget_drops_an_actors_prefixes():
    router = PrefixRouter(2, block_tokens=2)
    router.observe(0, [1, 2, 3, 4])
    router.observe(1, [1, 2])
    router.forget(0)
    assert router.matches([1, 2, 3, 4]) == {1: 2}
    router.clear()
    assert router.matches([1, 2, 3, 4]) == {}


def test_memory_is_bounded():
    router = PrefixRouter(1, block_tokens=1, max_blocks=10)
    router.observe(0, list(range(100)))
    assert len(router._owners) == 10


def test_nothing_imports_ray_unless_a_ray_engine_is_built():
    import subprocess
    import sys

    code = (
        "import sys, agents, agents.engines, agents.engines.ray_engine, agents.rl.grpo, agents.search.beam_search\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
