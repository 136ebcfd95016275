"""Which engine actor serves which request: prefix affinity first, then the shortest queue.

Why affinity: an actor's prefix cache (HFEngine's radix tree, vLLM's automatic prefix caching) only helps requests
it receives. A search child's prompt is its parent's prompt plus one step, and the actor that generated that step
holds both in its cache; sending the child anywhere else re-reads the whole prompt. Why a balance cap: affinity
alone would pile a whole search tree (or every prompt sharing a system prompt) onto one actor. So requests are
placed strongest-affinity first, each actor taking at most its fair share of the batch's samples (its queue
counted in), and the rest go to the actor with the shortest queue.

The router never sees KV states: it remembers, per actor, chained hashes of the fixed-size token blocks of every
prompt and prompt + completion it sent there (vLLM's block hashing, used the same way by cache-aware routers such
as SGLang's), so the longest cached prefix of a new prompt on each actor is a few dictionary look-ups. Pure
Python, no Ray: tested on its own.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Piece", "PrefixRouter", "block_hashes"]


def block_hashes(token_ids: Sequence[int], block_tokens: int) -> list[int]:
    """Chained hashes of the full blocks of ``token_ids``: entry i identifies tokens ``[0, (i + 1) * block)``."""
    hashes, previous = [], 0
    for start in range(0, len(token_ids) - block_tokens + 1, block_tokens):
        previous = hash((previous, tuple(token_ids[start : start + block_tokens])))
        hashes.append(previous)
    return hashes


@dataclass(frozen=True)
class Piece:
    """``samples`` samples of prompt ``prompt`` (starting at sample ``first``) sent to actor ``actor``."""

    prompt: int
    first: int
    samples: int
    actor: int


class PrefixRouter:
    """Spreads a batch of (prompt token ids, samples) over actors with prefix affinity under a balance cap.

    Args:
        num_actors: actors 0..num_actors-1.
        block_tokens: granularity of prefix matching (a match shorter than one block counts as none).
        max_blocks: blocks remembered in total (least recently used forgotten first); bounds the router's memory.
        slack: an actor may take up to ``(1 + slack)`` x its fair share of a batch to keep affinity (0: exact).
    """

    def __init__(
        self, num_actors: int, *, block_tokens: int = 16, max_blocks: int = 1_000_000, slack: float = 0.0
    ) -> None:
        if num_actors < 1 or block_tokens < 1:
            raise ValueError(f"need num_actors >= 1 and block_tokens >= 1, got {num_actors}, {block_tokens}")
        self.num_actors = num_actors
        self.block_tokens = block_tokens
        self.max_blocks = max_blocks
        self.slack = slack
        # block hash -> actors holding that prefix (most recent last); one LRU order over all blocks.
        self._owners: OrderedDict[int, list[int]] = OrderedDict()

    # -- memory of what each actor has seen ---------------------------------------------------------------------
    def observe(self, actor: int, token_ids: Sequence[int]) -> None:
        """Remember that ``actor`` has (probably) cached the prefixes of ``token_ids``."""
        self._observe_blocks(actor, block_hashes(token_ids, self.block_tokens))

    def _observe_blocks(self, actor: int, hashes: Sequence[int]) -> None:
        for key in hashes:
            owners = self._owners.pop(key, [])
            if actor in owners:
                owners.remove(actor)
            owners.append(actor)
            self._owners[key] = owners
        while len(self._owners) > self.max_blocks:
            self._owners.popitem(last=False)

    def forget(self, actor: int) -> None:
        """``actor`` lost its cache (it restarted, or its weights changed)."""
        for key in list(self._owners):
            owners = self._owners[key]
            if actor in owners:
                owners.remove(actor)
                if not owners:
                    del self._owners[key]

    def clear(self) -> None:
        self._owners.clear()

    def matches(self, token_ids: Sequence[int]) -> dict[int, int]:
        """Per actor, the longest prefix of ``token_ids`` (in tokens, whole blocks) it has seen; 0 when none."""
        return self._matching_blocks(block_hashes(token_ids, self.block_tokens))

    def _matching_blocks(self, hashes: Sequence[int]) -> dict[int, int]:
        found: dict[int, int] = {}
        for index in range(len(hashes) - 1, -1, -1):
            for actor in self._owners.get(hashes[index], ()):
                found.setdefault(actor, (index + 1) * self.block_tokens)
            if len(found) == self.num_actors:
                break
        return found

    # -- placement ----------------------------------------------------------------------------------------------
    def route(
        self,
        token_ids: Sequence[Sequence[int]],
        samples: Sequence[int],
        live: Sequence[int],
        queued: Sequence[float] | None = None,
    ) -> list[Piece]:
        """Place ``samples[i]`` samples of each prompt on the ``live`` actors; a prompt may be split over several.

        ``queued[a]`` is work (samples) actor ``a`` already has in flight; each actor's share of this batch is
        capped so that queue + share stays within ``(1 + slack)`` x the even split. Within the cap a prompt goes to
        the actor holding its longest prefix; what is left goes to the actor with the most room (the shortest
        queue). Pieces come back in prompt order, sample order within a prompt.
        """
        if not live:
            raise ValueError("no live actor to route to")
        queued = list(queued) if queued is not None else [0.0] * self.num_actors
        total = sum(samples) + sum(queued[a] for a in live)
        fair = total / len(live)
        room = {a: max(0, math.ceil(fair * (1 + self.slack) - queued[a] - 1e-9)) for a in live}
        if sum(room.values()) < sum(samples):  # rounding: give the difference to the least loaded
            room[min(live, key=lambda a: queued[a])] += sum(samples) - sum(room.values())
        live_set = set(live)
        hashes = [block_hashes(ids, self.block_tokens) for ids in token_ids]  # once per prompt
        prior = [
            max((m for a, m in self._matching_blocks(h).items() if a in live_set), default=0) for h in hashes
        ]
        left = list(samples)
        pieces: list[Piece] = []
        for index in sorted(range(len(token_ids)), key=lambda i: -prior[i]):  # strongest affinity first
            while left[index] > 0:
                # Matches are looked up again at each placement, so copies of a prompt placed earlier in this
                # batch (a GRPO group) follow it to the actor that will have its prefix cached.
                open_actors = [a for a in live if room[a] > 0]
                found = self._matching_blocks(hashes[index])
                actor = max(open_actors, key=lambda a: (found.get(a, 0), room[a], -queued[a], -a))
                take = min(left[index], room[actor])
                pieces.append(Piece(index, samples[index] - left[index], take, actor))
                room[actor] -= take
                left[index] -= take
                self._observe_blocks(actor, hashes[index])
        pieces.sort(key=lambda p: (p.prompt, p.first))
        return pieces
