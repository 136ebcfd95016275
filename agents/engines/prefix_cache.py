"""KV states of earlier prompts, kept across ``generate`` calls so a prompt that extends one pays only its new tokens.

Why: tree search (beam search, MCTS, step-level best-of-N) sends, at every step, a prompt that is its parent's
prompt plus one step plus the delimiter. Re-encoding the whole prompt each time is what OpenR does; keeping the
parent's KV states turns each expansion into a prefill of the step alone (issue 5's efficiency target).

The store is a radix tree over token ids (as in SGLang's RadixAttention): every edge holds the KV states of its
tokens for all layers, so prompts sharing a prefix share its memory, and any cached sequence serves the *longest
common prefix* with a new prompt, not only exact prefixes (the KV at position t depends only on tokens 0..t).
Matching is on token ids, never text, so a tokenizer that merges tokens at a boundary (``"\\n\\n"`` at the end of a
prompt vs ``"\\n" "\\n"`` before the next step) costs only the tokens that really differ. Leaves are evicted least
recently used first once the stored tokens exceed the budget, so memory is bounded by
``max_tokens x bytes_per_token`` (``2 x layers x kv_heads x head_dim x dtype size``; 23,040 bytes for SmolLM2-135M
in bf16).

Stale states are the caller's concern (:func:`weights_fingerprint` lets it notice in-place weight updates).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["PrefixCache", "weights_fingerprint"]

# (keys, values) for positions [start, stop) of one sequence, each (layers, kv_heads, stop - start, head_dim).
KVRange = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


class _Node:
    """One edge of the tree: its tokens and their KV states for every layer."""

    __slots__ = ("children", "keys", "last_used", "parent", "tokens", "values")

    def __init__(
        self,
        tokens: list[int],
        keys: torch.Tensor | None,
        values: torch.Tensor | None,
        parent: _Node | None,
    ) -> None:
        self.tokens = tokens
        self.keys = keys
        self.values = values
        self.parent = parent
        self.children: dict[int, _Node] = {}
        self.last_used = 0


def full_attention_cache(model: Any) -> bool:
    """Whether every layer of ``model``'s KV cache holds all positions (no sliding window or recurrent state):
    only then can cached keys/values of a prefix stand in for recomputing it (prefix cache, shared RL prompts)."""
    from transformers import DynamicCache

    layers = DynamicCache(config=model.config).layers
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def common_length(edge: Sequence[int], ids: Sequence[int], start: int = 0) -> int:
    """Length of the common prefix of ``edge`` and ``ids[start:]``."""
    limit = min(len(edge), len(ids) - start)
    length = 0
    while length < limit and edge[length] == ids[start + length]:
        length += 1
    return length


class PrefixCache:
    """LRU radix tree of prompt KV states with a token budget.

    Args:
        max_tokens: tokens stored at most (summed over edges, so shared prefixes count once); 0 disables storing.
    """

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        self.max_tokens = max_tokens
        self._root = _Node([], None, None, None)
        self._clock = 0
        self.tokens = 0
        """Tokens stored now."""

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored KV states."""
        return sum(node.keys.nbytes + node.values.nbytes for node in self._nodes() if node.keys is not None)

    def clear(self) -> None:
        """Drop every stored state (after a weight update, or to free memory)."""
        self._root = _Node([], None, None, None)
        self.tokens = 0

    # -- lookup --------------------------------------------------------------------------------------------
    def _walk(self, ids: Sequence[int]) -> tuple[int, list[tuple[_Node, int]]]:
        """Longest cached prefix of ``ids``: its length and the (edge, tokens used of it) along the path."""
        node, depth, path = self._root, 0, []
        while depth < len(ids):
            child = node.children.get(ids[depth])
            if child is None:
                break
            used = common_length(child.tokens, ids, depth)
            path.append((child, used))
            depth += used
            if used < len(child.tokens):
                break
            node = child
        return depth, path

    def match_length(self, ids: Sequence[int]) -> int:
        """Length of the longest cached prefix of ``ids`` (no side effects)."""
        return self._walk(ids)[0]

    def lookup_segments(
        self, ids: Sequence[int], limit: int | None = None
    ) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The longest cached prefix of ``ids`` (at most ``limit`` tokens): its length and its KV states as
        consecutive (keys, values) views along the path, each ``(layers, kv_heads, tokens, head_dim)``, so a
        caller can copy them straight into a batch tensor. The matched edges become the most recently used.
        """
        depth, path = self._walk(ids)
        if limit is not None and depth > limit:
            kept, total = [], 0
            for node, used in path:
                if total >= limit:
                    break
                used = min(used, limit - total)
                kept.append((node, used))
                total += used
            path, depth = kept, total
        if depth == 0:
            return 0, []
        self._clock += 1
        for node, _ in path:
            node.last_used = self._clock
        return depth, [(node.keys[:, :, :used], node.values[:, :, :used]) for node, used in path]

    # -- insertion -----------------------------------------------------------------------------------------
    def insert(self, ids: Sequence[int], kv_range: KVRange) -> None:
        """Store the KV states of ``ids``; ``kv_range(start, stop)`` gives those of positions not yet stored.

        ``kv_range`` must return new tensors (e.g. from ``index_select``), not views of a larger batch cache,
        so evicting an edge frees its memory. Sequences longer than the budget are stored up to the budget.
        """
        ids = list(ids[: self.max_tokens])
        if not ids:
            return
        self._clock += 1
        node, depth = self._root, 0
        while depth < len(ids):
            child = node.children.get(ids[depth])
            if child is None:
                break
            used = common_length(child.tokens, ids, depth)
            if used < len(child.tokens):
                child = self._split(child, used)
            child.last_used = self._clock
            node, depth = child, depth + used
        if depth < len(ids):
            keys, values = kv_range(depth, len(ids))
            leaf = _Node(ids[depth:], keys, values, node)
            leaf.last_used = self._clock
            node.children[ids[depth]] = leaf
            self.tokens += len(leaf.tokens)
        self._evict()

    def _split(self, node: _Node, at: int) -> _Node:
        """Cut ``node``'s edge after ``at`` tokens; return the new upper half (copies, so halves free separately)."""
        upper = _Node(
            node.tokens[:at],
            node.keys[:, :, :at].clone(),
            node.values[:, :, :at].clone(),
            node.parent,
        )
        upper.last_used = node.last_used
        node.parent.children[node.tokens[0]] = upper
        node.tokens = node.tokens[at:]
        node.keys = node.keys[:, :, at:].clone()
        node.values = node.values[:, :, at:].clone()
        node.parent = upper
        upper.children[node.tokens[0]] = node
        return upper

    # -- eviction ------------------------------------------------------------------------------------------
    def _nodes(self) -> list[_Node]:
        nodes, stack = [], list(self._root.children.values())
        while stack:
            node = stack.pop()
            nodes.append(node)
            stack.extend(node.children.values())
        return nodes

    def _evict(self) -> None:
        """Remove least recently used leaves until the budget holds (a parent left childless becomes a leaf)."""
        if self.tokens <= self.max_tokens:
            return
        heap = [(n.last_used, id(n), n) for n in self._nodes() if not n.children]
        heapq.heapify(heap)
        while self.tokens > self.max_tokens and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            del parent.children[leaf.tokens[0]]
            self.tokens -= len(leaf.tokens)
            if parent is not self._root and not parent.children:
                heapq.heappush(heap, (parent.last_used, id(parent), parent))


def weights_fingerprint(model: Any) -> tuple[Any, ...] | None:
    """Changes whenever the model's weights may have: another model object, a parameter replaced, any in-place
    update through the parameter (optimizer steps, ``load_state_dict``, ``copy_``, LoRA merges bump
    ``Tensor._version``), or values changed behind the version counter (``p.data.copy_(...)`` does not bump it):
    a probe of 64 evenly spaced values per parameter is summed as well.

    None when it cannot tell (inference-mode tensors have no version counter): then nothing cached may be used.
    """
    version = pointers = 0
    probes = []
    try:
        for parameter in model.parameters():
            version += parameter._version
            pointers += parameter.data_ptr()
            flat = parameter.detach().reshape(-1)
            probes.append(flat[:: max(1, flat.numel() // 64)].float().sum())
    except RuntimeError:
        return None
    probe = float(torch.stack(probes).sum()) if probes else 0.0
    return id(model), version, pointers, probe
