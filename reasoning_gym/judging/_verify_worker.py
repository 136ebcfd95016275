"""The math-verify child process behind ``MathJudger`` (run as ``python -m reasoning_gym.judging._verify_worker``).

Why a child process: math-verify's timeouts rely on ``signal.alarm``, which only works in a main thread, and some
sympy work holds the GIL in C for a long time. A child process is the only hard wall-clock limit that works from
threads, processes and daemonic vector-env workers alike: the parent kills it when a deadline passes.

Protocol: one JSON line per request, ``[[prediction, reference], ...]``; one JSON line per reply, ``[bool, ...]``.
Only the LaTeX extractor of math-verify is used (its expression extractor goes through sympy's ``parse_expr``, which
evaluates code); the answers are wrapped in ``\\boxed{}`` so the extractor reads exactly the given answer.
"""

from __future__ import annotations

import json
import logging
import sys
from functools import lru_cache

__all__ = ["main", "verify_pair"]

_INNER_TIMEOUT_S = 2  # math-verify's own per-operation alarm; the parent's kill is the hard limit


def _config():
    from math_verify import LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)]


@lru_cache(maxsize=65536)
def _parse_cached(answer: str):
    """Parse one answer; references repeat across judgements, so this cache makes them parse once."""
    from math_verify import parse

    return parse(f"\\boxed{{{answer}}}", extraction_config=_config(), parsing_timeout=_INNER_TIMEOUT_S)


def _numbers_differ(gold, pred) -> bool:
    """True when both are constant numbers whose values clearly differ (30-digit evaluation, under an alarm)."""
    from math_verify.utils import timeout

    def differ() -> bool:
        if not (getattr(gold, "is_number", False) and getattr(pred, "is_number", False)):
            return False
        gold_value, pred_value = complex(gold.evalf(30)), complex(pred.evalf(30))
        return abs(gold_value - pred_value) > 1e-9 * max(1.0, abs(gold_value))

    try:
        return bool(timeout(timeout_seconds=1)(differ)())
    except Exception:  # noqa: BLE001 - undecided: let math-verify judge
        return False


def verify_pair(prediction: str, reference: str) -> bool:
    """math-verify's equivalence of two extracted answers (gold first: the comparison is not symmetric)."""
    from math_verify import verify

    gold = _parse_cached(reference)
    pred = _parse_cached(prediction)
    if not gold or not pred:
        return False
    if _numbers_differ(gold[0], pred[0]):
        return False  # the common wrong-answer case, decided without sympy's simplification passes
    return bool(verify(gold, pred, float_rounding=10, timeout_seconds=_INNER_TIMEOUT_S))


def main() -> None:
    logging.disable(logging.CRITICAL)  # math-verify logs every failed parse; the parent only wants verdicts
    sys.setrecursionlimit(10_000)
    _parse_cached("0")  # warm the imports before the first real request
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            pairs = json.loads(line)
        except ValueError:
            print("[]", flush=True)
            continue
        verdicts = []
        for prediction, reference in pairs:
            try:
                verdicts.append(verify_pair(prediction, reference))
            except BaseException:  # noqa: BLE001 - a verdict of False is the only safe answer to anything odd
                verdicts.append(False)
        print(json.dumps(verdicts), flush=True)


if __name__ == "__main__":
    main()
