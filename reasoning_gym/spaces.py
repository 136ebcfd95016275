"""``StepText``: gymnasium's ``Text`` space, made to work with ``AsyncVectorEnv``'s shared memory.

Why: gymnasium decodes a ``Text`` shared-memory buffer into a tuple of ``str`` once, when the vector env is built, so
``AsyncVectorEnv`` (shared memory is its default) keeps returning that first, empty snapshot. ``StepText`` registers
a reader that returns a live view decoding the buffer on access (and a real tuple when gymnasium copies it), using
gymnasium's own single-dispatch extension points; everything else is plain ``Text``.

The character tables (immutable, ~65k characters for ``STEP_CHARSET``) are built once per charset and shared by
every space over it: gymnasium's ``batch_space`` deep-copies the space once per sub-env, and copying the tables took
~0.6 s each (``gym.make_vec`` with 64 sub-envs spent 82 s there, 75 % of a 128-episode GRPO collection, measured with
cProfile), so a deep copy copies only the random generator; and building them took ~45 ms per space, two spaces per
env (``make_vec`` with 128 sub-envs: ~11 s of a GRPO collection's driver time), so a new space over a charset seen
before reuses them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.spaces import Text
from gymnasium.vector.utils import read_from_shared_memory

__all__ = ["StepText"]


class StepText(Text):
    """A ``Text`` space whose async-vector shared-memory view stays live."""

    _tables: dict[str, dict[str, Any]] = {}
    """charset -> the ``_char*`` attributes ``Text.__init__`` derived from it (and ``_char_array``)."""

    def __init__(self, max_length: int, *, min_length: int = 0, charset: str, seed: Any = None) -> None:
        tables = StepText._tables.get(charset) if isinstance(charset, str) else None
        if tables is None:
            super().__init__(max_length=max_length, min_length=min_length, charset=charset, seed=seed)
            self._char_array = np.array(self.character_list + ("",), dtype=object)
            if isinstance(charset, str):
                StepText._tables[charset] = {k: v for k, v in vars(self).items() if k.startswith("_char")}
            return
        # Text's own checks of the lengths and seed, on a one-character charset; then the shared tables
        super().__init__(max_length=max_length, min_length=min_length, charset=charset[:1], seed=seed)
        self.__dict__.update(tables)

    def __eq__(self, other: object, /) -> bool:
        # shared tables: no comparison of two 65k-character sets
        if isinstance(other, StepText) and other._char_set is self._char_set:
            return self.min_length == other.min_length and self.max_length == other.max_length
        return super().__eq__(other)

    def decode(self, indices: np.ndarray) -> str:
        """Characters for flattened indices (the padding index maps to the empty string)."""
        return "".join(self._char_array[np.minimum(indices, len(self.character_list))])

    def __deepcopy__(self, memo: dict) -> StepText:
        clone = copy.copy(self)  # the character tables are never mutated: shared
        memo[id(self)] = clone
        clone._np_random = copy.deepcopy(self._np_random, memo)
        return clone

    def __repr__(self) -> str:
        return (
            f"StepText({self.min_length}, {self.max_length}, charset=<{len(self.character_list)} characters>)"
        )


class _LiveTextBatch(Sequence):
    """The n strings held in a shared-memory buffer, decoded when read."""

    def __init__(self, space: StepText, shared_memory: Any, n: int) -> None:
        self._space = space
        self._rows = np.frombuffer(shared_memory.get_obj(), dtype=np.int32).reshape((n, space.max_length))

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(self._space.decode(row) for row in self._rows[index])
        return self._space.decode(self._rows[index])

    def __deepcopy__(self, memo: dict) -> tuple[str, ...]:
        return tuple(self)

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, Sequence) else NotImplemented

    def __repr__(self) -> str:
        return repr(tuple(self))


@read_from_shared_memory.register(StepText)
def _read_step_text(space: StepText, shared_memory: Any, n: int = 1) -> _LiveTextBatch:
    return _LiveTextBatch(space, shared_memory, n)
