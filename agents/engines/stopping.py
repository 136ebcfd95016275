"""Stop-string handling shared by the backends: where a completion ends and which tokens it keeps.

Every backend generates raw token ids; this module turns them into a :class:`Completion` the same way, so that
HF, vLLM and HTTP results agree: the text is cut before the earliest stop string, and ``token_ids`` keep the
shortest prefix whose text covers that cut (a token straddling the stop string stays, so its decoded text may
then extend past ``text``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import Completion

__all__ = ["earliest_stop", "finish_completion", "tokens_covering"]


def earliest_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """(index, stop string) of the first stop string occurring in ``text``, or None."""
    best: tuple[int, str] | None = None
    for stop in stops:
        if not stop:
            continue
        at = text.find(stop)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, stop)
    return best


def tokens_covering(tokenizer: Any, token_ids: Sequence[int], n_chars: int) -> int:
    """Smallest k such that the decoded first k tokens are at least ``n_chars`` long."""
    if n_chars <= 0:
        return 0
    lo, hi = 1, len(token_ids)
    while lo < hi:  # decoded length grows with k, so bisect
        mid = (lo + hi) // 2
        if len(tokenizer.decode(token_ids[:mid], skip_special_tokens=True)) >= n_chars:
            hi = mid
        else:
            lo = mid + 1
    return lo


def finish_completion(
    tokenizer: Any,
    token_ids: Sequence[int],
    logprobs: Sequence[float],
    *,
    stops: Sequence[str],
    eos_token_ids: set[int],
    prompt_tokens: int,
) -> Completion:
    """Turn raw generated ids into a Completion (stop-string cut, EOS detection, finish reason).

    An EOS token that ended generation stays in ``token_ids`` (the model chose to stop, RL trains on it) but not
    in ``text``.
    """
    ids = [int(t) for t in token_ids]
    lps = [float(x) for x in logprobs]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    hit = earliest_stop(text, stops)
    if hit is not None:
        at, stop = hit
        keep = tokens_covering(tokenizer, ids, at)
        return Completion(
            text[:at], ids[:keep], lps[:keep], "stop", prompt_tokens, stop, ids[keep:], lps[keep:]
        )
    reason = "eos" if ids and ids[-1] in eos_token_ids else "length"
    return Completion(text, ids, lps, reason, prompt_tokens)
