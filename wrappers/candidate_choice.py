"""A candidate-choice view of any ``openr/*`` env, so Stable-Baselines3's algorithms act in it unchanged.

Why: SB3 needs fixed-size observations and discrete actions, while the reasoning envs speak text. At every state a
frozen engine proposes K next steps in one batched call; the agent picks one (``Discrete(K)``) from a ``Box`` of
per-candidate features, and the picked text is the wrapped env's action, so rewards and episode ends are the env's.
Generation dominates the cost, so candidates live in a ``CandidateCache`` keyed by state (problem id + steps so
far): after one pass over a fixed problem set (``experiments/collect_candidates.py``) the view runs without an
engine, as fast as the env itself.

Candidates (``candidates=``):
- ``"sampled"``: ``k`` samples of the next step (math: up to the step delimiter; text games: the first line),
  identical texts merged (their sample count becomes ``share``);
- ``"admissible"`` (text games such as ALFWorld): the env's ``info["admissible_commands"]``, scored by the engine
  (``engine.score``) when one is given; without an engine they come straight from the env (no cache needed).

Slots are ordered by ``share`` (then mean log-prob, then text), so slot 0 is the most-sampled step; at most ``k``
are kept and the rest of the ``k`` slots are padding (all-zero rows with ``valid = 0``). Choosing a padding slot
takes slot 0 and sets ``info["invalid_choice"]`` (plus ``invalid_choice_penalty``). After the episode ends the
observation is all zeros (no candidates are proposed for a finished episode).

Features (``FEATURES``): the observation is a flat float32 vector of ``k * len(FEATURES)`` values, slot by slot
(slot ``i``'s features at ``[i * F:(i + 1) * F]``; ``feature_matrix(obs)`` gives the ``(k, F)`` view). A flat vector
is what SB3's default ``MlpPolicy`` takes without a custom feature extractor.

================ ================================================================================================
``valid``        1 for a real candidate, 0 for a padding slot
``mean_logprob`` mean per-token log-prob of the candidate under the engine, clipped to [-20, 0] (-20 when the
                 engine gave no tokens; 0 without an engine)
``length``       candidate tokens / ``max_new_tokens``, clipped to [0, 1] (0 without an engine)
``share``        the engine's mass on this candidate: share of the ``k`` samples that produced it (sampled), or
                 its sequence probability normalised over the admissible commands (admissible; 1/n without engine)
``score``        the scorer's (PRM / value model) score of the candidate as the next step, in [0, 1]; 0 without one
``has_answer``   1 if the candidate states a final answer (``\\boxed{}`` or "The answer is ...")
``agreement``    share of the samples whose result equals this candidate's; a result is the stated final answer,
                 else the last number of the step (so ``3 x 4 = 12`` and ``4 x 3 = 12`` agree); 0 without a result
``truncated``    1 if the candidate was cut by ``max_new_tokens`` (an unfinished step)
``repeat``       1 if the candidate repeats a step already taken in this episode
``goal_overlap`` share of the candidate's words (lower-cased alphanumeric runs) that occur in the problem text
``step_index``   steps taken so far / the episode's step limit, in [0, 1]
``revisit``      text games: 1 if the candidate goes to a place (``go to X``) already visited in this episode
``verb_*``       text games: the command's verb, one-hot over six groups: ``verb_go`` (go to), ``verb_take``,
                 ``verb_move`` (move / put), ``verb_open_close``, ``verb_transform`` (heat, cool, clean, slice,
                 use, toggle) and ``verb_inspect`` (examine, look, inventory); all 0 on math envs
``object_in_goal`` text games: 1 if the thing the command acts on (the word after the verb; for ``go to X`` the
                 place) is named in the goal (``take cloth 1 from drawer 2`` for "clean some cloth ...")
``target_in_goal`` text games: 1 if the command's second object (after ``to`` / ``in`` / ``on`` / ``from`` /
                 ``with``) is named in the goal (``move cloth 1 to countertop 1`` for "... put it in countertop")
``holding``      text games: 1 on every real slot when the agent carries something (ALFWorld lists ``move X to Y``
                 commands only then): the state a per-slot scorer otherwise cannot see
================ ================================================================================================

``repeat``, ``revisit`` and the verbs are what a selector needs to explore a text game (not to loop, to try the
places it has not seen, to tell taking from looking), the questions a random walk cannot ask; ``object_in_goal``,
``target_in_goal`` and ``holding`` are what it needs to finish one (take the goal's object, bring it to the goal's
receptacle), so the goal-seeking rule of ``experiments/train_sb3.py`` is one setting of the slot scorer.
"""

from __future__ import annotations

import json
import math
import os
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import RecordConstructorArgs

from rewards.answer import extract_answer, last_number, normalize_number
from rewards.prm.base import ProcessRewardModel
from rewards.protocols import StepLanguageModel

__all__ = [
    "FEATURES",
    "Candidate",
    "CandidateCache",
    "CandidateChoice",
    "CandidateProposer",
    "candidate_features",
    "candidate_result",
    "feature_matrix",
    "state_key",
    "visited_places",
]

FEATURES: tuple[str, ...] = (
    "valid",
    "mean_logprob",
    "length",
    "share",
    "score",
    "has_answer",
    "agreement",
    "truncated",
    "repeat",
    "goal_overlap",
    "step_index",
    "revisit",
    "verb_go",
    "verb_take",
    "verb_move",
    "verb_open_close",
    "verb_transform",
    "verb_inspect",
    "object_in_goal",
    "target_in_goal",
    "holding",
)
_COLUMN = {name: index for index, name in enumerate(FEATURES)}
LOGPROB_FLOOR = -20.0
CACHE_SCHEMA = "openr-gym/candidates/v1"
Mode = Literal["sampled", "admissible"]
StateKey = tuple[str, tuple[str, ...]]
_WORD = re.compile(r"[a-z0-9]+")
_VERB_GROUPS = {
    "go": "verb_go",
    "take": "verb_take",
    "move": "verb_move",
    "put": "verb_move",
    "open": "verb_open_close",
    "close": "verb_open_close",
    "heat": "verb_transform",
    "cool": "verb_transform",
    "clean": "verb_transform",
    "slice": "verb_transform",
    "use": "verb_transform",
    "toggle": "verb_transform",
    "examine": "verb_inspect",
    "look": "verb_inspect",
    "inventory": "verb_inspect",
}
_GO_TO = "go to "
_SECOND_OBJECT = ("to", "in", "on", "from", "with")
_ARTICLES = {"a", "an", "the", "some"}


def _command_objects(words: Sequence[str]) -> tuple[str | None, str | None]:
    """(the thing a text-game command acts on, its second object): ``take cloth 1 from drawer 2`` -> (cloth,
    drawer); ``go to fridge 1`` -> (fridge, None); ``look`` -> (None, None)."""
    rest = [w for w in words[1:] if w not in _ARTICLES]
    if words and words[0] == "go" and rest[:1] == ["to"]:
        rest = rest[1:]
    first = rest[0] if rest and rest[0] not in _SECOND_OBJECT else None
    second = None
    for index, word in enumerate(rest):
        if word in _SECOND_OBJECT and index > 0:
            second = next((w for w in rest[index + 1 :] if not w.isdigit() and w not in _SECOND_OBJECT), None)
            break
    return first, second


def state_key(info: Mapping[str, Any]) -> StateKey:
    """The cache key of the state an ``info`` describes: (problem id, steps so far)."""
    return str(info["problem_id"]), tuple(str(step) for step in info.get("steps", ()))


@dataclass
class Candidate:
    """One proposed next step and what the engine (and scorer) said about it."""

    text: str
    share: float = 1.0
    """Share of the samples that produced this text (sampled) or its normalised probability (admissible)."""
    mean_logprob: float = 0.0
    num_tokens: int = 0
    truncated: bool = False
    score: float | None = None
    """The scorer's score of this step (None without a scorer)."""


def candidate_result(text: str) -> str | None:
    """A candidate's result for agreement: its final answer, else the last number it writes."""
    answer = extract_answer(text)
    if answer is not None:
        answer = answer.strip()
        return normalize_number(answer) or re.sub(r"\s+", "", answer) or None
    return last_number(text)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _destination(command: str) -> str | None:
    """The place a text-game command goes to (``go to fridge 1`` -> ``fridge 1``), else None."""
    command = " ".join(command.lower().split())
    return command[len(_GO_TO) :] if command.startswith(_GO_TO) else None


def visited_places(steps: Sequence[str]) -> set[str]:
    """The places an episode's commands went to."""
    return {place for place in map(_destination, steps) if place is not None}


def candidate_features(
    candidates: Sequence[Candidate],
    *,
    k: int,
    max_new_tokens: int,
    question: str = "",
    steps: Sequence[str] = (),
    step_fraction: float = 0.0,
    text_game: bool = False,
) -> np.ndarray:
    """The ``(k, len(FEATURES))`` float32 observation for ``candidates`` (see the module docstring);
    ``text_game`` fills the command features (``revisit``, ``verb_*``)."""
    features = np.zeros((k, len(FEATURES)), dtype=np.float32)
    shown = list(candidates)[:k]
    if not shown:
        return features
    results = [candidate_result(c.text) for c in shown]
    result_share: dict[str, float] = {}
    for candidate, result in zip(shown, results):
        if result is not None:
            result_share[result] = result_share.get(result, 0.0) + candidate.share
    total_share = sum(c.share for c in shown) or 1.0
    question_words = set(_words(question))
    taken = set(steps)
    visited = visited_places(steps) if text_game else set()
    holding = text_game and any(_VERB_GROUPS.get((_words(c.text) or [""])[0]) == "verb_move" for c in shown)
    for row, (candidate, result) in enumerate(zip(shown, results)):
        words = _words(candidate.text)
        values = {
            "valid": 1.0,
            "mean_logprob": min(0.0, max(LOGPROB_FLOOR, candidate.mean_logprob)),
            "length": min(1.0, candidate.num_tokens / max(1, max_new_tokens)),
            "share": candidate.share / total_share,
            "score": min(1.0, max(0.0, candidate.score or 0.0)),
            "has_answer": float(extract_answer(candidate.text) is not None),
            "agreement": (result_share[result] / total_share) if result is not None else 0.0,
            "truncated": float(candidate.truncated),
            "repeat": float(candidate.text in taken),
            "goal_overlap": (sum(w in question_words for w in words) / len(words)) if words else 0.0,
            "step_index": min(1.0, max(0.0, step_fraction)),
            "revisit": float(_destination(candidate.text) in visited) if text_game else 0.0,
        }
        verb = _VERB_GROUPS.get(words[0]) if text_game and words else None
        if verb is not None:
            values[verb] = 1.0
        if text_game:
            first, second = _command_objects(words)
            values["object_in_goal"] = float(first in question_words)
            values["target_in_goal"] = float(second in question_words)
            values["holding"] = float(holding)
        for name, value in values.items():
            features[row, _COLUMN[name]] = value
    return features


def feature_matrix(observation: np.ndarray) -> np.ndarray:
    """The ``(k, len(FEATURES))`` view of a flat observation (or of a batch of them: ``(n, k, F)``)."""
    observation = np.asarray(observation)
    return observation.reshape(*observation.shape[:-1], -1, len(FEATURES))


def _merge(texts: Sequence[str], completions: Sequence[Any]) -> list[Candidate]:
    """Identical step texts merged: their count becomes ``share``; the best mean log-prob is kept."""
    by_text: dict[str, Candidate] = {}
    for text, completion in zip(texts, completions):
        logprobs = list(getattr(completion, "logprobs", []) or [])
        mean = sum(logprobs) / len(logprobs) if logprobs else LOGPROB_FLOOR
        found = by_text.get(text)
        if found is None:
            by_text[text] = Candidate(
                text=text,
                share=1.0,
                mean_logprob=mean,
                num_tokens=len(getattr(completion, "token_ids", []) or logprobs),
                truncated=getattr(completion, "finish_reason", "stop") == "length",
            )
        else:
            found.share += 1.0
            found.mean_logprob = max(found.mean_logprob, mean)
    count = max(1, len(texts))
    merged = list(by_text.values())
    for candidate in merged:
        candidate.share /= count
    return merged


def _ordered(candidates: Iterable[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=lambda c: (-c.share, -c.mean_logprob, c.text))


class CandidateProposer:
    """Proposes candidate next steps for many states of one env in one engine call (and one scorer call).

    Used by ``CandidateChoice`` (one state at a time) and by ``experiments/collect_candidates.py`` (a whole wave
    of states at once). The prompt is the engine's ``step_prompt`` for math envs (those with a
    ``step_delimiter``) and the observation as one user message for text games.
    """

    def __init__(
        self,
        env: gym.Env,
        engine: StepLanguageModel | None = None,
        *,
        k: int = 8,
        scorer: ProcessRewardModel | None = None,
        candidates: Mode = "sampled",
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if candidates not in ("sampled", "admissible"):
            raise ValueError(f"candidates must be 'sampled' or 'admissible', got {candidates!r}")
        base = env.unwrapped
        self.text_game = not hasattr(base, "step_delimiter")
        if candidates == "admissible" and not self.text_game:
            raise ValueError(
                "candidates='admissible' needs a text game that lists admissible commands (ALFWorld)"
            )
        self.engine = engine
        self.scorer = scorer
        self.k = int(k)
        self.mode: Mode = candidates
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_new_tokens = int(max_new_tokens)
        self.instruction = str(getattr(base, "instruction", "") or "")
        self.delimiter = "\n" if self.text_game else str(base.step_delimiter)

    @property
    def settings(self) -> dict[str, Any]:
        """What decides the candidates (stored in a cache's header, checked when a cache is reused)."""
        return {
            "k": self.k,
            "candidates": self.mode,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "scorer": self.scorer is not None,
        }

    def prompt(self, info: Mapping[str, Any], observation: str | None) -> Any:
        """The engine prompt whose continuation is the next step."""
        if not self.text_game:
            steps = [str(s) for s in info.get("steps", [])]
            return self.engine.step_prompt(str(info.get("problem", "")), steps, self.instruction)
        return [{"role": "user", "content": observation if observation is not None else str(info["problem"])}]

    def to_action(self, text: str) -> str:
        """The env action for a completion: text before the delimiter (math) or the first line (text games)."""
        if self.text_game:
            lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
            return lines[0] if lines else ""
        return text.split(self.delimiter, 1)[0].strip()

    def propose(
        self, infos: Sequence[Mapping[str, Any]], observations: Sequence[str | None], seed: int = 0
    ) -> list[list[Candidate]]:
        """Candidates for every state, ordered and cut to ``k`` (one engine call, one scorer call)."""
        if self.mode == "admissible":
            proposed = self._admissible(infos, observations)
        else:
            proposed = self._sampled(infos, observations, seed)
        if self.scorer is not None:
            self._score(infos, proposed)
        return [_ordered(group)[: self.k] for group in proposed]

    def _sampled(
        self, infos: Sequence[Mapping[str, Any]], observations: Sequence[str | None], seed: int
    ) -> list[list[Candidate]]:
        if self.engine is None:
            raise ValueError("sampled candidates need an engine (or a cache that holds this state)")
        prompts = [self.prompt(info, obs) for info, obs in zip(infos, observations)]
        groups = self.engine.generate(
            prompts,
            n=self.k,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=[self.delimiter],
            seed=seed,
        )
        return [_merge([self.to_action(c.text) for c in group], group) for group in groups]

    def _admissible(
        self, infos: Sequence[Mapping[str, Any]], observations: Sequence[str | None]
    ) -> list[list[Candidate]]:
        commands = [
            list(dict.fromkeys(str(c) for c in info.get("admissible_commands", []))) for info in infos
        ]
        if self.engine is None:
            return [[Candidate(text=c, share=1.0 / len(group)) for c in group] for group in commands]
        prompts = [self.prompt(info, obs) for info, obs in zip(infos, observations)]
        flat_prompts = [p for p, group in zip(prompts, commands) for _ in group]
        flat_logprobs = iter(self.engine.score(flat_prompts, [c for group in commands for c in group]))
        proposed = []
        for group in commands:
            logprobs = [list(next(flat_logprobs)) for _ in group]
            totals = [sum(lp) for lp in logprobs]
            top = max(totals, default=0.0)
            weights = [math.exp(t - top) for t in totals]
            norm = sum(weights) or 1.0
            proposed.append(
                [
                    Candidate(
                        text=c,
                        share=w / norm,
                        mean_logprob=sum(lp) / len(lp) if lp else LOGPROB_FLOOR,
                        num_tokens=len(lp),
                    )
                    for c, lp, w in zip(group, logprobs, weights)
                ]
            )
        return proposed

    def _score(self, infos: Sequence[Mapping[str, Any]], proposed: Sequence[list[Candidate]]) -> None:
        questions, step_lists = [], []
        for info, group in zip(infos, proposed):
            steps = [str(s) for s in info.get("steps", [])]
            for candidate in group:
                questions.append(str(info.get("problem", "")))
                step_lists.append(steps + [candidate.text])
        if not questions:
            return
        scores = iter(self.scorer.score(questions, step_lists))
        for group in proposed:
            for candidate in group:
                step_scores = next(scores)
                candidate.score = float(step_scores[-1]) if len(step_scores) else None


class CandidateCache:
    """Candidates by state (problem id + steps so far), saved as JSON lines with the settings that made them.

    File: a header line ``{"schema": "openr-gym/candidates/v1", "meta": {...}}`` then one line per state
    ``{"problem_id", "steps", "candidates": [Candidate fields]}``. ``save`` writes a temporary file and renames
    it, so a killed run never leaves a half-written cache.
    """

    def __init__(self, meta: Mapping[str, Any] | None = None) -> None:
        self.meta: dict[str, Any] = dict(meta or {})
        self._entries: dict[StateKey, list[Candidate]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: StateKey) -> list[Candidate] | None:
        return self._entries.get(key)

    def put(self, key: StateKey, candidates: Sequence[Candidate]) -> None:
        self._entries[key] = list(candidates)

    def keys(self) -> list[StateKey]:
        return list(self._entries)

    def problem_ids(self) -> list[str]:
        """Problem ids with a cached root state, in insertion order."""
        return [pid for pid, steps in self._entries if not steps]

    def save(self, path: str | os.PathLike[str]) -> None:
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"schema": CACHE_SCHEMA, "meta": self.meta}) + "\n")
            for (problem_id, steps), candidates in self._entries.items():
                record = {
                    "problem_id": problem_id,
                    "steps": list(steps),
                    "candidates": [asdict(c) for c in candidates],
                }
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CandidateCache:
        with open(path, encoding="utf-8") as f:
            header = json.loads(f.readline() or "{}")
            if header.get("schema") != CACHE_SCHEMA:
                raise ValueError(f"{path}: not a candidate cache (schema {header.get('schema')!r})")
            cache = cls(header.get("meta"))
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    key = (str(record["problem_id"]), tuple(record["steps"]))
                    cache.put(key, [Candidate(**c) for c in record["candidates"]])
        return cache

    @classmethod
    def merged(cls, paths: Sequence[str | os.PathLike[str]]) -> CandidateCache:
        """One cache from several saved ones (collected in parts, e.g. to keep each job short).

        The parts must share the candidate settings (a selector must see one kind of candidate); the first part's
        meta is kept, with every part's ``summary`` under ``summaries``."""
        if not paths:
            raise ValueError("no cache to merge")
        parts = [cls.load(path) for path in paths]
        merged = cls(parts[0].meta)
        keys = ("k", "candidates", "temperature", "top_p", "max_new_tokens", "scorer")
        for path, part in zip(paths, parts):
            differing = {key for key in keys if part.meta.get(key) != merged.meta.get(key)}
            if differing:
                raise ValueError(f"{path}: other candidate settings ({sorted(differing)}) than {paths[0]}")
            for key in part.keys():
                if key in merged:
                    raise ValueError(f"{path}: state {key!r} is also in an earlier part")
                merged.put(key, part.get(key) or [])
        merged.meta["summaries"] = [part.meta.get("summary") for part in parts]
        merged.meta["parts"] = [os.fspath(path) for path in paths]
        return merged


class CandidateChoice(gym.Wrapper[np.ndarray, np.int64, str, str], RecordConstructorArgs):
    """Pick one of K engine-proposed next steps: ``Discrete(k)`` actions over a ``Box`` of candidate features.

    ## Action Space
    ``Discrete(k)``: the slot of the chosen candidate (a padding slot takes slot 0, see the module docstring).

    ## Observation Space
    ``Box(shape=(k * len(FEATURES),), dtype=float32)``: ``FEATURES`` of each candidate slot, slot by slot.

    ## Rewards and Episode End
    Those of the wrapped env (plus ``invalid_choice_penalty`` when a padding slot is chosen).

    ## Information
    The wrapped env's info plus ``candidates`` (the texts in slot order), ``choice`` (the text taken),
    ``invalid_choice``; at the end ``is_success`` (the env's, as a bool).

    ## Arguments
    ``engine`` (any ``agents.engines`` engine; None to run from ``cache`` alone, or, for admissible commands, from
    the env alone), ``k``, ``scorer`` (a PRM / value model: ``score(questions, step_lists)``), ``cache`` (a
    ``CandidateCache`` or the path of a saved one; new states are added to it), ``candidates`` ("sampled" /
    "admissible"), ``temperature``, ``top_p``, ``max_new_tokens``, ``problem_ids`` (reset draws from these; by
    default the cache's problems when there is no engine, else the env's own draw), ``seed`` (generation seeds
    are derived from it and the state), ``invalid_choice_penalty``.
    """

    def __init__(
        self,
        env: gym.Env[str, str],
        engine: StepLanguageModel | None = None,
        *,
        k: int = 8,
        scorer: ProcessRewardModel | None = None,
        cache: CandidateCache | str | os.PathLike[str] | None = None,
        candidates: Mode = "sampled",
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        problem_ids: Sequence[str] | None = None,
        seed: int = 0,
        invalid_choice_penalty: float = 0.0,
    ) -> None:
        RecordConstructorArgs.__init__(
            self,
            _disable_deepcopy=True,
            engine=engine,
            k=k,
            scorer=scorer,
            cache=cache,
            candidates=candidates,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            problem_ids=problem_ids,
            seed=seed,
            invalid_choice_penalty=invalid_choice_penalty,
        )
        gym.Wrapper.__init__(self, env)
        self.proposer = CandidateProposer(
            env,
            engine,
            k=k,
            scorer=scorer,
            candidates=candidates,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
        )
        if isinstance(cache, (str, os.PathLike)):
            cache = CandidateCache.load(cache)
        needs_source = candidates == "sampled" or scorer is not None
        if engine is None and cache is None and needs_source:
            raise ValueError("CandidateChoice needs an engine or a candidate cache")
        self.cache = cache if cache is not None else CandidateCache(self.proposer.settings)
        self._check_cache_settings()
        if problem_ids is None and engine is None and needs_source:
            problem_ids = self.cache.problem_ids()
        self.problem_ids = list(problem_ids) if problem_ids is not None else None
        if self.problem_ids is not None and not self.problem_ids:
            raise ValueError("problem_ids is empty (an empty cache?)")
        self.k = int(k)
        self.seed = int(seed)
        self.invalid_choice_penalty = float(invalid_choice_penalty)
        self.action_space = spaces.Discrete(self.k)
        low = np.zeros((self.k, len(FEATURES)), dtype=np.float32)
        low[:, _COLUMN["mean_logprob"]] = LOGPROB_FLOOR
        self.observation_space = spaces.Box(
            low=low.ravel(), high=np.ones(low.size, dtype=np.float32), dtype=np.float32
        )
        self.step_limit = self._step_limit(env)
        self._rng: np.random.Generator | None = None
        self._active = False
        self._candidates: list[Candidate] = []
        self._static: dict[StateKey, np.ndarray] = {}

    @classmethod
    def from_cache(
        cls, env: gym.Env[str, str], cache: CandidateCache | str | os.PathLike[str], **kwargs: Any
    ) -> CandidateChoice:
        """The view over a saved cache alone (no engine), with the candidate settings the cache was made with."""
        if not isinstance(cache, CandidateCache):
            cache = CandidateCache.load(cache)
        settings = {
            key: cache.meta[key] for key in ("k", "candidates", "temperature", "top_p", "max_new_tokens")
        }
        return cls(env, None, cache=cache, **{**settings, **kwargs})

    @property
    def candidates(self) -> list[Candidate]:
        """The current state's candidates in slot order (empty after the episode ended)."""
        return list(self._candidates[: self.k])

    @staticmethod
    def _step_limit(env: gym.Env) -> int:
        limits = [getattr(env.unwrapped, "max_steps", None)]
        spec = getattr(env, "spec", None)
        limits.append(getattr(spec, "max_episode_steps", None))
        limits = [int(limit) for limit in limits if limit]
        return min(limits) if limits else 50

    def _check_cache_settings(self) -> None:
        compared = [key for key in self.proposer.settings if key != "scorer" and key in self.cache.meta]
        stored = {key: self.cache.meta[key] for key in compared}
        differing = {key: value for key, value in stored.items() if value != self.proposer.settings[key]}
        if differing:
            raise ValueError(
                f"the candidate cache was made with {differing}, the view asks for "
                f"{ {key: self.proposer.settings[key] for key in differing} }"
            )

    # -- candidates --------------------------------------------------------------------------------------------
    def _generation_seed(self, key: StateKey) -> int:
        return (self.seed * 1_000_003 + zlib.crc32(repr(key).encode("utf-8"))) % (2**31 - 1)

    def candidates_for(self, info: Mapping[str, Any], observation: str | None) -> list[Candidate]:
        """The state's candidates: from the cache, else proposed now (and cached)."""
        needs_cache = self.proposer.mode == "sampled" or self.proposer.engine is not None
        if not needs_cache and self.proposer.scorer is None:
            return self.proposer.propose([info], [observation])[0]
        key = state_key(info)
        found = self.cache.get(key)
        if found is None:
            if self.proposer.engine is None and self.proposer.mode == "sampled":
                raise KeyError(
                    f"state {key!r} is not in the candidate cache and there is no engine to propose candidates; "
                    "collect the cache for these problems (experiments/collect_candidates.py) or pass an engine"
                )
            found = self.proposer.propose([info], [observation], seed=self._generation_seed(key))[0]
            self.cache.put(key, found)
        return found

    def _observe(self, observation: str, info: dict[str, Any]) -> np.ndarray:
        self._candidates = self.candidates_for(info, observation)
        key = state_key(info)
        static = self._static.get(key)
        if static is None:
            static = candidate_features(
                self._candidates,
                k=self.k,
                max_new_tokens=self.proposer.max_new_tokens,
                question=str(info.get("problem", "")),
                text_game=self.proposer.text_game,
            )
            if len(self._static) > 100_000:
                self._static.clear()
            self._static[key] = static
        features = static.copy()
        valid = features[:, _COLUMN["valid"]] > 0
        taken = set(key[1])
        visited = visited_places(key[1]) if self.proposer.text_game else set()
        for row, candidate in enumerate(self._candidates[: self.k]):
            features[row, _COLUMN["repeat"]] = float(candidate.text in taken)
            if visited:
                features[row, _COLUMN["revisit"]] = float(_destination(candidate.text) in visited)
        step_fraction = min(1.0, float(info.get("step_index", len(key[1]))) / self.step_limit)
        features[valid, _COLUMN["step_index"]] = step_fraction
        info["candidates"] = [c.text for c in self._candidates[: self.k]]
        return features.ravel()

    # -- Gymnasium API -----------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None or self._rng is None:
            self._rng = np.random.default_rng(seed)
        options = dict(options or {})
        if options.get("problem_id") is None and self.problem_ids is not None:
            options["problem_id"] = self.problem_ids[int(self._rng.integers(len(self.problem_ids)))]
        observation, info = self.env.reset(seed=seed, options=options)
        info = dict(info)
        self._active = True
        return self._observe(observation, info), info

    def step(self, action: Any):
        if not self._active:
            raise gym.error.ResetNeeded("call reset() before step() (and after the episode ended)")
        slot = int(action)
        if not 0 <= slot < self.k:
            raise ValueError(f"action must be a slot in [0, {self.k}), got {action!r}")
        invalid = slot >= min(self.k, len(self._candidates))
        # No candidate at all (a text game listing no command) sends an empty step, which the env marks invalid.
        chosen = self._candidates[0 if invalid else slot].text if self._candidates else ""
        observation, reward, terminated, truncated, info = self.env.step(chosen)
        info = dict(info)
        info["choice"] = chosen
        info["invalid_choice"] = invalid
        reward = float(reward) - (self.invalid_choice_penalty if invalid else 0.0)
        if terminated or truncated:
            info["is_success"] = bool(info.get("is_success", False))
            info["candidates"] = []
            self._candidates, self._active = [], False
            features = np.zeros(self.observation_space.shape, dtype=np.float32)
        else:
            features = self._observe(observation, info)
        return features, reward, terminated, truncated, info
