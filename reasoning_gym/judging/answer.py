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

_BOXED_OPENER = re.compile(r"\\(?:boxed|fbox)\{")
# A final-answer line up to the word that introduces the answer; what follows is read by ``_answer_after``.
# Every repetition is bounded or anchored at a literal, so one search is linear in the line's length.
_ANSWER_LEAD = re.compile(
    r"(?:final\s+)?answer(?:\s+(?:to|for|of)\s+[^:\n]{0,80}?)?\s*(?:\bis\b\s*:?|:|=)\s*", re.IGNORECASE
)
_HASHES = re.compile(r"####\s*")
# Math delimiters (their insides are never a sentence end) and a sentence end: a period before white space.
_MATH_OR_PERIOD = re.compile(r"\$\$|\$|\\\(|\\\)|\\\[|\\\]|\.(?=\s)")
_MATH_CLOSER = {"$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}
_BRACE = re.compile(r"\\[{}]|[{}]")  # escaped braces first: they never open or close a group
_NUMBER_RUN = re.compile(
    r"-?\.?\d[\d.,]*"
)  # a maximal run of digits, points and commas: each character read once
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?|-?\.\d+")
# 1,234,567: commas only between groups of 3, and a leading group never starts with 0 (0,111 is not 111)
_GROUPED = re.compile(r"^[-+]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d*)?$")
_PLAIN_NUMBER = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)$")
_TRAILING_WORDS = re.compile(r"(?<=\d)\s+[A-Za-z][A-Za-z ]{0,40}$")
_MAX_SCAN = 200_000  # characters of a step/response we scan; beyond that only the tail counts


def _closed_braces(text: str) -> dict[int, int]:
    """Index of every ``{`` that is closed -> index of its ``}`` (escaped braces skipped); one linear pass."""
    closing: dict[int, int] = {}
    open_stack: list[int] = []
    for match in _BRACE.finditer(text):
        brace = match.group()
        if brace == "{":
            open_stack.append(match.start())
        elif brace == "}" and open_stack:
            closing[open_stack.pop()] = match.start()
    return closing


def _close_of(text: str, content_start: int) -> int:
    """Index of the ``}`` closing the ``{`` just before ``content_start``, or -1; linear in the rest of the text."""
    depth = 1
    for match in _BRACE.finditer(text, content_start):
        brace = match.group()
        if brace == "{":
            depth += 1
        elif brace == "}":
            depth -= 1
            if depth == 0:
                return match.start()
    return -1


def _boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start of content, closing ``}`` or -1 when never closed) of every ``\\boxed{`` / ``\\fbox{``, in order."""
    openers = [match.end() for match in _BOXED_OPENER.finditer(text)]
    if not openers:
        return []
    closing = _closed_braces(text)
    return [(start, closing.get(start - 1, -1)) for start in openers]


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, or None.

    A trailing unbalanced one does not hide an earlier complete answer. Linear in ``len(text)``.
    """
    text = text[-_MAX_SCAN:]
    boxed, fbox = text.rfind("\\boxed{"), text.rfind("\\fbox{")
    if boxed == -1 and fbox == -1:
        return None
    content = boxed + len("\\boxed{") if boxed > fbox else fbox + len("\\fbox{")
    close = _close_of(text, content)  # the common case: the last box is complete (a scan of the tail only)
    if close != -1:
        return text[content:close].strip()
    for start, close in reversed(_boxed_spans(text)):
        if close != -1:
            return text[start:close].strip()
    return None


def has_unbalanced_boxed(text: str) -> bool:
    """True when some ``\\boxed{`` is never closed (a malformed final answer)."""
    return any(close == -1 for _, close in _boxed_spans(text[-_MAX_SCAN:]))


def _answer_after(line: str, start: int) -> str:
    """The answer at ``line[start:]``: up to the end of its sentence (a period before white space outside
    ``$...$`` / ``\\(...\\)``), so "$\\frac{1}{2}$. I hope it is correct." reads ``\\frac{1}{2}``."""
    closer = None
    end = len(line)
    for match in _MATH_OR_PERIOD.finditer(line, start):
        token = match.group()
        if closer is not None:
            if token == closer:
                closer = None
        elif token in _MATH_CLOSER:
            closer = _MATH_CLOSER[token]
        elif token == ".":
            end = match.start()
            break
    answer = line[start:end].strip().rstrip(".").strip()
    for opener, math_closer in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(opener) and answer.endswith(math_closer) and len(answer) > len(opener):
            answer = answer[len(opener) : len(answer) - len(math_closer)]
            break
    return answer.strip().strip("$").strip()


def extract_final_answer_line(text: str) -> str | None:
    """The answer of a final-answer line ("The answer is 7.", "Final answer: 7", "#### 7"), or None.

    Only the last non-blank line counts, and on it the last lead ("answer is", "answer:", ...); the answer ends at
    its sentence's end. Linear in ``len(text)``.
    """
    lines = text[-_MAX_SCAN:].splitlines()
    last = next((line for line in reversed(lines) if line.strip()), None)
    if last is None:
        return None
    for pattern in (_HASHES, _ANSWER_LEAD):
        # The last lead counts: "Final Answer: The final answer is $5$. I hope it is correct." reads 5.
        for match in reversed(list(pattern.finditer(last))):
            answer = _answer_after(last, match.end())
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
    runs = _NUMBER_RUN.findall(text[-_MAX_SCAN:])
    if not runs:
        return None
    run = runs[-1].rstrip(".,")
    if _GROUPED.match(run):  # 1,234,567
        return normalize_number(run)
    matches = _NUMBER.findall(
        run.rsplit(",", 1)[-1]
    )  # "3,5,7" -> 7; "0,111" -> 111 only as the last of a list
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
