"""Turning a model's text step into an ALFWorld command (or a thought), with a clear reason when it is not one.

Why: language models write ``> Go to countertop 1.``, ``Action: take apple 1 from table 1`` or ALFWorld-0.3 syntax
(``put apple 1 in fridge 1``); the game only knows its exact lower-case commands (0.4: ``move apple 1 to fridge 1``).
Normalizing these harmless variants keeps the benchmark about acting, not about punctuation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ParsedStep", "parse_step", "THINK_PREFIX"]

THINK_PREFIX = "think:"
_PREFIXES = re.compile(r"^(?:>\s*|action\s*:\s*|command\s*:\s*)+", re.IGNORECASE)
_PUT_03 = re.compile(r"^put (?P<obj>.+?) (?:in|on|in/on|into|onto) (?P<recep>.+)$")


@dataclass(frozen=True)
class ParsedStep:
    """``kind`` is ``"think"``, ``"command"`` or ``"empty"``; ``command`` is the normalized game command."""

    kind: str
    command: str = ""
    thought: str = ""


def normalize_command(text: str) -> str:
    """Lower-case, single-spaced, without prompt markers, quotes or a final period."""
    text = " ".join(text.split())
    text = _PREFIXES.sub("", text)
    text = text.strip().strip("`'\"").strip()
    text = text.rstrip(".!").strip().lower()
    return text


def parse_step(text: str) -> ParsedStep:
    """Classify one (already sanitized) step."""
    stripped = text.strip()
    if not stripped:
        return ParsedStep("empty")
    head = _PREFIXES.sub("", stripped).lstrip()
    if head.lower().startswith(THINK_PREFIX):
        return ParsedStep("think", thought=" ".join(head[len(THINK_PREFIX) :].split()))
    command = normalize_command(stripped)
    if not command:
        return ParsedStep("empty")
    return ParsedStep("command", command=command)


def command_variants(command: str) -> list[str]:
    """The command plus equivalent spellings from older ALFWorld versions (``put X in Y`` -> ``move X to Y``)."""
    variants = [command]
    match = _PUT_03.match(command)
    if match:
        variants.append(f"move {match['obj']} to {match['recep']}")
    return variants
