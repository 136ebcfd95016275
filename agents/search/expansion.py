"""Batched expansion: one engine call per wave for every node of every problem, then one env step per child.

Why one place: every search agent does the same thing at each wave (build prompts with the env's adapter, sample
K steps per node in a single ``engine.generate`` call, branch the env with ``set_state`` and step it) and must
account compute per problem (generated tokens, prompt tokens the engine actually processed, the tokens a
re-send-everything client would have processed, engine calls).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agents.adapters import StepAdapter
from agents.search.tree import Node, normalized_priors
from wrappers.state import get_stack_state, set_stack_state, unbranchable_wrappers

__all__ = ["Expander", "Ledger"]


@dataclass
class Ledger:
    """Compute spent on one problem."""

    generated_tokens: int = 0
    prompt_tokens: int = 0
    """Prompt tokens the engine reports it processed (after prefix / KV reuse)."""
    full_prompt_tokens: int = 0
    """Prompt tokens if every request re-sent its whole prompt (no reuse): the baseline for the reuse ratio."""
    ideal_prompt_tokens: int = 0
    """Prompt tokens a perfect prefix cache would process: each prompt minus its parent's (already sent) prompt."""
    engine_calls: int = 0
    """Engine calls this problem took part in (a call is shared by every problem in the batch)."""
    prm_calls: int = 0
    """Value-model / PRM calls this problem took part in."""
    prm_tokens: int = 0
    """Tokens the PRM / value model read for this problem's candidates (0 when the scorer does not report
    ``last_read_tokens``, e.g. the likelihood fallback, which costs no model call)."""
    wall_time: float = 0.0
    """Seconds of the batch this problem was solved in, divided by the batch size."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Expander:
    """Creates roots, expands nodes in batched waves and completes them; keeps a ``Ledger`` per problem."""

    def __init__(
        self,
        engine: Any,
        env: Any,
        adapter: StepAdapter,
        *,
        max_steps: int,
        max_new_tokens: int,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.engine = engine
        self.env = env  # stepped through its wrappers; branched with wrappers.state (the whole stack)
        self.adapter = adapter
        unbranchable = unbranchable_wrappers(env)
        if unbranchable:
            warnings.warn(
                f"search branches this env but cannot rewind the state of its wrappers {unbranchable} (they do "
                "not define get_wrapper_state / set_wrapper_state): they will see every branch as one episode",
                stacklevel=3,
            )
        self.max_steps = max_steps
        self.max_new_tokens = max_new_tokens
        self.top_p = top_p
        self.seed = seed
        self.waves = 0
        self.ledgers: list[Ledger] = []
        self._token_counts: dict[str, int] = {}
        self._started = time.perf_counter()

    # --- roots --------------------------------------------------------------------------------------------------

    def reset(
        self, problems: Sequence[Mapping[str, Any] | None], seeds: Sequence[int | None] | None = None
    ) -> list[Node]:
        """One root per problem (reset ``options`` dicts, or ``seeds`` to draw problems), and a ledger for each."""
        roots = []
        for index, options in enumerate(problems):
            seed = seeds[index] if seeds is not None else None
            if seed is None and not options:
                seed = self.seed + index  # no problem given: draw one reproducibly
            obs, info = self.env.reset(seed=seed, options=dict(options) if options else None)
            roots.append(
                Node(problem=index, state=get_stack_state(self.env), info=dict(info), observation=obs)
            )
        self.ledgers = [Ledger() for _ in roots]
        self._started = time.perf_counter()
        return roots

    def root_from_current(self, observation: str | None, info: Mapping[str, Any]) -> Node:
        """A root at the env's current state (for ``predict``)."""
        self.ledgers = [Ledger()]
        self._started = time.perf_counter()
        depth = len(info.get("steps", []))
        return Node(
            problem=0, state=get_stack_state(self.env), info=dict(info), observation=observation, depth=depth
        )

    def finish(self) -> None:
        """Split the elapsed wall time evenly over the problems of the batch."""
        elapsed = time.perf_counter() - self._started
        for ledger in self.ledgers:
            ledger.wall_time = elapsed / max(len(self.ledgers), 1)

    # --- expansion ----------------------------------------------------------------------------------------------

    def expand(
        self, nodes: Sequence[Node], n: int, temperature: float, merge_duplicates: bool = True
    ) -> list[list[Node]]:
        """Sample ``n`` next steps for every node in ONE engine call; return each node's new children.

        With ``merge_duplicates`` children with identical actions under one parent are merged (their priors add
        up), so a tree never holds duplicate siblings; best-of-N turns it off because duplicates are votes.
        Children are attached to their parents with priors from the step log-probs.
        """
        if not nodes:
            return []
        if any(node.done for node in nodes):
            raise ValueError("cannot expand a finished node")
        prompts = [self.adapter.prompt(self.engine, node.info, node.observation) for node in nodes]
        groups = self.engine.generate(
            prompts,
            n=n,
            max_new_tokens=self.max_new_tokens,
            temperature=temperature,
            top_p=self.top_p,
            stop=self.adapter.stop,
            seed=self.seed * 1_000_003 + self.waves,
        )
        self.waves += 1
        self._account(nodes, prompts, groups)
        return [self._children(node, group, merge_duplicates) for node, group in zip(nodes, groups)]

    def _account(
        self, nodes: Sequence[Node], prompts: Sequence[Any], groups: Sequence[Sequence[Any]]
    ) -> None:
        for problem in {node.problem for node in nodes}:
            self.ledgers[problem].engine_calls += 1
        for node, prompt, group in zip(nodes, prompts, groups):
            ledger = self.ledgers[node.problem]
            ledger.generated_tokens += sum(len(c.token_ids) for c in group)
            ledger.prompt_tokens += group[0].prompt_tokens if group else 0
            node.processed_prompt_tokens += group[0].prompt_tokens if group else 0
            full = self.count_prompt_tokens(prompt)
            ledger.full_prompt_tokens += full
            sent_before = node.parent.prompt_tokens if node.parent is not None else 0
            ledger.ideal_prompt_tokens += max(full - sent_before, 0)
            node.prompt_tokens = full

    def count_prompt_tokens(self, prompt: Any) -> int:
        """Tokens of the whole rendered prompt (what a client without prefix reuse sends every time)."""
        key = prompt if isinstance(prompt, str) else repr(prompt)
        if key not in self._token_counts:
            self._token_counts[key] = _count_tokens(self.engine, prompt)
        return self._token_counts[key]

    def _children(self, node: Node, group: Sequence[Any], merge_duplicates: bool) -> list[Node]:
        actions = [self.adapter.to_action(c) for c in group]
        priors = normalized_priors([sum(c.logprobs) for c in group], [len(c.token_ids) for c in group])
        by_action: dict[str, Node] = {}
        children: list[Node] = []
        for action, completion, prior in zip(actions, group, priors):
            if merge_duplicates and action in by_action:
                by_action[action].prior += prior
                continue
            child = self.step(node, action)
            child.logprob = float(sum(completion.logprobs))
            child.num_tokens = len(completion.token_ids)
            child.path_logprob = node.path_logprob + child.logprob
            child.path_tokens = node.path_tokens + child.num_tokens
            child.prior = prior
            by_action[action] = node.add_child(child)
            children.append(child)
        return children

    def restore(self, node: Node) -> None:
        """Put the env (base env and every wrapper's state) back to ``node``."""
        set_stack_state(self.env, node.state)

    def step(self, node: Node, action: str) -> Node:
        """Branch the env to ``node`` and take ``action``; the child is not attached to ``node``."""
        self.restore(node)
        obs, reward, terminated, truncated, info = self.env.step(action)
        depth = node.depth + 1
        return Node(
            problem=node.problem,
            state=get_stack_state(self.env),
            info=dict(info),
            observation=obs,
            parent=node,
            action=action,
            depth=depth,
            terminated=bool(terminated),
            truncated=bool(truncated) or (depth >= self.max_steps and not terminated),
            reward=float(reward),
            return_=node.return_ + float(reward),
        )

    # --- rollouts -----------------------------------------------------------------------------------------------

    def complete(self, nodes: Sequence[Node], temperature: float) -> list[Node]:
        """Extend every node one sampled step per wave (one engine call per wave) until each is finished."""
        leaves = list(nodes)
        while True:
            active = [i for i, leaf in enumerate(leaves) if not leaf.done]
            if not active:
                return leaves
            children = self.expand([leaves[i] for i in active], n=1, temperature=temperature)
            for i, kids in zip(active, children):
                leaves[i] = kids[0]


def _count_tokens(engine: Any, prompt: Any) -> int:
    counter = getattr(engine, "count_prompt_tokens", None)
    if callable(counter):
        return int(counter(prompt))
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None:
        return 0
    from agents.engines.prompting import encode_prompt, render_prompt

    return len(encode_prompt(tokenizer, render_prompt(tokenizer, prompt)))
