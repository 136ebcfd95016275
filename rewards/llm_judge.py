"""OREAL-style outcome judge: the rule-based ``MathJudger`` decides what it can, an LLM decides the rest.

Why: rule-based matching misses equivalent answers written differently (``1/2`` vs ``0.5 of the total``, units,
words), which turns correct solutions into false negatives (OREAL, Lyu et al. 2025, uses a rule verifier plus an
LLM judge for this). The LLM is any ``rewards.protocols.LanguageModel`` (an ``agents.engines`` engine: in-process,
vLLM, or an OpenAI-compatible server), handed in by the caller.

Guarantees: a rule-level "correct" is final and never costs an LLM call; LLM verdicts are cached; every LLM call
runs under a wall-clock ``timeout``; when the model is unreachable, slow or its reply is unreadable, the judge
falls back to the rule verdict, says so in ``JudgeVerdict.source`` and leaves the model alone for ``retry_after``
seconds (one warning, not one per call).
"""

from __future__ import annotations

import atexit
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rewards.protocols import LanguageModel

__all__ = ["DEFAULT_JUDGE_PROMPT", "JudgeVerdict", "LLMJudge", "parse_yes_no"]

logger = logging.getLogger(__name__)

Source = Literal["rule", "llm", "cache", "fallback"]

DEFAULT_JUDGE_PROMPT = (
    "You check answers to math problems. Decide whether the student's final answer is mathematically equivalent "
    "to the reference answer (ignore formatting, units written out, and equivalent forms).\n\n"
    "Problem: {question}\n\nReference answer: {reference}\n\nStudent's final answer: {answer}\n\n"
    "Is the student's answer equivalent to the reference answer? Reply with one word: YES or NO."
)

_YES_NO = re.compile(r"\b(yes|no|correct|incorrect|true|false)\b", re.IGNORECASE)
_POSITIVE = {"yes", "correct", "true"}
_MAX_TAIL_CHARS = 1000
_EXIT_DRAIN_SECONDS = 30.0
_in_flight: set[threading.Thread] = set()


@atexit.register
def _drain_in_flight() -> None:
    """Give abandoned (timed-out) calls a bounded chance to finish before the interpreter tears down: an
    in-process model still running in a daemon thread at exit can abort the process."""
    deadline = time.monotonic() + _EXIT_DRAIN_SECONDS
    for thread in list(_in_flight):
        thread.join(max(0.0, deadline - time.monotonic()))


def parse_yes_no(reply: str) -> bool | None:
    """The first yes/no-like word of a reply (YES / NO, correct / incorrect, true / false), or None."""
    match = _YES_NO.search(reply or "")
    return None if match is None else match.group(1).lower() in _POSITIVE


@dataclass(frozen=True)
class JudgeVerdict:
    """A verdict and where it came from: ``rule`` (MathJudger said correct), ``llm``, ``cache`` (an earlier LLM
    verdict) or ``fallback`` (rule verdict because the LLM was unavailable, slow or unreadable; see ``detail``)."""

    correct: bool
    source: Source
    detail: str = ""


class LLMJudge:
    """``judge(prediction_text, reference_answer, question="") -> bool`` with a rule-first, LLM-second policy.

    Arguments:
        model: a ``LanguageModel`` (engine) or None (then this is just the rule judger, with fallback verdicts).
        rule_judger: defaults to ``rewards.MathJudger()``; anything with ``judge`` and optionally ``extract``.
        timeout: seconds allowed for one batched LLM call.
        retry_after: seconds to skip the LLM after it failed (unreachable, timed out).
        prompt_template: formatted with ``question``, ``reference``, ``answer``; sent as one user message.
        max_new_tokens: length of the LLM reply (one word is enough).
        cache_size: LLM verdicts kept.
    """

    def __init__(
        self,
        model: LanguageModel | None,
        *,
        rule_judger: Any = None,
        timeout: float = 30.0,
        retry_after: float = 60.0,
        prompt_template: str = DEFAULT_JUDGE_PROMPT,
        max_new_tokens: int = 8,
        cache_size: int = 100_000,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if rule_judger is None:
            from rewards.judge import MathJudger

            rule_judger = MathJudger()
        self.model = model
        self.rule_judger = rule_judger
        self.timeout = float(timeout)
        self.retry_after = float(retry_after)
        self.prompt_template = prompt_template
        self.max_new_tokens = max_new_tokens
        self.cache_size = cache_size
        self.counts: dict[str, int] = {"rule": 0, "llm": 0, "cache": 0, "fallback": 0}
        self._cache: OrderedDict[tuple[str, str, str], bool] = OrderedDict()
        self._lock = threading.Lock()
        self._unavailable_until = 0.0

    # -- public API ------------------------------------------------------------------------------------------
    def judge(self, prediction_text: str, reference_answer: str, question: str = "") -> bool:
        return self.verdict(prediction_text, reference_answer, question).correct

    def verdict(self, prediction_text: str, reference_answer: str, question: str = "") -> JudgeVerdict:
        return self.verdict_many([(prediction_text, reference_answer, question)])[0]

    def judge_many(self, items: Sequence[tuple[str, str] | tuple[str, str, str]]) -> list[bool]:
        return [v.correct for v in self.verdict_many(items)]

    def verdict_many(self, items: Sequence[tuple[str, str] | tuple[str, str, str]]) -> list[JudgeVerdict]:
        """Judge (prediction_text, reference_answer[, question]) items with at most one batched LLM call."""
        results: list[JudgeVerdict | None] = [None] * len(items)
        asks: dict[tuple[str, str, str], list[int]] = {}
        for index, item in enumerate(items):
            prediction, reference = item[0], item[1]
            question = item[2] if len(item) > 2 else ""
            if self.rule_judger.judge(prediction, reference):
                results[index] = JudgeVerdict(True, "rule")
                continue
            key = (str(question), self._answer_text(prediction), str(reference))
            cached = self._cache_get(key)
            if cached is not None:
                results[index] = JudgeVerdict(cached, "cache")
            else:
                asks.setdefault(key, []).append(index)
        if asks:
            keys = list(asks)
            for key, verdict in zip(keys, self._ask(keys)):
                for index in asks[key]:
                    results[index] = verdict
        for verdict in results:
            self.counts[verdict.source] += 1
        return results  # type: ignore[return-value]

    # -- internals -------------------------------------------------------------------------------------------
    def _answer_text(self, prediction: str) -> str:
        extract = getattr(self.rule_judger, "extract", None)
        answer = extract(prediction) if callable(extract) else None
        text = answer if answer is not None else str(prediction)[-_MAX_TAIL_CHARS:]
        return text.strip()

    def _prompt(self, key: tuple[str, str, str]) -> list[dict[str, str]]:
        question, answer, reference = key
        content = self.prompt_template.format(
            question=question or "(not given)", reference=reference, answer=answer
        )
        return [{"role": "user", "content": content}]

    def _ask(self, keys: list[tuple[str, str, str]]) -> list[JudgeVerdict]:
        """Rule verdict (False) for every key unless the LLM answers in time."""
        now = time.monotonic()
        if self.model is None:
            return [JudgeVerdict(False, "fallback", "no LLM configured")] * len(keys)
        if now < self._unavailable_until:
            reason = f"LLM skipped for {self._unavailable_until - now:.0f} s more after a failure"
            return [JudgeVerdict(False, "fallback", reason)] * len(keys)
        replies, error = self._generate_with_deadline([self._prompt(k) for k in keys])
        if error is not None:
            self._unavailable_until = time.monotonic() + self.retry_after
            logger.warning(
                "LLM judge unavailable (%s); using rule verdicts for %.0f s", error, self.retry_after
            )
            return [JudgeVerdict(False, "fallback", error)] * len(keys)
        verdicts = []
        for key, reply in zip(keys, replies):
            parsed = parse_yes_no(reply)
            if parsed is None:
                verdicts.append(JudgeVerdict(False, "fallback", f"unreadable reply {reply[:80]!r}"))
                continue
            self._cache_put(key, parsed)
            verdicts.append(JudgeVerdict(parsed, "llm", reply.strip()[:200]))
        return verdicts

    def _generate_with_deadline(self, prompts: list[list[dict[str, str]]]) -> tuple[list[str], str | None]:
        """Run the engine in a daemon thread so a hung server can never block the caller (or interpreter exit)."""
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                out = self.model.generate(  # type: ignore[union-attr]
                    prompts, n=1, max_new_tokens=self.max_new_tokens, temperature=0.0, stop=["\n"]
                )
                box["replies"] = [group[0].text if group else "" for group in out]
            except BaseException as err:  # noqa: BLE001 - any engine failure means "fall back"
                box["error"] = f"{type(err).__name__}: {err}"
            finally:
                _in_flight.discard(threading.current_thread())

        worker = threading.Thread(target=call, name="llm-judge", daemon=True)
        _in_flight.add(worker)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            return [], f"timed out after {self.timeout:g} s"
        if "error" in box:
            return [], box["error"]
        replies = box.get("replies", [])
        if len(replies) != len(prompts):
            return [], f"engine returned {len(replies)} replies for {len(prompts)} prompts"
        return replies, None

    def _cache_get(self, key: tuple[str, str, str]) -> bool | None:
        with self._lock:
            verdict = self._cache.get(key)
            if verdict is not None:
                self._cache.move_to_end(key)
            return verdict

    def _cache_put(self, key: tuple[str, str, str], verdict: bool) -> None:
        with self._lock:
            self._cache[key] = verdict
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
