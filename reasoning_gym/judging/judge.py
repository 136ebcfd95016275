"""Rule-based outcome judging for math answers, on math-verify, with a hard time limit.

``MathJudger().judge(prediction_text, reference_answer) -> bool``:

1. extract the prediction's final answer (last ``\\boxed{}`` or final-answer line; see
   ``reasoning_gym.judging.answer``);
2. decide what needs no parser: equal plain numbers (exact decimal comparison, so ``.0000672 != .0000673``),
   identical normalised strings, base-subscript numbers (``52_8`` vs ``52_9`` compared exactly) and mismatched unit
   exponents (``cm^2`` vs ``cm^3``), the false positives measured on MATH-500 perturbations; then the exact
   canonical forms of ``reasoning_gym.judging.canonical`` (fractions, roots, pi, polynomials, tuples, intervals,
   sets, matrices, equations, one-word text), which decide ~97% of perturbed MATH-500 answers exactly;
3. only when a side is outside that grammar (or the shapes differ), ask math-verify in a child process that the
   caller kills at the deadline (``timeout`` seconds), so a pathological input returns False on time from any
   thread or process and never hangs the caller.

Verdicts are cached per (answer, reference) pair; nothing is ever evaluated as code.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

from reasoning_gym.judging.answer import extract_answer, last_number, normalize_number
from reasoning_gym.judging.canonical import decide

__all__ = ["MathJudger", "normalize_reference", "rule_verdict"]

_MAX_ANSWER_CHARS = 1000  # no real final answer is longer; longer ones are judged False without parsing
_BASE_SUBSCRIPT = re.compile(r"[0-9A-Za-z]+_\{?\d+\}?")
_UNIT_POWER = re.compile(
    r"(?:\\(?:text|mbox|mathrm)\{\s*)?\b(mm|cm|km|m|in|inches|ft|feet|yd|yards|meters|units?|miles?)\b\}?\s*\^\s*\{?(\d)\}?"
)
_SPACING = re.compile(r"\\[,;:! ]|\\(?:left|right)\b|\s+")


@lru_cache(maxsize=65536)
def normalize_reference(reference: str) -> str:
    """A dataset reference as a bare answer: GSM8K's ``"... #### 1,234"`` -> ``"1234"``, ``\\boxed{x}`` -> ``x``."""
    reference = str(reference).strip()
    if "####" in reference:
        reference = reference.rsplit("####", 1)[1].strip()
        number = normalize_number(reference)
        return number if number is not None else reference
    boxed = extract_answer(reference) if "\\boxed" in reference or "\\fbox" in reference else None
    return boxed if boxed is not None else reference


_BRACED_SUBSCRIPT = re.compile(r"_\{(\w+)\}")


def _canonical(text: str) -> str:
    text = _BRACED_SUBSCRIPT.sub(r"_\1", _SPACING.sub("", text))
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^{\\circ}", "^\\circ")
    return text.strip("$").rstrip(".")


_FRAC = re.compile(r"^(-?)\\[dt]?frac(?:\{(-?\d+)\}|(\d))(?:\{(-?\d+)\}|(\d))$")
_SLASH = re.compile(r"^(-?\d+)/(\d+)$")


def _exact_number(text: str) -> Fraction | None:
    """An exact rational for plain numbers, ``a/b`` and ``\\frac{a}{b}`` (decimals stay exact: no float rounding)."""
    number = normalize_number(text)
    try:
        if number is not None:
            return Fraction(number)
        compact = _SPACING.sub("", text).strip("$")
        match = _FRAC.match(compact)
        if match:
            sign, num_braced, num_digit, den_braced, den_digit = match.groups()
            value = Fraction(int(num_braced or num_digit), int(den_braced or den_digit))
            return -value if sign else value
        match = _SLASH.match(compact)
        if match:
            return Fraction(int(match.group(1)), int(match.group(2)))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _unit_powers(text: str) -> frozenset[tuple[str, str]]:
    return frozenset((unit.rstrip("s"), power) for unit, power in _UNIT_POWER.findall(text))


@lru_cache(maxsize=65536)
def _rule_form(text: str) -> tuple[str, Fraction | None, bool, frozenset[tuple[str, str]]]:
    """What the rules read from one answer (cached: a reference is read once, not at every judgement)."""
    return _canonical(text), _exact_number(text), bool(_BASE_SUBSCRIPT.search(text)), _unit_powers(text)


def rule_verdict(prediction: str, reference: str) -> bool | None:
    """The verdict where rules alone are sound, else None (math-verify decides)."""
    pred_text, pred_num, pred_base, pred_units = _rule_form(prediction)
    ref_text, ref_num, ref_base, ref_units = _rule_form(reference)
    if pred_text == ref_text:
        return True
    if pred_num is not None and ref_num is not None:
        return pred_num == ref_num
    if ref_base or pred_base:
        return False  # numbers in a base: math-verify drops the subscript, so only the exact string is safe
    if (pred_units or ref_units) and pred_units != ref_units:
        return False
    return decide(prediction, reference)


class _VerifyProcess:
    """One math-verify child process per parent process, restarted after every kill."""

    _instances: dict[int, _VerifyProcess] = {}
    _guard = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._buffer = b""

    @classmethod
    def shared(cls) -> _VerifyProcess:
        with cls._guard:
            pid = os.getpid()  # a forked child must not share its parent's pipe
            if pid not in cls._instances:
                cls._instances[pid] = cls()
            return cls._instances[pid]

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        env.setdefault("OMP_NUM_THREADS", "1")
        self._proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "reasoning_gym.judging._verify_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        self._buffer = b""

    def _readline(self, deadline: float) -> bytes | None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None  # the child died
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    stream.close()
        self._proc = None

    def verify(self, pairs: Sequence[tuple[str, str]], timeout: float) -> list[bool] | None:
        """math-verify verdicts for ``pairs``, or None if the deadline passed (the child is then killed)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
                if (
                    self._readline(time.monotonic() + 120.0) != b"ready"
                ):  # import of sympy can be slow when loaded
                    self.kill()
                    return None
            deadline = time.monotonic() + timeout
            try:
                assert self._proc is not None and self._proc.stdin is not None
                self._proc.stdin.write(json.dumps(list(pairs)).encode() + b"\n")
                self._proc.stdin.flush()
                line = self._readline(deadline)
                verdicts = json.loads(line) if line is not None else None
            except (OSError, ValueError):
                verdicts = None
            if not isinstance(verdicts, list) or len(verdicts) != len(pairs):
                self.kill()
                return None
            return [bool(v) for v in verdicts]


@atexit.register
def _close_children() -> None:
    for instance in _VerifyProcess._instances.values():
        instance.kill()


class MathJudger:
    """Outcome judge for math answers: ``judge(prediction_text, reference_answer) -> bool``.

    Args:
        timeout: hard wall-clock limit in seconds for one judgement (a judgement over it is False).
        fallback_last_number: when the prediction states no final answer, judge its last number instead
            (GSM8K-style lenient grading). Off by default: an answer must be stated to count.
        cache_size: number of (answer, reference) verdicts kept.
    """

    def __init__(
        self, timeout: float = 5.0, fallback_last_number: bool = False, cache_size: int = 100_000
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = float(timeout)
        self.fallback_last_number = fallback_last_number
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._cache_lock = threading.Lock()

    def extract(self, prediction_text: str) -> str | None:
        """The answer this judger reads from a prediction (None: nothing to judge)."""
        if not isinstance(prediction_text, str):
            return None
        answer = extract_answer(prediction_text)
        if answer is None and self.fallback_last_number:
            answer = last_number(prediction_text)
        return answer

    def judge(self, prediction_text: str, reference_answer: str) -> bool:
        """True when the final answer in ``prediction_text`` equals ``reference_answer``."""
        return self.judge_many([(prediction_text, reference_answer)])[0]

    def judge_many(self, pairs: Iterable[tuple[str, str]]) -> list[bool]:
        """Judge many (prediction_text, reference_answer) pairs with one round trip to the verifier."""
        pairs = list(pairs)
        verdicts: list[bool | None] = [None] * len(pairs)
        pending: dict[tuple[str, str], list[int]] = {}
        for index, (prediction_text, reference) in enumerate(pairs):
            answer = self.extract(prediction_text)
            if answer is None or reference is None or len(answer) > _MAX_ANSWER_CHARS:
                verdicts[index] = False
                continue
            key = (answer, normalize_reference(reference))
            cached = self._cache_get(key)
            if cached is None:
                cached = rule_verdict(*key)
                if cached is not None:
                    self._cache_put(key, cached)
            if cached is not None:
                verdicts[index] = cached
            else:
                pending.setdefault(key, []).append(index)
        if pending:
            keys = list(pending)
            results = self._verify(keys)
            for key, result in zip(keys, results):
                for index in pending[key]:
                    verdicts[index] = result
        return [bool(v) for v in verdicts]

    def _verify(self, keys: list[tuple[str, str]]) -> list[bool]:
        worker = _VerifyProcess.shared()
        # Gold first in the worker: math-verify's comparison is not symmetric.
        batch = worker.verify([(pred, ref) for pred, ref in keys], timeout=self.timeout * len(keys))
        if batch is not None:
            for key, verdict in zip(keys, batch):
                self._cache_put(key, verdict)
            return batch
        if len(keys) == 1:
            self._cache_put(keys[0], False)  # timed out: False, and never retried
            return [False]
        return [self._verify([key])[0] for key in keys]  # isolate the slow one(s), each under its own limit

    def _cache_get(self, key: tuple[str, str]) -> bool | None:
        with self._cache_lock:
            verdict = self._cache.get(key)
            if verdict is not None:
                self._cache.move_to_end(key)
            return verdict

    def _cache_put(self, key: tuple[str, str], verdict: bool) -> None:
        with self._cache_lock:
            self._cache[key] = verdict
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
