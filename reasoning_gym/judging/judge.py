"""Rule-based outcome judging for math answers, on math-verify, with a hard time limit.

``MathJudger().judge(prediction_text, reference_answer) -> bool``:

1. extract the prediction's final answer (last ``\\boxed{}`` or final-answer line; see
   ``reasoning_gym.judging.answer``: linear in the text's length, so a megabyte costs milliseconds);
2. decide what needs no parser: equal plain numbers (exact decimal comparison, so ``.0000672 != .0000673``; a
   decimal against a fraction by the one policy of ``reasoning_gym.judging.decimals``), identical normalised
   strings, numbers in a base (digit-led ``52_8`` vs ``52_9`` compared exactly; ``a_1`` is a variable) and
   mismatched unit exponents (``cm^2`` vs ``cm^3``), the false positives measured on MATH-500 perturbations; then
   the exact canonical forms of ``reasoning_gym.judging.canonical`` (fractions, roots, pi, polynomials, tuples,
   intervals, sets, matrices, equations, one-word text), which decide ~97% of perturbed MATH-500 answers exactly;
3. only when a side is outside that grammar (or the shapes differ), ask math-verify in a child process that the
   caller kills at the deadline.

The limit (``timeout`` seconds) runs from the moment of the call and covers all three steps: the child gets only
what extraction and the rules left. Concurrent callers each take their own child from a small pool, so a caller
never waits behind another's deadline; one that finds every child busy (or its child still starting) until its
deadline gets False. Verdicts are cached per (answer, reference) pair; a reference that is empty matches nothing;
nothing is ever evaluated as code.
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
# A number in a base: digit-led (``52_8``, ``152A_{11}``, ``0.0011_{2}``, ``-221_3``) or ``\text{A5}_{11}``. A letter-led
# name with a subscript (``a_1``, ``x_{2}``) is a variable, which math-verify reads well.
_BASE_SUBSCRIPT = re.compile(
    r"(?<![0-9A-Za-z.\\])\d[0-9A-Z]*(?:\.[0-9A-Z]+)?_\{?\d+\}?|\\(?:text|mathrm)\{[0-9A-Z]+\}_\{?\d+\}?"
)
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
        # two exact numbers: equal, or a decimal against a fraction under the one policy of ``decimals`` (which
        # ``canonical.decide`` applies)
        return pred_num == ref_num or bool(decide(prediction, reference))
    if ref_base or pred_base:
        return False  # numbers in a base: math-verify drops the subscript, so only the exact string is safe
    if (pred_units or ref_units) and pred_units != ref_units:
        return False
    return decide(prediction, reference)


class _NotReady(Exception):
    """The verifier was still starting when the caller's deadline came (no verdict about the pair)."""


class _Worker:
    """One math-verify child process; started at once, killed and restarted when a request overruns."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._buffer = b""
        self._ready = False
        self.start()

    def start(self) -> None:
        """Launch the child without waiting for it: it imports sympy while the caller does other work."""
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
        self._ready = False

    def _readline(self, deadline: float) -> bytes | None:
        """One line from the child, or None when the deadline passes or the child died."""
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
                self.kill()  # the child died
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def wait_ready(self, deadline: float) -> bool:
        """True once the child has imported math-verify (waits at most until ``deadline``)."""
        if self._proc is None or self._proc.poll() is not None:
            self.start()
        if not self._ready:
            line = self._readline(deadline)
            if line is None:
                return False
            self._ready = line == b"ready"
            if not self._ready:
                self.kill()
        return self._ready

    def verify(self, pairs: Sequence[tuple[str, str]], deadline: float) -> list[bool] | None:
        """math-verify verdicts for ``pairs``, or None when the deadline passed (the child is then killed and
        restarted). Raises ``_NotReady`` when the child was still starting at the deadline (it keeps starting)."""
        if not self.wait_ready(deadline):
            raise _NotReady
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
            self.start()  # the replacement imports while nobody needs it
            return None
        return [bool(v) for v in verdicts]

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
        self._ready = False


class _VerifyProcess:
    """The math-verify children of one parent process: a pool, so that concurrent callers never queue behind one
    another's deadline. A caller takes an idle child (or starts one, up to ``max_workers``), else waits for one
    until its own deadline."""

    _instances: dict[int, _VerifyProcess] = {}
    _guard = threading.Lock()
    max_workers = min(32, max(4, os.cpu_count() or 1))

    def __init__(self) -> None:
        self._idle: list[_Worker] = []
        self._workers: list[_Worker] = []
        self._available = threading.Condition()

    @classmethod
    def shared(cls) -> _VerifyProcess:
        with cls._guard:
            pid = os.getpid()  # a forked child must not share its parent's pipes
            if pid not in cls._instances:
                cls._instances[pid] = cls()
            return cls._instances[pid]

    def acquire(self, deadline: float) -> _Worker | None:
        """An idle (or new) child for this caller alone, or None when none is free before ``deadline``."""
        with self._available:
            while not self._idle:
                if len(self._workers) < self.max_workers:
                    worker = _Worker()
                    self._workers.append(worker)
                    return worker
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._available.wait(remaining)
            return self._idle.pop()

    def release(self, worker: _Worker) -> None:
        with self._available:
            if worker in self._workers:  # not a child of a pool that ``kill`` emptied meanwhile
                self._idle.append(worker)
                self._available.notify()
            else:
                worker.kill()

    def warm_up(self, timeout: float) -> bool:
        """Start one child and wait (at most ``timeout`` s) until it is ready; True when it is."""
        deadline = time.monotonic() + timeout
        worker = self.acquire(deadline)
        if worker is None:
            return False
        try:
            return worker.wait_ready(deadline)
        finally:
            self.release(worker)

    def verify(self, pairs: Sequence[tuple[str, str]], timeout: float) -> list[bool] | None:
        """math-verify verdicts for ``pairs`` within ``timeout`` seconds from now (start-up included), else None."""
        deadline = time.monotonic() + timeout
        worker = self.acquire(deadline)
        if worker is None:
            return None
        try:
            return worker.verify(pairs, deadline)
        except _NotReady:
            return None
        finally:
            self.release(worker)

    def kill(self) -> None:
        """Stop every child (a later call starts new ones)."""
        with self._available:
            for worker in self._workers:
                worker.kill()
            self._workers.clear()
            self._idle.clear()


@atexit.register
def _close_children() -> None:
    for instance in _VerifyProcess._instances.values():
        instance.kill()


class MathJudger:
    """Outcome judge for math answers: ``judge(prediction_text, reference_answer) -> bool``.

    Args:
        timeout: hard wall-clock limit in seconds for one judgement, from the call (a judgement over it is False;
            the first one that needs math-verify also pays the child's ~2 s start unless ``warm_up()`` ran).
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
        """True when the final answer in ``prediction_text`` equals ``reference_answer``; False after ``timeout``
        seconds from the call, whatever the input (extraction, rules and math-verify all count)."""
        return self.judge_many([(prediction_text, reference_answer)])[0]

    def judge_many(self, pairs: Iterable[tuple[str, str]]) -> list[bool]:
        """Judge many (prediction_text, reference_answer) pairs: each within ``timeout`` s, the call within
        ``timeout * len(pairs)`` s from its start."""
        started = time.monotonic()
        pairs = list(pairs)
        call_deadline = started + self.timeout * max(1, len(pairs))
        verdicts = [False] * len(pairs)
        pending: dict[tuple[str, str], list[int]] = {}
        for index, (prediction_text, reference) in enumerate(pairs):
            key = self._key(prediction_text, reference)  # linear-time string work, bounded by _MAX_SCAN
            if key is None:
                continue
            cached = self._cache_get(key)
            if cached is None:
                cached = rule_verdict(*key)  # bounded: canonical forms cap sizes and algebra
                if cached is not None:
                    self._cache_put(key, cached)
            if cached is not None:
                verdicts[index] = cached
            else:
                pending.setdefault(key, []).append(index)
        if pending:
            for key, verdict in zip(pending, self._verify(list(pending), call_deadline)):
                for index in pending[key]:
                    verdicts[index] = verdict
        return verdicts

    def warm_up(self, timeout: float = 120.0) -> bool:
        """Start the math-verify child now (it takes ~2 s to import) and wait until it is ready, so that the first
        judgement that needs it does not spend its time limit on the start; True when it is ready."""
        return _VerifyProcess.shared().warm_up(timeout)

    def _key(self, prediction_text: str, reference: str) -> tuple[str, str] | None:
        """(answer, bare reference), or None when there is nothing that could be right."""
        if reference is None:
            return None
        answer = self.extract(prediction_text)
        if answer is None or len(answer) > _MAX_ANSWER_CHARS:
            return None
        reference = normalize_reference(str(reference))
        if not reference or len(reference) > _MAX_ANSWER_CHARS:
            return None  # an empty reference matches nothing (not even an empty \boxed{})
        return answer, reference

    def _verify(self, keys: list[tuple[str, str]], call_deadline: float) -> list[bool]:
        """math-verify verdicts, one request per pair so that a slow pair costs only itself."""
        pool = _VerifyProcess.shared()
        verdicts = [False] * len(keys)
        worker = pool.acquire(min(call_deadline, time.monotonic() + self.timeout))
        if worker is None:
            return verdicts  # every child busy until the deadline: False, not cached (no verdict was reached)
        try:
            for index, key in enumerate(keys):
                sent = time.monotonic()
                deadline = min(call_deadline, sent + self.timeout)
                try:
                    # Gold first in the worker: math-verify's comparison is not symmetric.
                    batch = worker.verify([key], deadline)
                except _NotReady:
                    continue  # the child was still starting: False, not cached
                if batch is None:
                    if deadline - sent >= 0.5 * self.timeout:
                        self._cache_put(key, False)  # it had (most of) the limit to itself: never retried
                    continue
                verdicts[index] = batch[0]
                self._cache_put(key, batch[0])
        finally:
            pool.release(worker)
        return verdicts

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
