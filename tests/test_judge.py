"""The outcome judger on real MATH-500 answers, known false positives, time limits and fuzzing."""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from rewards import MathJudger, extract_answer
from rewards.judge import normalize_reference


@pytest.fixture(scope="module")
def judger():
    return MathJudger(timeout=5.0)


@pytest.fixture(scope="module")
def math500(math500_path):
    return [json.loads(line) for line in math500_path.open()]


def test_gold_solution_equals_answer_on_all_of_math500(judger, math500):
    verdicts = judger.judge_many((row["solution"], row["answer"]) for row in math500)
    assert sum(verdicts) == len(math500) == 500


def _perturb_last_digit(answer: str) -> str | None:
    digits = list(re.finditer(r"\d", answer))
    if not digits:
        return None
    k = digits[-1].start()
    return answer[:k] + str((int(answer[k]) + 1) % 10) + answer[k + 1 :]


def test_perturbed_answers_are_rejected_on_math500(judger, math500):
    pairs = [
        (f"\\boxed{{{p}}}", row["answer"]) for row in math500 if (p := _perturb_last_digit(row["answer"]))
    ]
    assert len(pairs) > 450
    accepted = [pair for pair, ok in zip(pairs, judger.judge_many(pairs)) if ok]
    assert accepted == []


@pytest.mark.parametrize(
    "prediction, reference",
    [
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("so \\boxed{1/2}", "\\frac12"),
        ("\\boxed{3\\sqrt{2}}", "\\sqrt{18}"),
        ("The answer is 42.", "42"),
        ("Final answer: $\\dfrac{\\pi}{2}$", "\\frac{\\pi}{2}"),
        ("\\boxed{(1,2)}", "(1, 2)"),
        ("\\boxed{52_{8}}", "52_8"),
        ("\\boxed{1,000}", "1000"),
        ("\\boxed{18}", "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 18"),
        ("\\boxed{x = 3}", "3"),
    ],
)
def test_equivalent_answers_accepted(judger, prediction, reference):
    assert judger.judge(prediction, reference)


@pytest.mark.parametrize(
    "prediction, reference",
    [
        ("\\boxed{52_9}", "52_8"),
        ("\\boxed{.0000673}", ".0000672"),
        ("\\boxed{0.0000672}", "6.73\\times10^{-5}"),
        ("\\boxed{5\\text{ cm}^3}", "5\\text{ cm}^2"),
        ("\\boxed{3}", "4"),
        ("no answer stated 4", "4"),
        ("\\boxed{4", "4"),
        ("", "4"),
    ],
)
def test_known_false_positives_and_non_answers_rejected(judger, prediction, reference):
    assert not judger.judge(prediction, reference)


def test_last_number_fallback_is_opt_in():
    assert MathJudger(fallback_last_number=True).judge("she has 4 left", "4")
    assert not MathJudger().judge("she has 4 left", "4")


@pytest.mark.parametrize("bad", ["9^{9^{9^9}}", "1000000!", "(" * 400 + "1" + ")" * 400])
def test_pathological_inputs_return_false_within_limit(bad):
    judger = MathJudger(timeout=5.0)
    start = time.monotonic()
    verdict = judger.judge(f"\\boxed{{{bad}}}", "\\frac{3}{7}")
    assert verdict is False
    assert time.monotonic() - start < 5.0 + 3.0  # the limit plus process start-up; never a hang


def test_works_from_worker_threads(judger):
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(judger.judge("\\boxed{2/4}", "\\frac12")))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [True] * 4


def _judge_in_process(pair):
    return MathJudger(timeout=5.0).judge(*pair)


def test_works_from_worker_processes():
    with ProcessPoolExecutor(max_workers=2) as pool:
        assert list(pool.map(_judge_in_process, [("\\boxed{0.25}", "\\frac14"), ("\\boxed{3}", "4")])) == [
            True,
            False,
        ]


def test_fuzzed_inputs_never_raise_or_hang():
    rng = np.random.default_rng(0)
    judger = MathJudger(timeout=2.0)
    pieces = [
        "\\boxed{",
        "}",
        "{",
        "\\frac{",
        "^{",
        "9",
        "(",
        ")",
        "\\sqrt{",
        "x",
        "=",
        ",",
        "\\text{",
        "\U0001f600",
    ]
    texts = []
    for _ in range(60):
        size = int(rng.integers(0, 40))
        texts.append("".join(pieces[i] for i in rng.integers(0, len(pieces), size=size)))
    texts += ["\\boxed{" * 5000, "}" * 5000, "\\boxed{" + "1" * 200_000 + "}", "\x00\xff\udcff"]
    texts += ["".join(chr(int(c)) for c in rng.integers(1, 0xD7FF, size=500)) for _ in range(5)]
    start = time.monotonic()
    verdicts = judger.judge_many((text, "\\frac{1}{2}") for text in texts)
    assert len(verdicts) == len(texts) and all(isinstance(v, bool) for v in verdicts)
    assert time.monotonic() - start < 120


def test_extract_answer_rules():
    assert extract_answer("a \\boxed{1} then \\boxed{\\frac{2}{3}}") == "\\frac{2}{3}"
    assert extract_answer("\\boxed{5} and a broken \\boxed{6") == "5"
    assert extract_answer("The final answer is $7$.") == "7"
    assert extract_answer("#### 1,234") == "1,234"
    assert extract_answer("no answer here") is None
    assert extract_answer("The answer to this problem is 10.") == "10"
    assert extract_answer("The answer depends on x.") is None
    assert MathJudger().judge("So the answer is 7 apples.", "7")
    assert normalize_reference("blah\n#### 1,234") == "1234"
