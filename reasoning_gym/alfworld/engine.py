"""The ALFWorld game engine: TextWorld's ``PddlEnv`` with the PDDL->SAS translation cached, plus safe planner calls.

Why: a stock ``PddlEnv.load`` + ``reset`` translates the game's PDDL to SAS four times (two per ``PddlState``), which
is ~95% of reset time. The translation is a pure function of (domain, problem), so it is computed once per game and
kept in memory and on disk; the game itself (state, feedback text, admissible commands) is stock TextWorld, and
:mod:`reasoning_gym.alfworld.speedups` memoizes its text generation. Traces equal stock TextWorld's (tested).

The fast-downward translator overwrites ``sys.argv``, prints to stdout and may raise ``SystemExit`` on a malformed
problem: :func:`translate` restores ``sys.argv``, swallows the output and turns any failure into
:class:`GameLoadError`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import sys
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "GameLoadError",
    "Translation",
    "translate",
    "make_textworld_env",
    "FastPddlEnv",
    "stock_pddl_env",
    "planner_plan",
    "base_env",
    "last_operator_id",
    "replay_operators",
]

_TRANSLATOR_ARGV = ["translate.py", "domain", "task"]


class GameLoadError(RuntimeError):
    """A game file that cannot be loaded, translated or planned (the message says why)."""


class Translation(NamedTuple):
    """The fast-downward view of one game: the parsed PDDL task and its SAS encodings (plain and optimized)."""

    task: Any
    sas: str
    sas_replan: str


@contextlib.contextmanager
def _quiet_translator() -> Iterator[None]:
    """Keep ``sys.argv`` and stdout as they were around fast-downward's translator."""
    argv, stdout = list(sys.argv), sys.stdout
    sys.argv = list(_TRANSLATOR_ARGV)
    sys.stdout = io.StringIO()
    try:
        yield
    finally:
        sys.argv, sys.stdout = argv, stdout


def _parse_task(domain: str, problem: str) -> Any:
    """The normalized PDDL task (cheap: ~10 ms; the SAS translation is the slow part)."""
    with _quiet_translator():
        from fast_downward.translate import normalize, options  # noqa: F401  (options parses argv on import)
        from fast_downward.translate.pddl_parser import lisp_parser, parsing_functions

        task = parsing_functions.parse_task(
            lisp_parser.parse_nested_list(domain.split("\n")),
            lisp_parser.parse_nested_list(problem.split("\n")),
        )
        normalize.normalize(task)
    return task


def _translate_uncached(domain: str, problem: str) -> Translation:
    import fast_downward

    with _quiet_translator():
        task, sas = fast_downward.pddl2sas(domain, problem)
        _, sas_replan = fast_downward.pddl2sas(domain, problem, optimize=True)
    return Translation(task, sas, sas_replan)


class _TranslationCache:
    """Translations by content hash: a small in-memory LRU in front of an optional on-disk store of SAS text."""

    def __init__(self, max_in_memory: int = 16) -> None:
        self.max_in_memory = max_in_memory
        self._memory: OrderedDict[str, Translation] = OrderedDict()

    def get(self, domain: str, problem: str, disk_dir: Path | None) -> Translation:
        key = hashlib.sha1(f"{domain}\0{problem}".encode()).hexdigest()
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        translation = self._from_disk(key, domain, problem, disk_dir) if disk_dir else None
        if translation is None:
            translation = _translate_uncached(domain, problem)
            if disk_dir:
                self._to_disk(key, translation, disk_dir)
        self._memory[key] = translation
        while len(self._memory) > self.max_in_memory:
            self._memory.popitem(last=False)
        return translation

    @staticmethod
    def _from_disk(key: str, domain: str, problem: str, disk_dir: Path) -> Translation | None:
        path = disk_dir / f"{key}.json.gz"
        try:
            data = json.loads(gzip.decompress(path.read_bytes()))
            return Translation(_parse_task(domain, problem), data["sas"], data["sas_replan"])
        except (OSError, ValueError, KeyError, EOFError):
            return None

    @staticmethod
    def _to_disk(key: str, translation: Translation, disk_dir: Path) -> None:
        try:
            disk_dir.mkdir(parents=True, exist_ok=True)
            tmp = disk_dir / f".{key}.{os.getpid()}.tmp"
            payload = json.dumps({"sas": translation.sas, "sas_replan": translation.sas_replan}).encode()
            tmp.write_bytes(gzip.compress(payload, compresslevel=6))
            tmp.replace(disk_dir / f"{key}.json.gz")
        except OSError:  # a read-only cache only costs speed
            pass


_CACHE = _TranslationCache()


def translate(domain: str, problem: str, disk_dir: str | os.PathLike | None = None) -> Translation:
    """The (cached) fast-downward translation of a game; :class:`GameLoadError` on any translator failure."""
    try:
        return _CACHE.get(domain, problem, Path(disk_dir) if disk_dir else None)
    except BaseException as exc:  # the translator calls sys.exit() on malformed input
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise GameLoadError(f"PDDL translation failed: {type(exc).__name__}: {exc}") from None


def _fast_pddl_state_class() -> type:
    """``textworld``'s ``PddlState`` built from a cached :class:`Translation` (same body as stock ``__init__``)."""
    from collections import Counter, defaultdict

    import fast_downward
    import textworld
    from textworld.envs.pddl.logic import Atom, PddlState
    from textworld.logic import Proposition, Variable

    class CachedPddlState(PddlState):
        def __init__(
            self, downward_lib: Any, pddl_problem: str, logic: Any, translation: Translation
        ) -> None:
            self._facts = defaultdict(set)
            self._vars_by_name = {}
            self._vars_by_type = defaultdict(set)
            self._var_counts = Counter()
            self._logic = logic
            self.downward_lib = downward_lib
            self.pddl_problem = pddl_problem
            self.task, self.sas, self.sas_replan = translation
            self._actions = {a.name: a for a in self.task.actions}
            for type_ in self.task.types:
                try:
                    self._logic.types.add(textworld.logic.Type(type_.name, type_.supertype_names))
                except ValueError:
                    pass
            self.downward_lib.load_sas(self.sas.encode("utf-8"))
            self.downward_lib.load_sas_replan(self.sas_replan.encode("utf-8"))
            self.name2type = {o.name: o.type_name for o in self.task.objects}

            def _atom2proposition(atom: Any) -> Any:
                if isinstance(atom, fast_downward.translate.pddl.conditions.Atom):
                    if atom.predicate == "=":
                        return None
                    return Proposition(
                        atom.predicate, [Variable(arg, self.name2type[arg]) for arg in atom.args]
                    )
                if isinstance(atom, fast_downward.translate.pddl.f_expression.Assign):
                    if atom.fluent.symbol == "total-cost":
                        return None
                    name = f"{atom.expression.value}"
                    if str.isdigit(name):
                        return None
                    return Proposition(name, [Variable(arg, self.name2type[arg]) for arg in atom.fluent.args])
                return None

            self.add_facts(list(filter(None, (_atom2proposition(atom) for atom in self.task.init))))
            atoms = (Atom * self.downward_lib.get_state_size())()
            self.downward_lib.get_state(atoms)
            facts = [atom.get_fact(self.name2type) for atom in atoms]
            self.add_facts([fact for fact in facts if not fact.is_negation])

    return CachedPddlState


def _fast_pddl_env_class() -> type:
    from textworld.core import GameState
    from textworld.envs.pddl import PddlEnv
    from textworld.envs.pddl import logic as pddl_logic

    state_class = _fast_pddl_state_class()

    class _FastPddlEnv(PddlEnv):
        """``PddlEnv`` whose ``load``/``reset`` build the game state from a cached translation."""

        translation_dir: Path | None = None

        def _new_state(self) -> Any:
            data = self._game_data
            translation = translate(data["pddl_domain"], data["pddl_problem"], self.translation_dir)
            return state_class(self.downward_lib, data["pddl_problem"], self._logic, translation)

        def load(self, filename_or_data: str | Mapping) -> None:
            if isinstance(filename_or_data, Mapping):
                data, self._game_file = filename_or_data, None
            else:
                with open(filename_or_data) as f:
                    data = json.load(f)
                self._game_file = filename_or_data
            self._game_data = data
            self.walkthrough = data.get("walkthrough", None)
            self._logic = pddl_logic.GameLogic(domain=data["pddl_domain"], grammar=data["grammar"])
            self._pddl_state = self._new_state()
            self._entity_infos = self._get_entity_infos()

        def reset(self) -> Any:
            self._pddl_state = self._new_state()
            self.prev_state = None
            self.state = GameState()
            self._last_action = None
            self._moves = 0
            context = {
                "state": self._pddl_state,
                "facts": list(self._pddl_state.facts),
                "variables": {},
                "mapping": {},
                "entity_infos": self._entity_infos,
            }
            self.state.feedback = self._logic.grammar.derive("#intro#", context)
            self.state.raw = self.state.feedback
            self._gather_infos()
            if "walkthrough" in self.request_infos.extras:
                self.state["extra.walkthrough"] = self.walkthrough or self._pddl_state.replan(
                    self._entity_infos
                )
            return self.state

    return _FastPddlEnv


_FAST_ENV_CLASS: type | None = None


def FastPddlEnv(infos: Any, translation_dir: str | os.PathLike | None = None) -> Any:  # noqa: N802 (a factory)
    """A TextWorld ``PddlEnv`` that reuses cached translations (built lazily: textworld imports are heavy)."""
    global _FAST_ENV_CLASS
    if _FAST_ENV_CLASS is None:
        _FAST_ENV_CLASS = _fast_pddl_env_class()
    env = _FAST_ENV_CLASS(infos)
    env.translation_dir = Path(translation_dir) if translation_dir else None
    return env


def stock_pddl_env(infos: Any) -> Any:
    """Stock TextWorld ``PddlEnv`` (the reference the benchmark and the trace tests compare against)."""
    from textworld.envs.pddl import PddlEnv

    return PddlEnv(infos)


def make_textworld_env(
    *, fast: bool = True, facts: bool = False, policy_commands: bool = False, translation_dir: Any = None
) -> Any:
    """A loadable ALFWorld TextWorld env: (Fast)PddlEnv + ALFWorld's name demangler, as ``alfworld`` plays games."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    from reasoning_gym.alfworld.speedups import enable_fast_textworld

    infos = textworld.EnvInfos(
        won=True, admissible_commands=True, facts=facts, policy_commands=policy_commands, extras=["gamefile"]
    )
    if fast:
        enable_fast_textworld()
        base = FastPddlEnv(infos, translation_dir)
    else:
        base = stock_pddl_env(infos)
    return AlfredInfos(AlfredDemangler(base))


def planner_plan(textworld_env: Any) -> list[str]:
    """The fast-downward plan (game commands) from the current state of a loaded env; [] if none exists."""
    base = textworld_env
    while hasattr(base, "_wrapped_env"):
        base = base._wrapped_env
    try:
        with _quiet_translator():
            return list(base._pddl_state.replan(base._entity_infos))
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise GameLoadError(f"planner failed: {type(exc).__name__}: {exc}") from None


def base_env(textworld_env: Any) -> Any:
    """The innermost TextWorld env under ALFWorld's wrappers."""
    while hasattr(textworld_env, "_wrapped_env"):
        textworld_env = textworld_env._wrapped_env
    return textworld_env


def last_operator_id(textworld_env: Any) -> int | None:
    """The fast-downward operator id of the last successful command (None if nothing happened)."""
    action = base_env(textworld_env)._last_action
    return None if action is None else int(action.id)


def replay_operators(textworld_env: Any, operator_ids: list[int], feedback: str) -> Any:
    """Apply operators to a freshly reset game without generating text for the intermediate states.

    Why: restoring a planner's branch by replaying commands through ``step`` derives every intermediate state's
    admissible commands; applying the operators directly and deriving only the final state is ~10x cheaper and
    leaves the game exactly where the commands would (same facts, same admissible commands). Returns the final
    TextWorld game state; raises ``ValueError`` if an operator is not applicable (the snapshot is for another game).
    """
    from fast_downward import Operator
    from textworld.core import GameState
    from textworld.envs.pddl.logic import Atom

    env = base_env(textworld_env)
    state = env._pddl_state
    lib = env.downward_lib
    for op_id in operator_ids:
        count = lib.get_applicable_operators_count()
        operators = (Operator * count)()
        lib.get_applicable_operators(operators)
        operator = next((op for op in operators if op.id == op_id), None)
        if operator is None:
            raise ValueError(f"operator {op_id} is not applicable here")
        effects = (Atom * operator.nb_effect_atoms)()
        lib.apply_operator(operator.id, effects)
        for effect in effects:
            fact = effect.get_fact(state.name2type)
            state.remove_fact(fact.negate())
            state.add_fact(fact)
    env.prev_state = env.state
    env.state = GameState()
    env.state.feedback = env.state.raw = feedback
    env._last_action = None
    env._moves = len(operator_ids)
    env._gather_infos()
    env.state["score"] = 1 if env.state["won"] else 0
    env.state["done"] = env.state["won"] or env.state["lost"]
    return env.state
