"""Process-supervision data files: read Math-Shepherd, PRM800K and MATH-APS into one record type, write the first
and the last.

Why one record type: the PRM trainer should not care where labels came from. ``StepExample.labels[j]`` is the
probability that step ``j`` is correct (1.0 / 0.0 for hard labels, a Monte-Carlo fraction for soft ones) or
``None`` when that step carries no label (MATH-APS labels only the last step of each prefix); the trainer puts
loss only on labelled step tags.

Formats (samples in ``../shared/data``):
- Math-Shepherd: ``{"input": "<question> Step 1: ... ки\\nStep 2: ... ки", "label": same with +/- for ки, "task"}``.
- PRM800K: ``{"question": {"problem", "ground_truth_answer"}, "label": {"steps": [{"completions": [{"text",
  "rating"}], "human_completion", "chosen_completion"}], "finish_reason"}}``; ratings 1 / 0 / -1.
- MATH-APS (OpenR / OmegaPRM): ``{"question", "final_answer", "question_id", "reasoning_steps":
  [{"solution_prefix": question + partial solution (steps separated by blank lines), "mc_value"}]}``.
- samples (``experiments/collect_prm_data.py``'s ``samples.jsonl``): ``{"question", "steps", "values", "correct",
  "problem_id", ...}``; one whole solution with a Monte-Carlo value per step (soft labels on every step).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "StepExample",
    "detect_format",
    "math_aps_record",
    "math_shepherd_record",
    "read_examples",
    "read_math_aps",
    "read_math_shepherd",
    "read_prm800k",
    "read_samples",
]

_TAG = "ки"
_STEP_PREFIX = re.compile(r"^\s*Step\s*\d+\s*:\s*")


@dataclass
class StepExample:
    """One solution with per-step labels (``None`` = unlabelled step)."""

    question: str
    steps: list[str]
    labels: list[float | None]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.steps) != len(self.labels):
            raise ValueError(f"{len(self.steps)} steps but {len(self.labels)} labels")


def _jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not JSON ({err})") from None


# ---------------------------------------------------------------- Math-Shepherd
def parse_math_shepherd(record: dict[str, Any]) -> StepExample:
    """Split ``input`` at each ``ки``; the label character sits at the same offset in ``label`` minus one per
    earlier tag (``ки`` is two characters, ``+`` / ``-`` one)."""
    text, label = record["input"], record.get("label")
    first = re.search(r"Step\s*1\s*:", text)
    head_end = first.start() if first else 0
    question = text[:head_end].strip()
    steps: list[str] = []
    labels: list[float | None] = []
    cursor = head_end
    tag_index = 0
    while True:
        at = text.find(_TAG, cursor)
        if at < 0:
            break
        steps.append(_STEP_PREFIX.sub("", text[cursor:at]).strip())
        value: float | None = None
        if label is not None:
            mark = label[at - tag_index : at - tag_index + 1]
            value = 1.0 if mark == "+" else 0.0 if mark == "-" else None
        labels.append(value)
        cursor = at + len(_TAG)
        tag_index += 1
    return StepExample(question, steps, labels, {"task": record.get("task")})


def read_math_shepherd(path: str | os.PathLike[str]) -> list[StepExample]:
    return [parse_math_shepherd(r) for r in _jsonl(path)]


def math_shepherd_record(
    question: str, steps: Sequence[str], hard_labels: Sequence[bool], task: str = ""
) -> dict:
    """One Math-Shepherd line (``input`` with ``ки`` tags, ``label`` with ``+`` / ``-``)."""
    from rewards.prm.formats import MATH_SHEPHERD

    marks = ["+" if good else "-" for good in hard_labels]
    return {
        "input": MATH_SHEPHERD.render(question, steps).rstrip("\n"),
        "label": MATH_SHEPHERD.render(question, steps, marks).rstrip("\n"),
        "task": task,
    }


# ---------------------------------------------------------------- PRM800K
def parse_prm800k(record: dict[str, Any], neutral: float = 1.0) -> StepExample:
    """Follow the chosen completion of each step (or the human one); when the labeller rejected every
    completion, keep the first rated -1 as the erroneous last step. Rating 0 (neutral) maps to ``neutral``."""
    rating_value = {1: 1.0, 0: neutral, -1: 0.0}
    steps: list[str] = []
    labels: list[float | None] = []
    for step in record["label"]["steps"]:
        completions = step.get("completions") or []
        chosen = step.get("chosen_completion")
        if chosen is not None and 0 <= chosen < len(completions):
            picked = completions[chosen]
            steps.append(picked["text"])
            labels.append(rating_value.get(picked.get("rating"), None))
            continue
        human = step.get("human_completion")
        if human:
            steps.append(human["text"])
            labels.append(1.0 if human.get("rating") is None else rating_value.get(human["rating"]))
            continue
        bad = next((c for c in completions if c.get("rating") == -1), None)
        if bad is not None:
            steps.append(bad["text"])
            labels.append(0.0)
        break
    question = record["question"]
    return StepExample(
        question["problem"],
        steps,
        labels,
        {
            "answer": question.get("ground_truth_answer"),
            "finish_reason": record["label"].get("finish_reason"),
        },
    )


def read_prm800k(path: str | os.PathLike[str], neutral: float = 1.0) -> list[StepExample]:
    return [parse_prm800k(r, neutral) for r in _jsonl(path)]


# ---------------------------------------------------------------- MATH-APS
def _split_solution(solution: str) -> list[str]:
    return [part.strip() for part in re.split(r"\n\s*\n", solution) if part.strip()]


def parse_math_aps(record: dict[str, Any]) -> list[StepExample]:
    """One example per solution prefix that has at least one step; only its last step is labelled (mc_value)."""
    question = record["question"]
    examples = []
    for entry in record.get("reasoning_steps", []):
        prefix = entry["solution_prefix"]
        rest = prefix[len(question) :] if prefix.startswith(question) else prefix
        steps = _split_solution(rest)
        if not steps:
            continue
        labels: list[float | None] = [None] * (len(steps) - 1) + [float(entry["mc_value"])]
        meta = {"answer": record.get("final_answer"), "question_id": record.get("question_id")}
        examples.append(StepExample(question, steps, labels, meta))
    return examples


def read_math_aps(path: str | os.PathLike[str]) -> list[StepExample]:
    return [ex for r in _jsonl(path) for ex in parse_math_aps(r)]


def math_aps_record(
    question: str,
    final_answer: str,
    solutions: Iterable[tuple[Sequence[str], Sequence[float]]],
    question_id: str,
) -> dict:
    """One MATH-APS line: every step prefix of every solution, with its Monte-Carlo value."""
    reasoning_steps = []
    for steps, values in solutions:
        for k, value in enumerate(values):
            prefix = question + "\n\n" + "\n\n".join(s.strip() for s in steps[: k + 1])
            reasoning_steps.append({"solution_prefix": prefix, "mc_value": float(value)})
    return {
        "question": question,
        "final_answer": final_answer,
        "reasoning_steps": reasoning_steps,
        "question_id": question_id,
    }


# ---------------------------------------------------------------- collect_prm_data samples
def parse_samples(record: dict[str, Any]) -> StepExample:
    """One sampled solution of ``experiments/collect_prm_data.py`` (``samples.jsonl``): its steps with their
    Monte-Carlo values (soft labels; hard = value > 0); the last value is the solution's own outcome."""
    meta = {"question_id": record.get("problem_id"), "correct": record.get("correct")}
    return StepExample(record["question"], list(record["steps"]), [float(v) for v in record["values"]], meta)


def read_samples(path: str | os.PathLike[str]) -> list[StepExample]:
    return [parse_samples(r) for r in _jsonl(path)]


# ---------------------------------------------------------------- any
def detect_format(path: str | os.PathLike[str]) -> str:
    """``math-shepherd``, ``prm800k`` or ``math-aps``, from the keys of the first record."""
    for record in _jsonl(path):
        if "input" in record and "label" in record:
            return "math-shepherd"
        if "reasoning_steps" in record:
            return "math-aps"
        if "steps" in record and "values" in record:
            return "samples"
        if isinstance(record.get("label"), dict) and "steps" in record["label"]:
            return "prm800k"
        raise ValueError(f"{path}: unknown process-supervision format (keys {sorted(record)})")
    raise ValueError(f"{path}: empty file")


def read_examples(path: str | os.PathLike[str], fmt: str = "auto") -> list[StepExample]:
    """Read any supported file (``fmt`` = ``auto`` | ``math-shepherd`` | ``prm800k`` | ``math-aps`` |
    ``samples``)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    readers = {
        "math-shepherd": read_math_shepherd,
        "prm800k": read_prm800k,
        "math-aps": read_math_aps,
        "samples": read_samples,
    }
    if fmt not in readers:
        raise ValueError(f"unknown format {fmt!r}; choose from {sorted(readers)}")
    return readers[fmt](path)
