"""The shared skeleton of the search agents: batching problems, choosing the answer, building the result dict.

A search agent only implements ``_search(expander, roots) -> [(chosen_leaf, candidate_leaves), ...]``; this base
turns it into ``solve`` / ``solve_many`` (batched across problems) and ``predict`` (search from the env's current
state, return the first step of the chosen trajectory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents.base import Agent, AgentConfig, episode_result, outcome_of
from agents.search.expansion import Expander, Ledger
from agents.search.selection import select
from agents.search.tree import Node
from agents.search.values import NodeValue, make_value

__all__ = ["SearchAgent", "SearchConfig", "choose_index"]


@dataclass
class SearchConfig(AgentConfig):
    """Fields shared by the search agents."""

    selection: str = "auto"
    """Answer-selection rule over finished candidates (``agents.search.selection.SELECTION_RULES``);
    ``"auto"`` is ``prm_last_vote`` with a PRM and ``majority_vote`` without."""
    batch_problems: int = 8
    """Problems searched together (their nodes share every engine / PRM call)."""


class SearchAgent(Agent):
    """Base of Greedy, BestOfN, BeamSearch and MCTS; ``prm`` (optional) guides and selects."""

    config_class = SearchConfig
    config: SearchConfig

    def __init__(
        self,
        engine: Any,
        env: Any = None,
        config: SearchConfig | None = None,
        prm: Any = None,
        **overrides: Any,
    ) -> None:
        super().__init__(engine, env, config, **overrides)
        self.prm = prm
        self.value: NodeValue = make_value(prm)
        if self.config.batch_problems < 1:
            raise ValueError("batch_problems must be >= 1")
        select_rule = self.selection_rule
        if select_rule not in ("most_visited",):
            select(select_rule, ["0"], [[0.0]])  # fail fast on an unknown rule name

    @property
    def selection_rule(self) -> str:
        if self.config.selection != "auto":
            return self.config.selection
        return "prm_last_vote" if self.prm is not None else "majority_vote"

    # --- to implement -------------------------------------------------------------------------------------------

    def _search(self, expander: Expander, roots: list[Node]) -> list[tuple[Node, list[Node]]]:
        """For each root: the chosen finished leaf and every candidate leaf it was chosen from."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------------------------

    def expander(self, env: Any) -> Expander:
        return Expander(
            self.engine,
            env,
            self.adapter(env),
            max_steps=self.max_steps(env),
            max_new_tokens=self.config.max_new_tokens,
            top_p=self.config.top_p,
            seed=self.config.seed,
        )

    def choose(self, candidates: Sequence[Node]) -> Node:
        """Apply the selection rule to the candidates that terminated (stated an answer, won the game), or to all
        of them when none did (truncated ones only)."""
        if not candidates:
            raise ValueError("no candidates to choose from")
        index = choose_index(
            self.selection_rule,
            [c.answer for c in candidates],
            [c.step_scores for c in candidates],
            [c.terminated for c in candidates],
        )
        return candidates[index]

    def solve(
        self, env: Any = None, options: Mapping[str, Any] | None = None, seed: int | None = None
    ) -> dict:
        return self.solve_many(env, [options], seeds=[seed])[0]

    def solve_many(
        self,
        env: Any = None,
        problems: Sequence[Mapping[str, Any] | None] = (),
        seeds: Sequence[int | None] | None = None,
    ) -> list[dict]:
        """Solve ``problems`` (reset ``options`` dicts; or ``seeds`` to let the env draw them),
        ``batch_problems`` at a time; one result dict each."""
        env = self._env(env)
        if seeds is not None and len(seeds) != len(problems):
            raise ValueError("give one seed per problem")
        results: list[dict] = []
        size = self.config.batch_problems
        for start in range(0, len(problems), size):
            expander = self.expander(env)
            batch_seeds = list(seeds[start : start + size]) if seeds is not None else None
            roots = expander.reset(list(problems[start : start + size]), batch_seeds)
            outcomes = self._search(expander, roots)
            expander.finish()
            results.extend(
                self._result(chosen, candidates, ledger)
                for (chosen, candidates), ledger in zip(outcomes, expander.ledgers)
            )
        return results

    def predict(self, obs: str, info: Mapping[str, Any] | None = None) -> str:
        """Search from ``self.env``'s current state; the first step of the chosen trajectory (state restored)."""
        env = self._env(None)
        if info is None:
            raise ValueError(f"{type(self).__name__}.predict needs the env's info dict (problem and steps)")
        expander = self.expander(env)
        root = expander.root_from_current(obs, info)
        try:
            chosen, _ = self._search(expander, [root])[0]
        finally:
            expander.restore(root)
        path = chosen.path()
        return path[1].action if len(path) > 1 else ""

    def _result(self, chosen: Node, candidates: Sequence[Node], ledger: Ledger) -> dict:
        return episode_result(
            steps=chosen.steps,
            answer=chosen.answer,
            correct=outcome_of(chosen.info),
            reward=chosen.return_,
            generated_tokens=ledger.generated_tokens,
            prompt_tokens=ledger.prompt_tokens,
            engine_calls=ledger.engine_calls,
            full_prompt_tokens=ledger.full_prompt_tokens,
            ideal_prompt_tokens=ledger.ideal_prompt_tokens,
            prm_calls=ledger.prm_calls,
            prm_tokens=ledger.prm_tokens,
            wall_time=ledger.wall_time,
            problem_id=chosen.info.get("problem_id"),
            num_candidates=len(candidates),
            pass_at_k=any(outcome_of(c.info) for c in candidates),
            candidate_answers=[c.answer for c in candidates],
            candidate_scores=[list(c.step_scores) for c in candidates],
            candidate_correct=[outcome_of(c.info) for c in candidates],
            candidate_terminated=[c.terminated for c in candidates],
            # each candidate's own cost (its path below the root), to price a subset of independent samples
            candidate_generated_tokens=[c.path_tokens for c in candidates],
            candidate_prompt_tokens=[
                sum(n.processed_prompt_tokens for n in c.path()[1:]) for c in candidates
            ],
            candidate_prm_tokens=[c.prm_tokens for c in candidates],
            candidate_keys=[_candidate_key(c) for c in candidates],
        )


def choose_index(
    rule: str,
    answers: Sequence[str | None],
    scores: Sequence[Sequence[float]],
    terminated: Sequence[bool],
) -> int:
    """Index of the candidate ``rule`` picks among those that terminated (stated an answer, won the game), or
    among all when none did; what ``SearchAgent.choose`` applies, and what re-applying another rule to a
    result's recorded candidates (``candidate_answers`` / ``_scores`` / ``_terminated``) needs."""
    pool = [i for i, done in enumerate(terminated) if done] or list(range(len(answers)))
    picked = select(rule, [answers[i] for i in pool], [scores[i] for i in pool])
    return pool[picked]


def _candidate_key(node: Node) -> str:
    """A short identity of a candidate's steps (identical candidates share one PRM reading)."""
    import hashlib

    return hashlib.sha1("\x00".join(node.steps).encode()).hexdigest()[:12]
