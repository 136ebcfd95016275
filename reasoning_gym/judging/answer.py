"""Final-answer extraction from model text: pure string scanning, never evaluation.

Why our own scanner: the env must decide *per step* whether the model gave a final answer (to terminate), and the
judger must see exactly the answer the env saw. math-verify's own extraction is tuned for whole responses and may pick
up any number; here the rule is explicit: the last complete ``\\boxed{...}`` (or ``\\fbox{...}``), else a final-answer
line ("The answer is ...", "Final answer: ...", "#### ...").
"""

from __future__ import annotations

import re

__all__ = [
    "extract_answer",
    "extract_boxed",
    "extract_final_answer_line",
    "has_unbalanced_boxed",
    "last_number",
    "normalize_number",
]

_BOXED_OPENERS = ("\\boxed{", "\\fbox{")
_ANSWER_LINE = re.compile(
    r"(?:final\s+)?answer(?:\s+(?:to|for|of)\s+[^:\n]{0,80}?)?\s*(?:\bis\b\s*:?|:|=)\s*(?P<ans>[^\n]+?)[.\s]*$",
    re.IGNORECASE,
)
_HASHES = re.compile(r"####\s*(?P<ans>[^\n]+?)\s*$")
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?![\d,])(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")
_GROUPED = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d*)?$")  # 1,234,567: commas only between groups of 3
_PLAIN_NUMBER = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)$")
_TRAILING_WORDS = re.compile(r"(?<=\d)\s+[A-Za-z][A-Za-z ]{0,40}$")
_MAX_SCAN = 200_000  # characters of a step/response we scan; beyond that only the tail counts


def _matching_brace(text: str, open_index: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``open_index``, or -1 when unbalanced (escaped braces skipped)."""
    depth = 0
    i = open_index
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n and text[i + 1] in "{}":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, or None."""
    text = text[-_MAX_SCAN:]
    best_start = -1
    best = None
    for opener in _BOXED_OPENERS:
        start = text.rfind(opener)
        # Walk backwards until a complete one is found (a trailing unbalanced one must not hide an earlier answer).
        while start != -1:
            close = _matching_brace(text, start + len(opener) - 1)
            if close != -1:
                if start > best_start:
                    best_start, best = start, text[start + len(opener) : close].strip()
                break
            start = text.rfind(opener, 0, start)
    return best


def has_unbalanced_boxed(text: str) -> bool:
    """True when some ``\\boxed{`` is never closed (a malformed final answer)."""
    text = text[-_MAX_SCAN:]
    for opener in _BOXED_OPENERS:
        start = text.find(opener)
        while start != -1:
            if _matching_brace(text, start + len(opener) - 1) == -1:
                return True
            start = text.find(opener, start + 1)
    return False


def extract_final_answer_line(text: str) -> str | None:
    """The answer of a final-answer line ("The answer is 7.", "Final answer: 7", "#### 7"), or None."""
    lines = [line for line in text[-_MAX_SCAN:].splitlines() if line.strip()]
    if not lines:
        return None
    for pattern in (_HASHES, _ANSWER_LINE):
        match = pattern.search(lines[-1])
        if match:
            answer = match.group("ans").strip().rstrip(".").strip().strip("$").strip()
            if answer:
                return answer
    return None


def extract_answer(text: str) -> str | None:
    """The final answer stated in ``text``: the last complete ``\\boxed{}``, else a final-answer line, else None."""
    if not isinstance(text, str) or not text:
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    return extract_final_answer_line(text)


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (commas removed), the fallback GSM8K-style graders use."""
    matches = _NUMBER.findall(text[-_MAX_SCAN:])
    return normalize_number(matches[-1]) if matches else None


def normalize_number(text: str) -> str | None:
    """``"1,234.50"`` -> ``"1234.50"`` (``"3,5,7"`` -> None); ``"$12"`` / ``"12%"`` / ``"12 \\text{ cm}"`` -> ``"12"``; None if not a plain number."""
    cleaned = re.sub(r",\s*\\!\s*", ",", text.strip().strip("$"))  # 11,\! 111: a thousands separator
    cleaned = cleaned.replace("\\!", "").replace("{,}", ",")
    cleaned = re.sub(r"\\(?:text|mbox|mathrm)\{[^{}]*\}", "", cleaned)
    cleaned = cleaned.replace("\\%", "").replace("%", "").replace("\\$", "").strip()
    cleaned = _TRAILING_WORDS.sub("", cleaned.rstrip(".").strip())  # "7 apples" -> "7"
    if "," in cleaned:  # "3,5,7" is a list, not 357
        if not _GROUPED.match(cleaned):
            return None
        cleaned = cleaned.replace(",", "")
    return cleaned if _PLAIN_NUMBER.match(cleaned) else None
