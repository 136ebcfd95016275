"""Exact canonical forms for the closed LaTeX grammar most MATH answers are written in.

Why: math-verify parses LaTeX with ANTLR and compares with sympy, 5-12 ms of CPU per new answer, which caps the
judger at a few hundred judgements per second. Most MATH answers (integers, decimals, fractions, ``a\\sqrt{b}``,
multiples of ``\\pi``, polynomials, tuples, intervals, lists, matrices, one-word text) need none of that: they have
a *unique* exact form, so two answers in the grammar are equal exactly when their forms are equal, and unequal
otherwise. ``decide(prediction, reference)`` returns that verdict, or None when either side leaves the grammar or the
two sides have different shapes. A bare decimal against a constant it does not equal exactly (``1.4142135624`` vs
``\\sqrt{2}``) is judged by the one policy of ``reasoning_gym.judging.decimals``; a decimal inside a tuple or set
against a root, pi or fraction is left to math-verify's rounding. A division by zero has no value and equals no answer
in the grammar.

The scalar form is a polynomial in (lower-cased) letter variables whose coefficients are exact sums of
``c * sqrt(m) * pi**k`` (``c`` rational, ``m`` square-free, ``k`` an integer): square roots of distinct square-free
integers and powers of pi are linearly independent over the rationals, so the form is unique. Conventions follow
math-verify's where it has one (letters are case-insensitive, ``i`` is a plain letter, bare comma lists and ``\\{..\\}``
are sets, ``^\\circ`` and trailing ``\\text{}`` units are ignored, ``y = 2x+3`` equals ``2x+3``, equations equal
up to a constant factor); where notation is ambiguous (mixed numbers ``1\\frac{4}{5}``, ``1/2x``, ``e``, ``\\frac123``,
``1, 234`` as a list or a number, words like ``odd``) the answer is out of the grammar. Pure string and integer
work: nothing is evaluated as code, and sizes are bounded (long inputs, big powers and huge radicands leave the
grammar).
"""

from __future__ import annotations

import math
import re
import threading
from decimal import Decimal, localcontext
from fractions import Fraction
from functools import lru_cache
from math import gcd, isqrt

from reasoning_gym.judging.decimals import PRECISION, agrees, agrees_with_fraction, decimal_literal

__all__ = ["Answer", "decide", "parse_answer"]

_MAX_CHARS = 300
_MAX_TERMS = 200
_MAX_BITS = 4096
_MAX_EXPONENT = 64
_MAX_RADICAND = 10**9
_WORK_BUDGET = 2000  # term-by-term products per answer: keeps an adversarial answer to a few ms of CPU

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?|\.\d+)|(?P<cmd>\\[a-zA-Z]+|\\[{}\\,;:! %$])|(?P<letter>[a-zA-Z])"
    r"|(?P<sym>[-+*/^(){}\[\],=&|~']))"
)
_SKIP = {
    "\\,",
    "\\;",
    "\\:",
    "\\!",
    "\\ ",
    "~",
    "\\left",
    "\\right",
    "\\displaystyle",
    "\\$",
    "\\bigl",
    "\\bigr",
}
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree\b")
_TEXT = r"\\(?:text|textbf|textrm|mbox|mathrm)\s*\{([^{}]*)\}"
_WHOLE_TEXT = re.compile(r"^" + _TEXT + r"$")
_TRAILING_UNIT = re.compile(r"^(.*?\S)\s*" + _TEXT + r"$", re.DOTALL)
_UNIT_WORDS = re.compile(r"^[A-Za-z][A-Za-z .]*$")
_TEXT_WORD = re.compile(r"^\(?([A-Za-z][A-Za-z ]*)\)?$")
_MATRIX = re.compile(r"^\\begin\{([pbv]?matrix)\}(.*)\\end\{\1\}$", re.DOTALL)
_THOUSANDS = re.compile(r"(?:^|[^\d.])\d{1,3}(?:,\s*\d{3})+(?![\d.])")
_OPEN = {"(", "[", "{", "\\{"}
_CLOSE = {")", "]", "}", "\\}"}
_DECIMAL = re.compile(r"\d?\.\d")
_INEXACT = re.compile(r"\\sqrt|\\pi|\\[dt]?frac|/")
_GROUPED_NUMBER = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


class _OutOfGrammar(Exception):
    """The answer uses notation outside the grammar (math-verify decides)."""


class _Undefined(_OutOfGrammar):
    """A division by zero: the answer has no value, so it equals no answer that has one."""


# -- exact scalars: {(sqrt_m, pi_power, ((var, power), ...)): Fraction} -------------------------------------------
Key = tuple[int, int, tuple[tuple[str, int], ...]]
Poly = dict[Key, Fraction]
_ONE: Key = (1, 0, ())


def _const(value: Fraction) -> Poly:
    return {_ONE: value} if value else {}


def _check(poly: Poly) -> Poly:
    if len(poly) > _MAX_TERMS:
        raise _OutOfGrammar("too many terms")
    for coefficient in poly.values():
        if coefficient.numerator.bit_length() > _MAX_BITS or coefficient.denominator.bit_length() > _MAX_BITS:
            raise _OutOfGrammar("number too large")
    return poly


def _add(a: Poly, b: Poly, sign: int = 1) -> Poly:
    out = dict(a)
    for key, value in b.items():
        total = out.get(key, 0) + sign * value
        if total:
            out[key] = total
        else:
            out.pop(key, None)
    return _check(out)


def _merge_vars(a: tuple, b: tuple) -> tuple:
    powers = dict(a)
    for name, power in b:
        powers[name] = powers.get(name, 0) + power
    return tuple(sorted(powers.items()))


_work = threading.local()


def _mul(a: Poly, b: Poly) -> Poly:
    _work.left = getattr(_work, "left", _WORK_BUDGET) - len(a) * len(b)
    if _work.left < 0:
        raise _OutOfGrammar("too much algebra")
    out: Poly = {}
    for (ma, pa, va), ca in a.items():
        for (mb, pb, vb), cb in b.items():
            g = gcd(ma, mb)  # sqrt(ma) * sqrt(mb) = g * sqrt(ma*mb/g^2), square-free again
            key = ((ma // g) * (mb // g), pa + pb, _merge_vars(va, vb))
            total = out.get(key, 0) + ca * cb * g
            if total:
                out[key] = total
            else:
                out.pop(key, None)
    return _check(out)  # once: a and b are checked, so one product at most doubles their sizes


def _inverse(a: Poly) -> Poly:
    """1/a for a single constant term c*sqrt(m)*pi^k; anything else leaves the grammar."""
    if not a:
        raise _Undefined("division by zero")
    if len(a) != 1:
        raise _OutOfGrammar("division by a sum")
    ((m, p, variables), c) = next(iter(a.items()))
    if variables:
        raise _OutOfGrammar("division by a variable")
    return {(m, -p, ()): 1 / (c * m)}


def _power(base: Poly, exponent: Poly) -> Poly:
    if set(exponent) - {_ONE} or exponent.get(_ONE, Fraction(0)).denominator != 1:
        raise _OutOfGrammar("non-integer exponent")
    n = int(exponent.get(_ONE, 0))
    if abs(n) > _MAX_EXPONENT:
        raise _OutOfGrammar("exponent too large")
    if n < 0:
        base, n = _inverse(base), -n
    if not base:
        if n == 0:
            raise _OutOfGrammar("0^0")
        return {}
    result = _const(Fraction(1))
    for _ in range(n):
        result = _mul(result, base)
    return result


def _square_free(n: int) -> tuple[int, int]:
    """(s, m) with n = s^2 * m and m square-free, by trial division up to the cube root (n <= 10^9)."""
    if n > _MAX_RADICAND:
        raise _OutOfGrammar("radicand too large")
    s, m, d = 1, 1, 2
    while d * d * d <= n:
        count = 0
        while n % d == 0:
            n //= d
            count += 1
        s *= d ** (count // 2)
        m *= d ** (count % 2)
        d += 1 if d == 2 else 2
    root = isqrt(n)  # what is left has at most two prime factors: p, p*q (square-free) or p^2
    if root * root == n:
        return s * root, m
    return s, m * n


def _sqrt(a: Poly) -> Poly:
    if set(a) - {_ONE}:
        raise _OutOfGrammar("square root of a non-rational")
    value = a.get(_ONE, Fraction(0))
    if value < 0:
        raise _OutOfGrammar("square root of a negative")
    if value == 0:
        return {}
    s, m = _square_free(value.numerator * value.denominator)  # sqrt(p/q) = sqrt(p*q)/q
    return {(m, 0, ()): Fraction(s, value.denominator)}


def _float(poly: Poly) -> float:
    """A float for ordering interval endpoints (constants only)."""
    try:
        return sum(float(c) * math.sqrt(m) * math.pi**p for (m, p, v), c in poly.items() if not v)
    except OverflowError as error:
        raise _OutOfGrammar("too large to order") from error


class Scalar:
    """An exact scalar (``poly``) or +-infinity (``inf`` = +1 / -1)."""

    __slots__ = ("inf", "poly")

    def __init__(self, poly: Poly, inf: int = 0) -> None:
        self.poly, self.inf = poly, inf

    def key(self) -> object:
        return ("inf", self.inf) if self.inf else frozenset(self.poly.items())

    def is_constant(self) -> bool:
        return not self.inf and all(not v for (_, _, v) in self.poly)


# -- tokenizer and expression parser -------------------------------------------------------------------------------
def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            if text[position:].strip() == "":
                break
            raise _OutOfGrammar(f"unknown character {text[position]!r}")
        position = match.end()
        token = match.group(match.lastgroup)
        if match.lastgroup == "letter":
            token = token.lower()
        if token in _SKIP:
            continue
        if token in ("\\dfrac", "\\tfrac"):
            token = "\\frac"
        if token in ("\\cdot", "\\times", "*"):
            token = "*"
        elif token == "\\div":
            token = "/"
        if tokens and token[0].isdigit() and tokens[-1][0].isdigit():
            raise _OutOfGrammar("two numbers in a row")  # "2 3": 23 or 2*3?
        if match.lastgroup == "num" and len(token) > 1 and token[0] == "0" and token[1] != ".":
            raise _OutOfGrammar("leading zero")  # "(1,000, 2)": a thousands group, not 0
        if token.isalpha() and len(tokens) >= 2 and tokens[-1].isalpha() and tokens[-2].isalpha():
            raise _OutOfGrammar("a word")  # "odd", "ABCD": not a product of letters
        tokens.append(token)
    return tokens


class _Parser:
    """Recursive descent over one expression's tokens: sum, product (explicit / implicit), power, atom."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise _OutOfGrammar(f"expected {expected!r}, got {token!r}")
        self.i += 1
        return token

    def parse(self) -> Poly:
        poly = self.sum()
        if self.peek() is not None:
            raise _OutOfGrammar(f"unexpected {self.peek()!r}")
        return poly

    def sum(self) -> Poly:
        sign = 1
        while self.peek() in ("+", "-"):
            sign = -sign if self.take() == "-" else sign
        total = self.product()
        if sign < 0:
            total = {k: -v for k, v in total.items()}
        while self.peek() in ("+", "-"):
            sign = 1
            while self.peek() in ("+", "-"):
                sign = -sign if self.take() == "-" else sign
            total = _add(total, self.product(), sign)
        return total

    def _starts_atom(self, token: str | None) -> bool:
        return token is not None and (
            token[0].isdigit()
            or token[0] == "."
            or token.isalpha()
            or token in ("(", "{", "\\frac", "\\sqrt", "\\pi")
        )

    def product(self) -> Poly:
        result = self.power()
        after_division = False
        while True:
            token = self.peek()
            if token in ("*", "/"):
                self.take()
                factor = self.power()
                if token == "/":
                    factor = _inverse(factor)
                after_division = token == "/"
            elif self._starts_atom(token):
                if after_division:
                    raise _OutOfGrammar("a/b c is ambiguous")
                if token == "\\frac" and self.tokens[self.i - 1][0].isdigit():
                    raise _OutOfGrammar("mixed number")  # 1\frac{4}{5}: 9/5 or 4/5?
                if token[0].isdigit() or token[0] == ".":
                    raise _OutOfGrammar("number after a factor")  # x2, \pi 3: unusual, keep out
                factor = self.power()
            else:
                return result
            result = _mul(result, factor)

    def power(self) -> Poly:
        base = self.atom()
        if self.peek() == "^":
            self.take()
            exponent = self.argument()
            if self.peek() == "^":
                raise _OutOfGrammar("a^b^c")
            base = _power(base, exponent)
        return base

    def argument(self) -> Poly:
        """A macro argument: ``{...}``, one digit of a number token, a letter or ``\\pi``."""
        token = self.peek()
        if token == "{":
            self.take()
            value = self.sum()
            self.take("}")
            return value
        if token is not None and token[0].isdigit():
            if len(token) > 1:
                if "." in token:
                    raise _OutOfGrammar("decimal split by a macro argument")
                self.tokens[self.i] = token[1:]  # \frac 59 -> 5 / 9
            else:
                self.i += 1
            return _const(Fraction(int(token[0])))
        if token is not None and (token.isalpha() or token == "\\pi"):
            return self.atom()
        raise _OutOfGrammar(f"bad macro argument {token!r}")

    def atom(self) -> Poly:
        token = self.take()
        if token[0].isdigit() or token[0] == ".":
            return _const(Fraction(token))
        if token == "(" or token == "{":
            value = self.sum()
            self.take(")" if token == "(" else "}")
            return value
        if token == "\\pi":
            return {(1, 1, ()): Fraction(1)}
        if token == "\\frac":
            numerator = self.argument()
            denominator = self.argument()
            value = _mul(numerator, _inverse(denominator))
            if self.peek() is not None and self.peek()[0].isdigit() and self.tokens[self.i - 1] != "}":
                raise _OutOfGrammar("\\frac123")  # the rest of a split number token follows
            return value
        if token == "\\sqrt":
            if self.peek() == "[":
                raise _OutOfGrammar("n-th root")
            value = _sqrt(self.argument())
            return value
        if token.isalpha() and len(token) == 1:
            if token == "e":
                raise _OutOfGrammar("e: Euler's number or a variable?")
            return {(1, 0, ((token, 1),)): Fraction(1)}
        raise _OutOfGrammar(f"unsupported {token!r}")


def _expression(tokens: list[str]) -> Scalar:
    if tokens in (["\\infty"], ["+", "\\infty"]):
        return Scalar({}, inf=1)
    if tokens == ["-", "\\infty"]:
        return Scalar({}, inf=-1)
    if not tokens:
        raise _OutOfGrammar("empty")
    return Scalar(_Parser(list(tokens)).parse())


# -- structure: equations, sets, tuples, intervals, unions, matrices, text -----------------------------------------
def _split(tokens: list[str], separator: str) -> list[list[str]]:
    """Split at ``separator`` outside any brackets (brackets may be mixed, as in ``[1,2)``)."""
    parts: list[list[str]] = [[]]
    depth = 0
    for token in tokens:
        if token in _OPEN:
            depth += 1
        elif token in _CLOSE:
            depth -= 1
            if depth < 0:
                raise _OutOfGrammar("unbalanced brackets")
        if token == separator and depth == 0:
            parts.append([])
        else:
            parts[-1].append(token)
    if depth != 0:
        raise _OutOfGrammar("unbalanced brackets")
    return parts


def _enclosed(tokens: list[str]) -> bool:
    """True when the first token's bracket closes at the last token."""
    if len(tokens) < 2 or tokens[0] not in _OPEN or tokens[-1] not in _CLOSE:
        return False
    depth = 0
    for index, token in enumerate(tokens):
        depth += token in _OPEN
        depth -= token in _CLOSE
        if depth == 0:
            return index == len(tokens) - 1
    return False


Answer = tuple  # ("scalar", Scalar) | ("eq", Scalar, Scalar) | ("tuple", keys) | ("union", pieces) | ...


def _element(tokens: list[str]) -> object:
    """A member of a set or tuple: a scalar or a parenthesised tuple of scalars."""
    if _enclosed(tokens) and tokens[0] == "(" and tokens[-1] == ")" and "," in tokens:
        inner = _split(tokens[1:-1], ",")
        return ("tuple", tuple(_expression(part).key() for part in inner))
    return _expression(tokens).key()


def _interval(tokens: list[str]) -> tuple[Scalar, Scalar, bool, bool]:
    if not (_enclosed(tokens) and tokens[0] in "([" and tokens[-1] in ")]"):
        raise _OutOfGrammar("not an interval")
    parts = _split(tokens[1:-1], ",")
    if len(parts) != 2:
        raise _OutOfGrammar("interval needs two endpoints")
    low, high = _expression(parts[0]), _expression(parts[1])
    if (low.inf and tokens[0] == "[") or (high.inf and tokens[-1] == "]"):
        raise _OutOfGrammar("closed at infinity")
    return low, high, tokens[0] == "[", tokens[-1] == "]"


def _ordered(a: Scalar, b: Scalar) -> bool:
    """a < b, decided exactly for equal values and with a safe margin otherwise (else out of the grammar)."""
    if a.inf or b.inf:
        return a.inf < b.inf if a.inf and b.inf else (a.inf < 0 if a.inf else b.inf > 0)
    if not (a.is_constant() and b.is_constant()):
        raise _OutOfGrammar("symbolic endpoint")
    if a.poly == b.poly:
        return False
    x, y = _float(a.poly), _float(b.poly)
    if abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y)):
        raise _OutOfGrammar("endpoints too close to order")
    return x < y


def _union(pieces: list[list[str]]) -> Answer:
    """A union of intervals in its unique form: non-empty, sorted, disjoint and not touching (else out)."""
    intervals = [_interval(piece) for piece in pieces]
    for low, high, _, _ in intervals:
        if not _ordered(low, high):
            raise _OutOfGrammar("empty or reversed interval")
    order = sorted(
        range(len(intervals)),
        key=lambda k: (
            _float(intervals[k][0].poly) if not intervals[k][0].inf else intervals[k][0].inf * math.inf
        ),
    )
    intervals = [intervals[k] for k in order]
    for (_, high, _, high_closed), (low, _, low_closed, _) in zip(intervals, intervals[1:]):
        if _ordered(high, low):
            continue
        if high.key() == low.key() and not high_closed and not low_closed:
            continue  # (0,9) U (9,36): the point 9 is left out, the pieces stay apart
        raise _OutOfGrammar("overlapping or touching intervals")
    return ("union", tuple((lo.key(), hi.key(), lc, hc) for lo, hi, lc, hc in intervals))


def _matrix(body: str) -> Answer:
    rows = [row for row in re.split(r"\\\\", body) if row.strip()]
    cells = [[_expression(_tokenize(cell)).key() for cell in row.split("&")] for row in rows]
    if not cells or len({len(row) for row in cells}) != 1:
        raise _OutOfGrammar("ragged matrix")
    return ("matrix", tuple(tuple(row) for row in cells))


def _preprocess(text: str) -> str:
    text = re.sub(r",\s*\\!\s*", ",", text.strip().strip("$").strip())  # 11,\! 111: a thousands separator
    text = text.replace("\\!", "").replace("{,}", ",")
    text = _DEGREES.sub("", text)
    unit = _TRAILING_UNIT.match(text)
    if unit and _UNIT_WORDS.match(unit.group(2).strip() or "x"):
        text = unit.group(
            1
        )  # "5\text{ cm}", "\frac{270}7\text{ degrees}": units are ignored, like math-verify
    return text.strip().rstrip(".").strip()


def _structure(text: str) -> Answer:
    if len(text) > _MAX_CHARS:
        raise _OutOfGrammar("too long")
    whole_text = _WHOLE_TEXT.match(text.strip().strip("$").strip())
    if whole_text:
        word = _TEXT_WORD.match(whole_text.group(1).strip())
        if not word:
            raise _OutOfGrammar("text that is not a word")
        return ("text", re.sub(r"\s+", "", word.group(1)).lower())
    text = _preprocess(text)
    matrix = _MATRIX.match(text)
    if matrix:
        return _matrix(matrix.group(2))
    if "\\%" in text or "%" in text or "\\text" in text or "\\mbox" in text or "\\mathrm" in text:
        raise _OutOfGrammar("percent or text inside an expression")
    if _GROUPED_NUMBER.match(text):
        text = text.replace(",", "")  # 11,111,100: one number, as math-verify reads it
    elif not any(b in text for b in "([{") and _THOUSANDS.search(text):
        raise _OutOfGrammar("digits grouped by commas: a number or a list?")
    tokens = _tokenize(text)
    if len(tokens) >= 2 and tokens[0].isalpha() and tokens[1] == "\\in":
        tokens = tokens[2:]  # x \in [a, b]
        if not tokens or tokens[0] not in ("(", "["):
            raise _OutOfGrammar("\\in without an interval")
    sides = _split(tokens, "=")
    if len(sides) == 2:
        return ("eq", _expression(sides[0]), _expression(sides[1]))
    if len(sides) > 2:
        raise _OutOfGrammar("chained equations")
    pieces = _split(tokens, "\\cup")
    if len(pieces) > 1:
        return _union(pieces)
    if _enclosed(tokens) and tokens[0] == "\\{" and tokens[-1] == "\\}":
        return ("set", frozenset(_element(part) for part in _split(tokens[1:-1], ",")))
    items = _split(tokens, ",")
    if len(items) > 1:
        return ("set", frozenset(_element(item) for item in items))  # a bare list: math-verify reads a set
    if _enclosed(tokens) and tokens[0] in "([" and tokens[-1] in ")]" and len(_split(tokens[1:-1], ",")) > 1:
        if tokens[0] == "(" and tokens[-1] == ")":
            return ("tuple", tuple(_expression(part).key() for part in _split(tokens[1:-1], ",")))
        return _union([tokens])
    plus_minus = [k for k, t in enumerate(tokens) if t in ("\\pm", "\\mp")]
    if plus_minus:
        if len(plus_minus) > 1:
            raise _OutOfGrammar("several \\pm")
        k = plus_minus[0]
        left = _expression(tokens[:k]) if k else Scalar({})
        right = _expression(tokens[k + 1 :])
        if left.inf or right.inf:
            raise _OutOfGrammar("\\pm infinity")
        values = (_add(left.poly, right.poly), _add(left.poly, right.poly, -1))
        return ("set", frozenset(Scalar(value).key() for value in values))
    return ("scalar", _expression(tokens))


@lru_cache(maxsize=65536)
def parse_answer(text: str) -> Answer | None:
    """The exact form of one answer, or None when it is outside the grammar (cached: references parse once)."""
    _work.left = _WORK_BUDGET
    try:
        return _structure(text)
    except _Undefined:
        return ("undefined",)
    except Exception:  # noqa: BLE001 - any failure means "outside the grammar": math-verify decides, never a crash
        return None


# -- decisions -----------------------------------------------------------------------------------------------------
def _single_variable(scalar: Scalar) -> str | None:
    """The name when ``scalar`` is exactly one variable (``y`` in ``y = 2x + 3``)."""
    if len(scalar.poly) == 1:
        ((m, p, variables), c) = next(iter(scalar.poly.items()))
        if m == 1 and p == 0 and c == 1 and len(variables) == 1 and variables[0][1] == 1:
            return variables[0][0]
    return None


def _mentions(scalar: Scalar, name: str) -> bool:
    return any(name == var for (_, _, variables) in scalar.poly for var, _ in variables)


def _scalars(a: Scalar, b: Scalar) -> bool:
    return a.key() == b.key()


def _linear_rational(poly: Poly) -> bool:
    return all(m == 1 and p == 0 and sum(e for _, e in v) <= 1 for (m, p, v) in poly)


def _equations(a: Answer, b: Answer) -> bool | None:
    """Equations: ``y = f`` vs ``f`` compares f; two equations are equal up to a constant factor."""
    if a[0] != "eq" or b[0] != "eq":
        equation, other = (a, b) if a[0] == "eq" else (b, a)
        if other[0] != "scalar" or equation[1].inf or equation[2].inf:
            return None
        name = _single_variable(equation[1])
        if name is None or _mentions(equation[2], name):
            return None
        return _scalars(equation[2], other[1])
    if any(side.inf for side in (a[1], a[2], b[1], b[2])):
        return None
    name_a, name_b = _single_variable(a[1]), _single_variable(b[1])
    if name_a and name_a == name_b and not _mentions(a[2], name_a) and not _mentions(b[2], name_b):
        return _scalars(a[2], b[2])  # y = f(x) vs y = g(x): the same graph exactly when f == g
    diff_a, diff_b = _add(a[1].poly, a[2].poly, -1), _add(b[1].poly, b[2].poly, -1)
    if not diff_a or not diff_b:
        return None
    key = next(iter(diff_a))
    if key in diff_b:
        ratio = diff_b[key] / diff_a[key]
        if {k: v * ratio for k, v in diff_a.items()} == diff_b:
            return True
    both_linear = _linear_rational(diff_a) and _linear_rational(diff_b)
    non_constant = any(v for (_, _, v) in diff_a) and any(v for (_, _, v) in diff_b)
    return False if both_linear and non_constant else None


def _verdict(pred: Answer, ref: Answer) -> bool | None:
    if pred[0] == "undefined" or ref[0] == "undefined":
        kinds = {pred[0], ref[0]}
        return None if kinds & {"text"} or kinds == {"undefined"} else False  # \frac{4}{0} is no number
    if pred[0] == "eq" or ref[0] == "eq":
        return _equations(pred, ref)
    if pred[0] != ref[0]:
        return None  # (1,2) vs 1,2 or an interval vs a tuple: conventions differ; math-verify decides
    if pred[0] == "scalar":
        return _scalars(pred[1], ref[1])
    return pred[1] == ref[1]


_PI = Decimal(
    "3.14159265358979323846264338327950288419716939937510582097494459230781640628620899862803482534211706798"
)


def _decimal_value(poly: Poly) -> Decimal | None:
    """A constant scalar to ``decimals.PRECISION`` digits (None when it has variables)."""
    with localcontext() as context:
        context.prec = PRECISION + 10
        total = Decimal(0)
        for (m, p, variables), c in poly.items():
            if variables:
                return None
            term = Decimal(c.numerator) / Decimal(c.denominator) * Decimal(m).sqrt()
            total += term * _PI**p if p else term
        return +total


def _decimal_policy(prediction: str, pred: Answer, reference: str, ref: Answer) -> bool | None:
    """A bare decimal against a constant scalar it does not equal exactly: the one policy of ``decimals``."""
    if pred[0] != "scalar" or ref[0] != "scalar" or pred[1].inf or ref[1].inf:
        return None
    for decimal_side, other in ((prediction, ref[1].poly), (reference, pred[1].poly)):
        decimal = decimal_literal(decimal_side)
        if decimal is None or not other:
            continue
        if set(other) == {_ONE}:
            return agrees_with_fraction(decimal, other[_ONE])
        value = _decimal_value(other)
        return agrees(decimal, value) if value is not None else None
    return None


def decide(prediction: str, reference: str) -> bool | None:
    """True / False when both answers are in the grammar and comparable, else None (math-verify decides)."""
    pred, ref = parse_answer(prediction), parse_answer(reference)
    if pred is None or ref is None:
        return None
    try:
        verdict = _verdict(pred, ref)
        if verdict is False:
            policy = _decimal_policy(prediction, pred, reference, ref)
            if policy is not None:
                return policy  # 1.4142135624 vs \sqrt{2}, 0.0833333 vs \frac{1}{12}
    except Exception:  # noqa: BLE001 - e.g. two equations whose difference outgrows the size bounds
        return None
    if (
        verdict is False
        and _DECIMAL.search(prediction + " " + reference)
        and _INEXACT.search(prediction + reference)
    ):
        return None  # a decimal inside a tuple / set against a root, pi or fraction: math-verify's rounding decides
    return verdict
