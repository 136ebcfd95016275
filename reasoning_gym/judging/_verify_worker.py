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
from decimal import Decimal
from functools import lru_cache

from reasoning_gym.judging.decimals import (
    DECIMAL_PLACES,
    PRECISION,
    agrees,
    agrees_with_fraction,
    decimal_literal,
)

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


def _decimal_policy(prediction: str, reference: str, gold, pred) -> bool | None:
    """A bare decimal against a number: the same policy as the exact rules (``reasoning_gym.judging.decimals``)."""
    from fractions import Fraction

    import sympy

    for decimal_side, other in ((prediction, gold), (reference, pred)):
        decimal = decimal_literal(decimal_side)
        if decimal is None or not getattr(other, "is_number", False):
            continue
        if isinstance(other, sympy.Rational):
            return agrees_with_fraction(decimal, Fraction(int(other.p), int(other.q)))
        value = other.evalf(PRECISION + 10)
        if not isinstance(value, sympy.Float):
            return None  # complex or not evaluable: math-verify decides
        return agrees(decimal, Decimal(str(value)))
    return None


def verify_pair(prediction: str, reference: str) -> bool:
    """math-verify's equivalence of two extracted answers (gold first: the comparison is not symmetric)."""
    from math_verify import verify
    from math_verify.utils import timeout

    gold = _parse_cached(reference)
    pred = _parse_cached(prediction)
    if not gold or not pred:
        return False
    policy = timeout(timeout_seconds=1)(_decimal_policy)(prediction, reference, gold[0], pred[0])
    if policy is not None:
        return policy
    if _numbers_differ(gold[0], pred[0]):
        return False  # the common wrong-answer case, decided without sympy's simplification passes
    # Inside tuples, sets and intervals a decimal meets math-verify's own rule at its default precision.
    return bool(verify(gold, pred, float_rounding=DECIMAL_PLACES, timeout_seconds=_INNER_TIMEOUT_S))


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
