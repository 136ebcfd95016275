"""Exact canonical forms (``reasoning_gym.judging.canonical``): every rule, its near misses, what stays undecided,
and a property check of the exact algebra against sympy on random expressions."""

from __future__ import annotations

import json
import random

import pytest

from reasoning_gym.judging import canonical
from reasoning_gym.judging.answer import last_number, normalize_number
from reasoning_gym.judging.canonical import decide, parse_answer
from reasoning_gym.judging.judge import MathJudger, _rule_form, normalize_reference, rule_verdict

EQUAL = [
    ("\\sqrt{12}", "2\\sqrt{3}"),
    ("\\sqrt{\\frac{3}{4}}", "\\frac{\\sqrt3}{2}"),
    ("\\frac{3\\sqrt{3}}{4}", "\\frac{3}{4}\\sqrt{3}"),
    ("\\frac{1}{\\sqrt2}", "\\frac{\\sqrt2}{2}"),
    ("\\dfrac{\\pi}{2}", "\\frac12\\pi"),
    ("\\frac{20000}{\\pi}", "20000\\pi^{-1}"),
    ("2\\cdot 3\\pi", "6\\pi"),
    ("-\\frac{35}{9}", "\\frac{-35}{9}"),
    ("\\tfrac 59", "\\frac{5}{9}"),
    ("6.73\\times10^{-5}", "0.0000673"),
    ("\\$5", "5"),
    ("5\\text{ cm}", "5"),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}"),
    ("90^\\circ", "90"),
    ("90^{\\circ}", "90"),
    ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
    ("2k+2", "2(k+1)"),
    ("(x-1)(x^4+x^2+1)", "x^5 - x^4 + x^3 - x^2 + x - 1"),
    ("\\frac{11+9a}{20}", "\\frac{11}{20}+\\frac{9}{20}a"),
    ("3R^2", "3r^2"),  # letters are case-insensitive, as in math-verify
    ("6 - 5i", "-5i+6"),
    ("x = 5", "5"),
    ("y = 2x + 3", "2x+3"),
    ("y - 2x = 3", "y=2x+3"),
    ("10x-14y+22z+8=0", "5x - 7y + 11z + 4 = 0"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac\\pi2)"),
    ("(-\\infty, 0]", "(-\\infty,0]"),
    ("x \\in [-2,7]", "[-2,7]"),
    ("(9,36) \\cup (0,9)", "(0,9)\\cup(9,36)"),
    ("3, 5, 7", "\\{7,5,3\\}"),
    ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}"),
    (
        "\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}",
        "\\begin{pmatrix} -\\frac13 \\\\ \\frac{2}{3} \\end{pmatrix}",
    ),
    ("\\text{(C)}", "\\text{C}"),
    ("\\text{ Evelyn}", "\\text{evelyn}"),
]

NEAR_MISSES = [
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("\\frac{1}{2}", "\\frac{2}{1}"),
    ("2\\sqrt{3}", "3\\sqrt{2}"),
    ("\\sqrt{51}", "\\sqrt{52}"),
    ("0.001", "0.0011"),
    ("6.72\\times10^{-5}", "0.0000673"),
    ("7\\pi", "8\\pi"),
    ("\\frac{\\pi}{2}", "90^\\circ"),
    ("91^\\circ", "90^\\circ"),
    ("6 - 6i", "6 - 5i"),
    ("2k+3", "2k+2"),
    ("x^2-1", "x^2+1"),
    ("\\frac{4}{0}", "\\frac49"),  # no value at all
    ("(1,2)", "(2,1)"),
    ("(1,2,3)", "(1,2)"),
    ("[1,2)", "[1,2]"),
    ("(-\\infty, 1]", "(-\\infty, 0]"),
    ("(2,12) \\cup (12,103)", "(2,12) \\cup (12,102)"),
    ("1,-3", "1,-2"),
    ("1 \\pm \\sqrt{10}", "1 \\pm \\sqrt{19}"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\end{pmatrix}"),
    ("x=6", "x=5"),
    ("y = 2x + 4", "y = 2x + 3"),
    ("y=5", "x=5"),
    ("5x - 7y + 11z + 4 = 1", "5x - 7y + 11z + 4 = 0"),
    ("\\text{odd}", "\\text{even}"),
]

UNDECIDED = [  # ambiguous notation or different shapes: math-verify decides, as before
    ("1\\frac{4}{5}", "\\frac{9}{5}"),  # mixed number or product?
    ("1/2x", "\\frac{x}{2}"),  # (1/2)x or 1/(2x)?
    ("\\frac123", "\\frac{3}{2}"),
    ("e", "2.718281828459045"),
    ("1,2", "(1,2)"),  # a list against a tuple
    ("(0,36)", "(0,9)\\cup[9,36)"),  # a tuple against a union
    ("(0.7071067812, 1)", "(\\frac{\\sqrt2}{2}, 1)"),  # a decimal inside a tuple: math-verify's rounding
    ("(0.3333333, 1)", "(\\frac{1}{3}, 1)"),
    ("x^2 = 1", "x = 1"),  # non-linear equations
    ("9^{9^{9^9}}", "\\frac{3}{7}"),
    ("\\sqrt{1000000000000000000001}", "1"),
    ("\\cot x", "\\tan x"),
    ("\\text{Evelyn}x", "\\text{Evelyn}"),
    ("5 \\text{ and } 6", "5"),
    ("50\\%", "\\frac12"),
    ("dod", "odd"),  # a word, not a product of letters
    ("(1,000,2)", "(1,0,2)"),  # 000: a thousands group
    ("[-\\infty, 2]", "(-\\infty, 2]"),
    ("1, 234", "1234"),  # a list or a number?
    ("(a+b+c+d+f+g)^{4}=(h+j+k+l+m+n)^{4}", "(a+b+c+d+f+g)^{4}=(h+j+k+l+m+n)^{4}+1"),  # too big to compare
]


@pytest.mark.parametrize("prediction, reference", EQUAL)
def test_equal_forms_are_accepted_without_math_verify(prediction, reference):
    assert decide(prediction, reference) is True
    assert decide(reference, prediction) is True
    assert rule_verdict(prediction, reference) is True


@pytest.mark.parametrize("prediction, reference", NEAR_MISSES)
def test_near_misses_are_rejected_without_math_verify(prediction, reference):
    assert decide(prediction, reference) is False
    assert rule_verdict(prediction, reference) is False


@pytest.mark.parametrize("prediction, reference", UNDECIDED)
def test_ambiguous_or_mismatched_shapes_are_left_to_math_verify(prediction, reference):
    assert decide(prediction, reference) is None


@pytest.mark.parametrize("prediction, reference", NEAR_MISSES[:8] + EQUAL[:8])
def test_judger_agrees_with_the_exact_rules(prediction, reference):
    expected = decide(prediction, reference)
    assert MathJudger().judge(f"so \\boxed{{{prediction}}}", reference) is expected


def test_commas_are_thousands_separators_only_between_groups_of_three():
    assert normalize_number("1,234.50") == "1234.50"
    assert normalize_number("3,5,7") is None  # a list, not 357
    assert last_number("we get 3,4 and then 1,000 apples") == "1000"
    judger = MathJudger()
    assert judger.judge("\\boxed{7,5,3}", "3,5,7")
    assert not judger.judge("\\boxed{357}", "3,5,7")
    assert judger.judge("\\boxed{1,000}", "1000")


def test_references_are_parsed_once():
    parse_answer.cache_clear()
    normalize_reference.cache_clear()
    _rule_form.cache_clear()
    judger = MathJudger()
    reference = "\\frac{3\\sqrt{3}}{4}"
    for k in range(20):
        assert judger.judge(f"\\boxed{{\\frac{{{k}}}{{4}}\\sqrt{{3}}}}", reference) is (k == 3)
    assert parse_answer.cache_info().misses == 21  # the reference once, each prediction once
    assert normalize_reference.cache_info().misses == 1
    assert _rule_form.cache_info().misses == 21  # the rules read the reference once too


def test_gold_answers_of_math500_mostly_lie_in_the_grammar(math500_path):
    answers = [json.loads(line)["answer"] for line in math500_path.open()]
    inside = [a for a in answers if parse_answer(a) is not None]
    assert len(inside) >= 0.9 * len(answers)
    assert all(decide(a, a) is True for a in inside)


def test_fuzzed_grammar_pieces_never_raise():
    rng = random.Random(0)
    pieces = ["\\frac", "\\sqrt", "{", "}", "(", ")", "[", "]", "^", "-", "+", "2", "0", "x", "\\pi", ",", "=", "\\cup",
              "\\pm", "\\infty", ".5", "\\{", "\\}", "\\text{a}", "/", "\\cdot", "&", "\\\\", "^\\circ", "e", "i"]  # fmt: skip
    for _ in range(3000):
        a = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        # parse_answer / decide map any exception to "undecided" so a run never crashes; the parser itself must
        # only ever reject input with _OutOfGrammar, or a real bug would hide behind that safety net
        canonical._work.left = canonical._WORK_BUDGET
        try:
            canonical._structure(a)
        except canonical._OutOfGrammar:
            pass
        assert decide(a, b) in (True, False, None)
        parsed = parse_answer(a)
        if parsed is not None and parsed[0] not in ("undefined", "eq"):
            assert decide(a, a) is True


def _random_expression(rng: random.Random, depth: int):
    """A random expression as (LaTeX, sympy object), built from the same tree (nothing is parsed from text)."""
    import sympy

    x, y = sympy.symbols("x y")
    if depth == 0 or rng.random() < 0.3:
        leaves = [
            ("2", sympy.Integer(2)),
            ("3", sympy.Integer(3)),
            ("\\frac{1}{2}", sympy.Rational(1, 2)),
            ("0.25", sympy.Rational(1, 4)),
            ("\\sqrt{2}", sympy.sqrt(2)),
            ("\\sqrt{8}", sympy.sqrt(8)),
            ("\\sqrt{6}", sympy.sqrt(6)),
            ("\\pi", sympy.pi),
            ("x", x),
            ("y", y),
        ]
        return rng.choice(leaves)
    (a, sa), (b, sb) = _random_expression(rng, depth - 1), _random_expression(rng, depth - 1)
    op = rng.choice(["+", "-", "*", "frac", "pow"])
    if op in ("+", "frac"):
        return f"({a}+{b})", sa + sb
    if op == "-":
        return f"({a}-{b})", sa - sb
    if op == "*":
        return f"({a})\\cdot({b})", sa * sb
    if op == "frac" and sb != 0:
        return f"\\frac{{{a}}}{{{b}}}", sa / sb
    n = rng.randint(0, 3)
    return f"({a})^{{{n}}}", sa**n


def test_exact_algebra_agrees_with_sympy_on_random_expressions():
    import sympy

    rng = random.Random(1)
    decided = equal = 0
    for _ in range(400):
        (a, sa), (b, sb) = _random_expression(rng, 2), _random_expression(rng, 2)
        if rng.random() < 0.5:
            b, sb = f"({a})+({b})-({b})", sa  # the same value written differently
        verdict = decide(a, b)
        if verdict is None:
            continue  # e.g. a division by a sum: outside the grammar
        truth = sympy.expand(sa - sb) == 0 or sympy.simplify(sa - sb) == 0
        assert verdict is truth, (a, b)
        decided += 1
        equal += truth
    assert decided > 150 and 40 < equal < decided
