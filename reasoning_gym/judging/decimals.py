"""The one policy for a number written as a decimal against an exact value it does not equal exactly.

Why one policy: the exact rules (``judge.rule_verdict``, ``canonical.decide``) and the math-verify child must give
the same verdict for ``0.0833333333333333`` vs ``1/12`` as for ``1.4142135624`` vs ``\\sqrt{2}``; both call
``agrees`` here.

The policy, math-verify's default float precision (both sides rounded to 6 decimal places) made relative below 1:

- a value that has a finite decimal expansion (``5``, ``1/8``, ``0.0000672``) must be written exactly: two such
  numbers are compared exactly, so ``5.0000001 != 5`` and ``.0000672 != .0000673``;
- any other value (``1/12``, ``\\sqrt{2}``, ``\\pi/4``) equals a decimal when both, rounded half-even to 6 decimal
  places *and* 6 significant digits (whichever is finer), are equal: ``0.333333`` and ``0.3333333`` match ``1/3``
  but ``0.33`` does not; ``0.0833333`` matches ``1/12`` but ``0.083333`` does not; ``0.0`` never matches
  ``1/3000000`` (math-verify's absolute 6 places would accept it).
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext
from fractions import Fraction

from reasoning_gym.judging.answer import normalize_number

__all__ = [
    "DECIMAL_PLACES",
    "SIGNIFICANT_DIGITS",
    "agrees",
    "agrees_with_fraction",
    "decimal_literal",
    "terminates",
]

DECIMAL_PLACES = 6
SIGNIFICANT_DIGITS = 6
PRECISION = 60  # significant digits the exact side must be known to
_MAX_DIGITS = 50  # values needing more digits than this to round never match a decimal


def decimal_literal(text: str) -> str | None:
    """``"0.0833"`` / ``"1,234.5"`` -> the plain decimal (``"1234.5"``); None for integers and non-numbers."""
    number = normalize_number(text)
    return number if number is not None and "." in number else None


def terminates(value: Fraction) -> bool:
    """True when ``value`` has a finite decimal expansion (its reduced denominator is 2^a 5^b)."""
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    return denominator == 1


def agrees(decimal: str, value: Decimal) -> bool:
    """The policy for a value known to ``PRECISION`` digits that has no finite decimal expansion."""
    try:
        written = Decimal(decimal)
        if not value.is_finite() or value.is_zero() or not written.is_finite():
            return False
        exponent = min(-DECIMAL_PLACES, value.adjusted() - (SIGNIFICANT_DIGITS - 1))
        if value.adjusted() - exponent > _MAX_DIGITS:
            return False
        quantum = Decimal(1).scaleb(exponent)
        with localcontext() as context:
            context.prec = PRECISION + 10
            return written.quantize(quantum, ROUND_HALF_EVEN) == value.quantize(quantum, ROUND_HALF_EVEN)
    except (InvalidOperation, ValueError, OverflowError):
        return False


def agrees_with_fraction(decimal: str, value: Fraction) -> bool:
    """The policy for an exact rational (False for one with a finite expansion that the decimal does not equal)."""
    if terminates(value):
        return Fraction(decimal) == value
    with localcontext() as context:
        context.prec = PRECISION
        return agrees(decimal, Decimal(value.numerator) / Decimal(value.denominator))
