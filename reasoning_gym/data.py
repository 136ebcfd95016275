"""Problems and the loaders that read them from local JSONL files or the Hugging Face hub.

Why local-first: these machines (and many clusters) have no hub access, so every loader takes a path to the
PRM800K-schema / GSM8K JSONL files; a hub name is tried only when asked for, through ``datasets`` (an extra).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reasoning_gym.judging.answer import normalize_number

__all__ = [
    "DatasetNotFoundError",
    "Problem",
    "gsm8k_solution_steps",
    "load_gsm8k",
    "load_math",
    "parse_levels",
    "shared_data_dir",
]

_CALC_ANNOTATION = re.compile(r"<<[^<>]*>>")


@dataclass(frozen=True)
class Problem:
    """One task: ``question`` is shown to the model, ``answer`` (the reference) never is.

    ``solution`` is a worked solution in the env's step format (steps separated by blank lines, final ``\\boxed{}``)
    when the source has one.
    """

    id: str
    question: str
    answer: str
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class DatasetNotFoundError(FileNotFoundError):
    """Raised once, with instructions, when an env has no data to read."""


def shared_data_dir() -> Path | None:
    """The read-only data folder for tests and benchmarks (``$OPENR_GYM_DATA`` or ``../shared/data``), if present."""
    candidates = [os.environ.get("OPENR_GYM_DATA")]
    here = Path(__file__).resolve().parent.parent
    candidates += [str(here.parent / "shared" / "data"), str(Path.cwd().parent / "shared" / "data")]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def _read_jsonl(path: Path, env_id: str) -> list[dict[str, Any]]:
    """The JSON objects of one JSONL file; an empty file or a line that is not a JSON object is an error."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{env_id}: {path}:{line_number}: not valid JSON ({error})") from error
            if not isinstance(row, dict):
                raise ValueError(
                    f"{env_id}: {path}:{line_number}: a JSONL row must be a JSON object, got {type(row).__name__}"
                )
            rows.append(row)
    if not rows:
        raise DatasetNotFoundError(f"{env_id}: '{path}' is empty (no JSON rows)")
    return rows


_DATA_SUFFIXES = (".jsonl", ".json", ".gz", ".parquet", ".csv", ".txt", ".arrow")


def _looks_like_path(source: str) -> bool:
    """True when ``source`` was meant as a local path (absolute, relative with ./ or ../, ~, a file suffix, more
    than one '/', or a first component that exists here), never a hub name."""
    if source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") != 1:
        return True
    if source.lower().endswith(_DATA_SUFFIXES):
        return True
    return Path(source.split("/", 1)[0]).exists()


def _load_rows(source: str | os.PathLike, env_id: str, hub_split: str, hub_config: str | None) -> list[dict]:
    path = Path(source).expanduser()
    if path.is_file():
        return _read_jsonl(path, env_id)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise DatasetNotFoundError(f"{env_id}: the folder '{path}' holds no *.jsonl files")
        return [row for file in files for row in _read_jsonl(file, env_id)]
    if isinstance(source, str) and not _looks_like_path(source):
        try:
            import datasets
        except ImportError as error:
            raise DatasetNotFoundError(
                f"{env_id}: '{source}' is not a local file or folder and looks like a Hugging Face hub dataset, but "
                "the `datasets` package is not installed (pip install 'openr-gym[hub]'), or pass data_path= a local "
                "JSONL file."
            ) from error
        try:
            return [dict(row) for row in datasets.load_dataset(source, hub_config, split=hub_split)]
        except Exception as error:  # noqa: BLE001 - offline machines fail in many ways; one clear message
            raise DatasetNotFoundError(
                f"{env_id}: '{source}' is not a local file or folder, and loading it from the Hugging Face hub "
                f"failed ({type(error).__name__}: {error}). Offline? Pass a local JSONL file: "
                f"gym.make('{env_id}', data_path='/path/to/file.jsonl')."
            ) from error
    raise DatasetNotFoundError(
        f"{env_id}: no such file or folder: '{path}' (resolved from the current directory {Path.cwd()}). Pass "
        f"gym.make('{env_id}', data_path='/path/to/file.jsonl') (a local JSONL file or folder) or a Hugging Face "
        "hub name like 'owner/name', or set $OPENR_GYM_DATA to a folder holding math/test500.jsonl and "
        "gsm8k/test.jsonl."
    )


def parse_levels(levels: int | Iterable[int] | None, allowed: Iterable[int] | None = None) -> set[int] | None:
    """``levels`` as a set of ints (one int or several); a non-integer (``1.7``, ``"2"``, ``True``) or a level outside
    ``allowed`` is an error, never silently rounded."""
    if levels is None:
        return None
    values = [levels] if isinstance(levels, (int, float, str, np.integer, np.floating)) else list(levels)
    result = set()
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"levels must be integers, got {value!r} ({type(value).__name__})")
        result.add(int(value))
    allowed_set = set(allowed) if allowed is not None else None
    if not result or (allowed_set is not None and not result <= allowed_set):
        raise ValueError(
            f"levels must be a non-empty subset of {sorted(allowed_set) if allowed_set else 'the integers'}, got "
            f"{sorted(result)}"
        )
    return result


def _skipped(env_id: str, source: str | os.PathLike, reason: str, ids: list[str]) -> None:
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    warnings.warn(f"{env_id}: skipped {len(ids)} row(s) of '{source}' {reason}: {shown}", stacklevel=3)


def load_math(
    source: str | os.PathLike,
    levels: int | Iterable[int] | None = None,
    subjects: str | Iterable[str] | None = None,
    split: str = "test",
) -> list[Problem]:
    """MATH problems in the PRM800K schema (problem, solution, answer, subject, level, unique_id).

    Rows without an answer (``None`` or empty, like ``train/number_theory/7115``) are skipped with a warning;
    ``levels`` / ``subjects`` filter (subjects case-insensitively). Every error names the file and what is wrong.
    """
    env_id = "openr/MATH-v0"
    rows = _load_rows(source, env_id, split, None)
    level_set = parse_levels(levels)
    if isinstance(subjects, str):
        subjects = [subjects]
    subject_set = {str(subject).lower() for subject in subjects} if subjects is not None else None
    if not any("problem" in row for row in rows):
        hint = "; a GSM8K file? use openr/GSM8K-v0" if "question" in rows[0] else ""
        raise DatasetNotFoundError(
            f"{env_id}: '{source}' is not in the MATH (PRM800K) schema: rows need 'problem' and 'answer', the first "
            f"row has {sorted(rows[0])}{hint}"
        )
    problems, no_answer, no_problem = [], [], []
    available_levels, available_subjects = set(), set()
    for index, row in enumerate(rows):
        problem_id = str(row.get("unique_id") or f"math-{index}")
        answer = row.get("answer")
        if row.get("problem") is None:
            no_problem.append(problem_id)
            continue
        if answer is None or not str(answer).strip():
            no_answer.append(problem_id)
            continue
        level = _level(row.get("level"))
        subject = str(row.get("subject") or row.get("type") or "")
        available_levels.add(level)
        available_subjects.add(subject)
        if level_set is not None and level not in level_set:
            continue
        if subject_set is not None and subject.lower() not in subject_set:
            continue
        problems.append(
            Problem(
                id=problem_id,
                question=str(row["problem"]),
                answer=str(answer).strip(),
                solution=row.get("solution"),
                meta={"level": level, "subject": subject},
            )
        )
    if no_problem:
        _skipped(env_id, source, "without a 'problem'", no_problem)
    if no_answer:
        _skipped(env_id, source, "without an answer (nothing to judge against)", no_answer)
    if not problems:
        if not available_levels:
            raise DatasetNotFoundError(f"{env_id}: '{source}' has no row with both a problem and an answer")
        raise DatasetNotFoundError(
            f"{env_id}: no problems in '{source}' match levels={sorted(level_set) if level_set else None} "
            f"subjects={sorted(subject_set) if subject_set else None}; it has levels "
            f"{sorted(level for level in available_levels if level is not None)} and subjects "
            f"{sorted(available_subjects)}"
        )
    return problems


def _level(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    match = re.search(r"\d+", str(value or ""))
    return int(match.group()) if match else None


def gsm8k_solution_steps(rationale: str) -> tuple[str, str]:
    """GSM8K's rationale ("...<<48/2=24>>...\\n#### 72") as (steps in the env format, bare answer)."""
    body, _, final = rationale.rpartition("####")
    answer = final.strip().replace(",", "")
    lines = [_CALC_ANNOTATION.sub("", line).strip() for line in body.strip().splitlines()]
    steps = [line for line in lines if line]
    steps.append(f"The answer is \\boxed{{{answer}}}.")
    return "\n\n".join(steps), answer


def load_gsm8k(source: str | os.PathLike, split: str = "test") -> list[Problem]:
    """GSM8K problems (question, answer ending in ``#### N``); the worked rationale becomes ``solution``.

    Rows whose answer has no ``#### N`` are skipped with a warning; every error names the file and what is wrong.
    """
    env_id = "openr/GSM8K-v0"
    rows = _load_rows(source, env_id, split, "main")
    if not any("question" in row and "answer" in row for row in rows):
        hint = "; a MATH file? use openr/MATH-v0" if "problem" in rows[0] else ""
        raise DatasetNotFoundError(
            f"{env_id}: '{source}' is not in the GSM8K schema: rows need 'question' and 'answer' ('... #### N'), "
            f"the first row has {sorted(rows[0])}{hint}"
        )
    problems, no_answer = [], []
    for index, row in enumerate(rows):
        problem_id = f"gsm8k-{split}-{index}"
        if "question" not in row or "answer" not in row:
            no_answer.append(problem_id)
            continue
        solution, answer = gsm8k_solution_steps(str(row["answer"]))
        if not answer or ("####" not in str(row["answer"]) and normalize_number(answer) is None):
            no_answer.append(problem_id)
            continue
        problems.append(
            Problem(id=problem_id, question=str(row["question"]), answer=answer, solution=solution)
        )
    if no_answer:
        _skipped(env_id, source, "without a question or a final '#### N' answer", no_answer)
    if not problems:
        raise DatasetNotFoundError(f"{env_id}: '{source}' has no row with a question and a '#### N' answer")
    return problems


def find_default(relative: str) -> Path | None:
    """``$OPENR_GYM_DATA/<relative>`` (or the shared data folder) when it exists."""
    root = shared_data_dir()
    if root is not None and (root / relative).is_file():
        return root / relative
    return None


def index_problems(problems: Sequence[Problem]) -> dict[str, Problem]:
    index = {problem.id: problem for problem in problems}
    if len(index) != len(problems):
        raise ValueError("problem ids are not unique")
    return index
