"""Prefill for ``HFEngine``'s decode loop: prompts into one KV cache, each only past its prefix-cached tokens.

Why its own module: the prefill is where the prefix cache (``agents.engines.prefix_cache``) pays off, and it has
three paths that share one layout: a prompt extending a cached one prefills only its new tokens, prompts of very
different lengths are prefilled in length groups (not one padded batch), and an uncached prefix several prompts of
one call share is prefilled once. :class:`Prefiller` does all three; :class:`Prefill` names what it hands the
decoder.

The KV layout of a prefilled batch: row r reuses ``c_r`` cached tokens and prefills the ``s_r`` after them; both
parts are left-padded to the widest row, ``[pad][cached c_r][pad][new s_r]``, so every row's last prompt token is
the last column and padding in the middle is masked. Position ids count real tokens only, so they (and the rotary
embeddings baked into the cached keys) are those of the prompt prefilled whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .prefix_cache import PrefixCache, common_length

__all__ = ["MIN_SHARED_PREFIX", "Prefill", "Prefiller", "kv_range"]

# Shared uncached prefixes shorter than this are not worth a separate prefill pass.
MIN_SHARED_PREFIX = 16
# Prefill in groups of similar length once one padded batch would compute more than this x its real tokens ...
PADDING_SLACK = 1.5
# ... each group holding prompts at least this fraction of its longest one's length.
GROUP_RATIO = 0.75

KV = tuple[torch.Tensor, torch.Tensor]
"""Keys and values of some tokens of one row: two (layers, heads, tokens, head_dim) tensors."""
Hit = tuple[int, list[KV]]
"""What a row reuses: ``(c, segments)``, its first ``c`` prompt tokens' KV states as consecutive pieces."""


@dataclass
class Prefill:
    """A batch of prompts prefilled into one KV cache, ready for the first decode step."""

    logits: torch.Tensor
    """(rows, vocab): the next-token logits after each prompt."""
    kv: Any
    """The ``transformers`` ``DynamicCache`` holding every row's prompt."""
    attention_mask: torch.Tensor
    """(rows, cache columns): 1 where a column holds a real token of the row."""
    positions: torch.Tensor
    """(rows, prefilled columns): position ids of the tokens this pass computed (last column: the last prompt
    token)."""
    columns: list[list[int]]
    """``columns[r][t]``: the cache column holding prompt token t of row r."""
    cached: list[int]
    """Prompt tokens of each row that came from the prefix cache (not computed here)."""


@dataclass
class _PassInputs:
    """What one prefill forward pass takes: the KV cache (cached segments copied in) and the uncached tokens."""

    kv: Any
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    columns: list[list[int]]


def kv_range(kv: Any, row: int, columns: list[int]) -> Callable[[int, int], KV]:
    """``PrefixCache.insert``'s callback: new (layers, heads, tokens, dim) tensors of one batch row's tokens
    ``start:stop`` (through the row's ``columns``)."""

    def states(start: int, stop: int) -> KV:
        index = torch.tensor(columns[start:stop], device=kv.layers[0].keys.device)
        keys = torch.stack([layer.keys[row].index_select(1, index) for layer in kv.layers])
        values = torch.stack([layer.values[row].index_select(1, index) for layer in kv.layers])
        return keys, values

    return states


class Prefiller:
    """Prefills prompts for one ``generate`` call of a model (built per call: the engine's model may be swapped).

    Args:
        model: the causal LM.
        pad_token_id: id placed in padding columns (masked out).
        max_batch_size: most prompts prefilled together when prefilling shared prefixes.
        reusable_kv: whether cached KV columns can be reused for this model (``prefix_cache.full_attention_cache``);
            without it only one plain padded prefill is done.
    """

    def __init__(self, model: Any, pad_token_id: int, max_batch_size: int, reusable_kv: bool) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.max_batch_size = max_batch_size
        self.reusable_kv = reusable_kv
        self.device = next(model.parameters()).device

    def prefill(self, prompt_ids: list[list[int]], cache: PrefixCache | None) -> Prefill:
        """Prefill every prompt past its cached prefix (length-grouped when lengths differ a lot)."""
        hits: list[Hit] = [(0, [])] * len(prompt_ids)
        if cache is not None:
            hits = [cache.lookup_segments(ids, limit=len(ids) - 1) for ids in prompt_ids]
        cached = [length for length, _ in hits]
        hits = self._prefill_in_length_groups(prompt_ids, hits)
        done = self._prefill_past(prompt_ids, hits)
        done.cached = cached
        return done

    def prefill_shared_prefixes(self, encoded: list[list[int]], cache: PrefixCache) -> dict[int, int]:
        """Prefill, once, the uncached prefixes that several prompts of this call share; put them in the cache.

        Without this, prompts sharing a prefix nobody sent before (the system prompt and instruction of the
        first wave of a batch of problems, or many branches off one new long prompt) would each prefill it.
        Sorting the distinct prompts puts prompts with a common prefix next to each other, so the common
        prefixes of neighbours are the shared ones. Returns the tokens prefilled here per prompt index (the
        first prompt holding each prefix), so the counters still report every token processed.
        """
        distinct = sorted({tuple(ids) for ids in encoded})
        shared: set[tuple[int, ...]] = set()
        for first, second in zip(distinct, distinct[1:]):
            # stop before either prompt's last token: that one is prefilled with its prompt for its logits
            length = min(common_length(first, second), len(first) - 1, len(second) - 1)
            if length - cache.match_length(first[:length]) >= MIN_SHARED_PREFIX:
                shared.add(first[:length])
        counts: dict[int, int] = {}
        remaining = sorted(shared, key=len)
        while remaining:
            # A prefix nested in a longer one goes first, so the longer one prefills only its extension.
            ready = [p for p in remaining if not any(len(q) < len(p) and p[: len(q)] == q for q in remaining)]
            remaining = [p for p in remaining if p not in ready]
            batch = [list(prefix) for prefix in ready[: self.max_batch_size]]
            remaining = ready[self.max_batch_size :] + remaining
            done = self.prefill(batch, cache)
            for row, prefix in enumerate(batch):
                cache.insert(prefix, kv_range(done.kv, row, done.columns[row]))
                owner = next(i for i, ids in enumerate(encoded) if ids[: len(prefix)] == prefix)
                counts[owner] = counts.get(owner, 0) + len(prefix) - done.cached[row]
        return counts

    def _prefill_past(self, prompt_ids: list[list[int]], hits: list[Hit]) -> Prefill:
        """One forward pass over the uncached prompt tokens (``cached`` is left empty for the caller)."""
        inputs = self._inputs(prompt_ids, hits)
        out = self.model(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.positions,
            past_key_values=inputs.kv,
            use_cache=True,
            logits_to_keep=1,
        )
        return Prefill(
            out.logits[:, -1], inputs.kv, inputs.attention_mask, inputs.positions, inputs.columns, cached=[]
        )

    def _prefill_in_length_groups(self, prompt_ids: list[list[int]], hits: list[Hit]) -> list[Hit]:
        """Prefill prompts of very different lengths in groups of similar length (all but their last token).

        One left-padded batch pads every prompt to the longest: a batch of MATH problems of 68-458 tokens
        computed 3x its real tokens, and attention grows with the square of the padded width. When padding
        would exceed ``PADDING_SLACK`` x the real tokens, rows are grouped by remaining length (each group within
        ``GROUP_RATIO`` of its longest), each group is prefilled on its own, and its KV states join the row's
        cached segments; the caller's single pass then prefills one token per row. Returns the extended hits.
        """
        remaining = [len(ids) - 1 - c for ids, (c, _) in zip(prompt_ids, hits)]
        width = max(remaining) + 1
        real = sum(remaining) + len(prompt_ids)
        if len(prompt_ids) < 2 or len(prompt_ids) * width <= PADDING_SLACK * real:
            return hits
        if not self.reusable_kv:
            return hits
        groups: list[list[int]] = []
        for row in sorted((r for r in range(len(prompt_ids)) if remaining[r]), key=lambda r: -remaining[r]):
            if groups and remaining[row] >= GROUP_RATIO * remaining[groups[-1][0]]:
                groups[-1].append(row)
            else:
                groups.append([row])
        hits = list(hits)
        for group in groups:
            heads = [prompt_ids[r][:-1] for r in group]
            done = self._prefill_past(heads, [hits[r] for r in group])
            for i, row in enumerate(group):
                start, segments = hits[row]
                hits[row] = (
                    len(heads[i]),
                    [*segments, kv_range(done.kv, i, done.columns[i])(start, len(heads[i]))],
                )
        return hits

    def _inputs(self, prompt_ids: list[list[int]], hits: list[Hit]) -> _PassInputs:
        """The KV cache to prefill into (cached segments copied in), the uncached prompt tokens, attention mask,
        position ids and each row's cache columns, in the layout of the module docstring."""
        from transformers import DynamicCache

        kv = DynamicCache(config=self.model.config)
        cached = [length for length, _ in hits]
        past, new = max(cached), max(len(ids) - c for ids, c in zip(prompt_ids, cached))
        input_ids = torch.full((len(prompt_ids), new), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompt_ids), past + new), dtype=torch.long)
        positions = torch.zeros((len(prompt_ids), new), dtype=torch.long)
        columns: list[list[int]] = []
        for row, (ids, c) in enumerate(zip(prompt_ids, cached)):
            s = len(ids) - c
            input_ids[row, new - s :] = torch.tensor(ids[c:])
            attention_mask[row, past - c : past] = 1
            attention_mask[row, past + new - s :] = 1
            positions[row, new - s :] = torch.arange(c, len(ids))
            columns.append(list(range(past - c, past)) + list(range(past + new - s, past + new)))
        if past:
            # Copy the cached segments straight into one (layers, batch, heads, past, dim) tensor and hand each
            # layer its slice (no intermediate concatenation, no copy by ``DynamicLayer.update``).
            first = next(segments[0][0] for _, segments in hits if segments)
            layers, heads, _, dim = first.shape
            keys = first.new_zeros((layers, len(prompt_ids), heads, past, dim))
            values = torch.zeros_like(keys)
            for row, (c, segments) in enumerate(hits):
                at = past - c
                for k, v in segments:
                    keys[:, row, :, at : at + k.shape[2]] = k
                    values[:, row, :, at : at + k.shape[2]] = v
                    at += k.shape[2]
            for layer, state in enumerate(kv.layers):
                state.lazy_initialization(keys[layer], values[layer])
                state.keys, state.values = keys[layer], values[layer]
        device = self.device
        return _PassInputs(kv, input_ids.to(device), attention_mask.to(device), positions.to(device), columns)
