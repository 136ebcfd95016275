"""Problems and the loaders that read them from local JSONL files or the Hugging Face hub.

Why local-first: these machines (and many clusters) have no hub access, so every loader takes a path to the
PRM800K-schema / GSM8K JSONL files; a hub name is tried only when asked for, through ``datasets`` (an extra).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DatasetNotFoundError",
    "Problem",
    "gsm8k_solution_steps",
    "load_gsm8k",
    "load_math",
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


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as error:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({error})") from error
    return rows


def _looks_like_hub_name(source: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", source)) and not Path(source).exists()


def _load_rows(source: str | os.PathLike, env_id: str, hub_split: str, hub_config: str | None) -> list[dict]:
    path = Path(source).expanduser()
    if path.is_file():
        return _read_jsonl(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if files:
            return [row for file in files for row in _read_jsonl(file)]
    if isinstance(source, str) and _looks_like_hub_name(source):
        try:
            import datasets
        except ImportError as error:
            raise DatasetNotFoundError(
                f"{env_id}: '{source}' looks like a Hugging Face hub dataset, but the `datasets` package is not "
                "installed (pip install 'openr-gym[hub]'), or pass data_path= a local JSONL file."
            ) from error
        try:
            return [dict(row) for row in datasets.load_dataset(source, hub_config, split=hub_split)]
        except Exception as error:  # noqa: BLE001 - offline machines fail in many ways; one clear message
            raise DatasetNotFoundError(
                f"{env_id}: could not load '{source}' from the Hugging Face hub ({type(error).__name__}: {error}). "
                f"Offline? Pass a local JSONL file: gym.make('{env_id}', data_path='/path/to/file.jsonl')."
            ) from error
    raise DatasetNotFoundError(
        f"{env_id}: no dataset at '{source}'. Pass gym.make('{env_id}', data_path='/path/to/file.jsonl') "
        "(a local JSONL file or folder) or a Hugging Face hub name, or set $OPENR_GYM_DATA to a folder holding "
        "math/test500.jsonl and gsm8k/test.jsonl."
    )


def load_math(
    source: str | os.PathLike,
    levels: Iterable[int] | None = None,
    subjects: Iterable[str] | None = None,
    split: str = "test",
) -> list[Problem]:
    """MATH problems in the PRM800K schema (problem, solution, answer, subject, level, unique_id).

    Rows without an answer are skipped; ``levels`` / ``subjects`` filter (subjects case-insensitively).
    """
    rows = _load_rows(source, "openr/MATH-v0", split, None)
    level_set = {int(level) for level in levels} if levels is not None else None
    subject_set = {subject.lower() for subject in subjects} if subjects is not None else None
    problems = []
    for index, row in enumerate(rows):
        answer = row.get("answer")
        if answer is None or row.get("problem") is None:
            continue
        level = _level(row.get("level"))
        subject = str(row.get("subject") or row.get("type") or "")
        if level_set is not None and level not in level_set:
            continue
        if subject_set is not None and subject.lower() not in subject_set:
            continue
        problems.append(
            Problem(
                id=str(row.get("unique_id") or f"math-{index}"),
                question=str(row["problem"]),
                answer=str(answer),
                solution=row.get("solution"),
                meta={"level": level, "subject": subject},
            )
        )
    if not problems:
        raise DatasetNotFoundError(
            f"openr/MATH-v0: no problems in '{source}' match levels={levels} subjects={subjects}"
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
    """GSM8K problems (question, answer ending in ``#### N``); the worked rationale becomes ``solution``."""
    rows = _load_rows(source, "openr/GSM8K-v0", split, "main")
    problems = []
    for index, row in enumerate(rows):
        if "question" not in row or "answer" not in row:
            continue
        solution, answer = gsm8k_solution_steps(str(row["answer"]))
        problems.append(
            Problem(
                id=f"gsm8k-{split}-{index}", question=str(row["question"]), answer=answer, solution=solution
            )
        )
    if not problems:
        raise DatasetNotFoundError(f"openr/GSM8K-v0: '{source}' holds no rows with 'question' and 'answer'")
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
