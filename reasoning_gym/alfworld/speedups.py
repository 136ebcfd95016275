"""Memoized TextWorld text generation: the same game traces as stock TextWorld, several times faster.

Why: stock ``textworld.envs.pddl`` re-parses every grammar string (command templates, feedback rules, rule conditions)
with TatSu at every step and deep-copies the derivation context for every symbol; profiling shows that is ~90% of an
ALFWorld step. The strings come from a fixed game grammar, so each parse result can be computed once and cloned.

The patches are process-wide (TextWorld calls these functions through module globals). They are reversible so that
benchmarks and tests can run stock TextWorld in the same process: :func:`stock_textworld` restores the originals
for the duration of a ``with`` block.

What is patched (all outputs identical to stock, checked by ``tests/test_alfworld_speedups.py``):

- ``textworld.envs.pddl.textgen._parse_and_convert``: TatSu parse of a grammar right-hand side -> cached symbol tree,
  cloned on each call (callers mutate the returned symbols' ``context``).
- ``textworld.logic.Rule.parse_conjunctive_query``: TatSu parse of a rule condition -> cached ``Rule`` (read-only).
- ``textworld.envs.pddl.textgen.copy_context``: deep copy of ``variables`` / ``mapping`` -> shallow dict copies
  (their values, ``EntityInfo`` / ``Variable`` objects, are never mutated during a derivation).
- ``textworld.envs.pddl.logic._parse_and_convert``: parse of a whole game grammar (once per distinct grammar text);
  the result's rules and actions are only read by TextWorld.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["enable_fast_textworld", "disable_fast_textworld", "fast_textworld_enabled", "stock_textworld"]

_LOCK = threading.RLock()
_ORIGINALS: dict[str, Any] = {}
_SYMBOL_CACHE: dict[tuple[str, str], list] = {}
_QUERY_CACHE: dict[str, Any] = {}
_LOGIC_CACHE: dict[tuple[str, str], Any] = {}
_MAX_CACHE = 50_000


def _modules():
    import textworld.envs.pddl.logic as pddl_logic
    import textworld.envs.pddl.textgen as textgen
    import textworld.logic as tw_logic

    return textgen, tw_logic, pddl_logic


def _clone_symbol(symbol: Any) -> Any:
    """A fresh copy of a parsed symbol tree (without context), much cheaper than ``deepcopy``."""
    textgen, _, _ = _modules()
    kind = type(symbol)
    if kind is textgen.TerminalSymbol or kind is textgen.NonterminalSymbol:
        return kind(symbol.symbol)
    if kind is textgen.EvalSymbol:
        return textgen.EvalSymbol(symbol.expression)
    if kind is textgen.ListSymbol:
        return textgen.ListSymbol(_clone_symbol(symbol.symbol))
    if kind is textgen.ConditionalSymbol:
        return textgen.ConditionalSymbol(_clone_symbol(symbol.expression), symbol.given)
    return copy.deepcopy(symbol)


def _cached_symbols_parse(text: str, rule_name: str = "start", **kwargs: Any) -> Any:
    if kwargs.get("trace"):
        return _ORIGINALS["textgen_parse"](text, rule_name=rule_name, **kwargs)
    key = (text, rule_name)
    parsed = _SYMBOL_CACHE.get(key)
    if parsed is None:
        parsed = _ORIGINALS["textgen_parse"](text, rule_name=rule_name)
        if len(_SYMBOL_CACHE) < _MAX_CACHE:
            _SYMBOL_CACHE[key] = parsed
        else:  # never grow without bound; a miss is only slower
            return parsed
    if isinstance(parsed, list):
        return [_clone_symbol(s) for s in parsed]
    return _clone_symbol(parsed)


def _cached_conjunctive_query(cls: Any, expr: str) -> Any:
    rule = _QUERY_CACHE.get(expr)
    if rule is None:
        rule = _ORIGINALS["parse_conjunctive_query"].__func__(cls, expr)
        if len(_QUERY_CACHE) < _MAX_CACHE:
            _QUERY_CACHE[expr] = rule
    return rule


def _shallow_copy_context(context: dict) -> dict:
    return {
        "state": context["state"],
        "facts": context["facts"],
        "variables": dict(context["variables"]),
        "mapping": dict(context["mapping"]),
        "entity_infos": context["entity_infos"],
    }


def _cached_logic_parse(text: str, rule_name: str = "start", **kwargs: Any) -> Any:
    key = (text, rule_name)
    result = _LOGIC_CACHE.get(key)
    if result is None:
        result = _ORIGINALS["logic_parse"](text, rule_name=rule_name, **kwargs)
        if len(_LOGIC_CACHE) >= 256:  # whole-grammar entries are big: keep the most recent few hundred
            _LOGIC_CACHE.pop(next(iter(_LOGIC_CACHE)))
        _LOGIC_CACHE[key] = result
    actions, grammar = result
    fresh = type(grammar)()
    fresh.update(grammar)  # GameLogic extends this grammar's rule lists: hand it its own lists
    return dict(actions), fresh


def fast_textworld_enabled() -> bool:
    """Whether the memoizing patches are currently installed."""
    return bool(_ORIGINALS)


def enable_fast_textworld() -> None:
    """Install the memoizing patches (idempotent)."""
    with _LOCK:
        if _ORIGINALS:
            return
        textgen, tw_logic, pddl_logic = _modules()
        _ORIGINALS.update(
            textgen_parse=textgen._parse_and_convert,
            copy_context=textgen.copy_context,
            parse_conjunctive_query=tw_logic.Rule.__dict__["parse_conjunctive_query"],
            logic_parse=pddl_logic._parse_and_convert,
        )
        textgen._parse_and_convert = _cached_symbols_parse
        textgen.copy_context = _shallow_copy_context
        tw_logic.Rule.parse_conjunctive_query = classmethod(_cached_conjunctive_query)
        pddl_logic._parse_and_convert = _cached_logic_parse


def disable_fast_textworld() -> None:
    """Restore stock TextWorld (idempotent)."""
    with _LOCK:
        if not _ORIGINALS:
            return
        textgen, tw_logic, pddl_logic = _modules()
        textgen._parse_and_convert = _ORIGINALS["textgen_parse"]
        textgen.copy_context = _ORIGINALS["copy_context"]
        tw_logic.Rule.parse_conjunctive_query = _ORIGINALS["parse_conjunctive_query"]
        pddl_logic._parse_and_convert = _ORIGINALS["logic_parse"]
        _ORIGINALS.clear()


@contextlib.contextmanager
def stock_textworld() -> Iterator[None]:
    """Run a block on unpatched TextWorld, then put back whatever was installed before."""
    was_enabled = fast_textworld_enabled()
    disable_fast_textworld()
    try:
        yield
    finally:
        if was_enabled:
            enable_fast_textworld()
