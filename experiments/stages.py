"""A cache of pipeline stages: each stage's output folder is keyed by a hash of its config and its inputs' keys.

Why: the main job (``experiments/main_job.py``) chains expensive stages (SFT warm-start -> Monte-Carlo step labels
-> PRM training -> search). A stage whose config and inputs did not change is reused from disk; change one field
and that stage and every stage after it rebuild (their input keys change), the ones before stay. A stage is built
in ``<name>-<key>.partial/`` and renamed to ``<name>-<key>/`` only when it finished, with ``stage.json`` (its config,
inputs, summary and build time) written last, so an interrupted build is never mistaken for a finished one; a
stage may keep resumable work in its partial folder (``StageCache.run`` hands it over again on the next run).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["STAGE_FILE", "StageCache", "StageResult", "path_fingerprint", "stage_key"]

STAGE_FILE = "stage.json"


def stage_key(name: str, config: Mapping[str, Any], inputs: Sequence[str] = ()) -> str:
    """16 hex digits of sha256 over the stage name, its config (JSON, sorted keys) and its inputs' keys (in order)."""
    payload = json.dumps(
        {"stage": name, "config": config, "inputs": list(inputs)}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def path_fingerprint(name_or_path: str) -> str:
    """What identifies a model or data argument: a local file or folder by its files' names, sizes and modification
    times (so replacing the weights changes the key); anything else (an HF id, a built-in alias) by its name."""
    path = Path(name_or_path)
    if not path.exists():
        return str(name_or_path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path.parent)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return f"{path.resolve()}@{digest.hexdigest()[:16]}"


@dataclass
class StageResult:
    """A finished stage: where its files are, its key, whether it came from the cache, and what it reported."""

    name: str
    key: str
    folder: Path
    reused: bool
    summary: dict[str, Any]
    seconds: float
    """Build time (the original build's when reused)."""
    cpu_seconds: float = 0.0
    """CPU time of this process (all threads) during the build: on a busy machine, closer to what a quiet one
    would take than the wall time."""


class StageCache:
    """Stages under ``root``; ``fresh=True`` rebuilds every stage it is asked for (the old folder is deleted)."""

    def __init__(self, root: str | os.PathLike[str], fresh: bool = False) -> None:
        self.root = Path(root)
        self.fresh = fresh

    def folder(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    def run(
        self,
        name: str,
        config: Mapping[str, Any],
        inputs: Sequence[str],
        build: Callable[[Path], dict[str, Any]],
    ) -> StageResult:
        """The stage's result: reused when ``<root>/<name>-<key>/stage.json`` exists (and not ``fresh``), else
        ``build(partial_folder)`` is called; its returned summary (JSON-serialisable; paths in it relative to the
        folder, which is renamed when the build finishes) is stored with the stage."""
        key = stage_key(name, config, inputs)
        final, partial = self.folder(name, key), self.root / f"{name}-{key}.partial"
        record_path = final / STAGE_FILE
        if self.fresh:
            for stale in (final, partial):
                shutil.rmtree(stale, ignore_errors=True)
        elif record_path.is_file():
            record = json.loads(record_path.read_text())
            return StageResult(
                name, key, final, True, record["summary"], record["seconds"], record.get("cpu_seconds", 0.0)
            )
        partial.mkdir(parents=True, exist_ok=True)
        started, cpu_started = time.perf_counter(), time.process_time()
        summary = build(partial)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        record = {
            "name": name,
            "key": key,
            "config": dict(config),
            "inputs": list(inputs),
            "summary": summary,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        (partial / STAGE_FILE).write_text(json.dumps(record, indent=2, default=str))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        return StageResult(name, key, final, False, summary, seconds, cpu_seconds)
