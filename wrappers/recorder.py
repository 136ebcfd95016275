"""Record every finished episode as one JSON line, for offline RL (OREO, OREAL) and analysis.

Why it cannot leave a broken line: each line is built in memory and appended by one writer at a time (``O_APPEND``
under an exclusive ``flock``, so vector envs in several processes never interleave). A process killed in the middle
of a large ``write`` can leave an unterminated tail; every writer first cuts such a tail back to the last newline
(``repair_tail``) before appending, and ``read_trajectories`` ignores an unterminated last line. So every
newline-terminated line is a complete record, and a killed run loses at most the episode being written.

Schema (``"schema": "openr-gym/trajectory/v1"``), one object per line:

=================== ================================================================================================
``env_id``          the env's registered id (or null)
``problem_id``      ``info["problem_id"]`` at reset
``question``        ``info["problem"]`` at reset (the question text)
``instruction``     ``info["instruction"]`` at reset
``prompt``          the first observation (what the policy read before step 1)
``steps``           list of action strings as the env recorded them (``info["steps"]``; invalid empty steps are
                    kept in ``actions``)
``actions``         list of raw actions as sent, one per ``step`` call
``rewards``         list of floats, one per ``step`` call (after every inner wrapper)
``logprobs``        list (one per step call) of per-token log-probs or null, given via ``record_step_extras``
``token_ids``       same, token ids of each action, or null
``step_infos``      list of ``{"invalid", "invalid_reason", "answer", "prm_score"}`` per step call (keys present
                    in info only)
``return``          sum of ``rewards``
``length``          number of step calls
``terminated``      bool; ``truncated``: bool
``correct``         ``info["is_success"]`` at the end, or null when the env does not report it
``answer``          the final answer stated (``info["answer"]``) or null
``reference_answer`` only with ``record_reference=True`` (trusted data; never shown to the policy)
``seed``            the seed passed to ``reset`` or null
``extras``          episode-level extras given via ``record_episode_extras``
``time``            Unix time when the episode ended
=================== ================================================================================================
"""

from __future__ import annotations

import copy
import fcntl
import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import gymnasium as gym
from gymnasium.utils import RecordConstructorArgs

__all__ = ["SCHEMA", "TrajectoryRecorder", "append_jsonl", "read_trajectories", "repair_tail"]

SCHEMA = "openr-gym/trajectory/v1"
_STEP_INFO_KEYS = ("invalid", "invalid_reason", "answer", "prm_score")


def _jsonable(value: Any) -> Any:
    """Plain JSON types (numpy / torch scalars and arrays become floats / lists; NaN becomes null)."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return str(value)


def _cut_unterminated_tail(fd: int) -> int:
    """Truncate the file behind ``fd`` (locked by the caller) to its last newline; return the bytes cut."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return 0
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, start + newline + 1)
            return size - (start + newline + 1)
        end = start
    os.ftruncate(fd, 0)
    return size


def repair_tail(path: str | os.PathLike[str]) -> int:
    """Cut a torn last line left by a killed writer (no-op on a clean or missing file); return the bytes cut."""
    if not os.path.exists(path):
        return 0
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _cut_unterminated_tail(fd)
    finally:
        os.close(fd)


def _encode_line(record: dict[str, Any]) -> bytes:
    """One JSON line in UTF-8. Text that UTF-8 cannot hold (a lone surrogate, which a Python ``str`` action may
    carry) is written as a ``\\udXXX`` escape instead, so ``json.loads`` gives back the very same string."""
    text = json.dumps(_jsonable(record), ensure_ascii=False)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(_jsonable(record), ensure_ascii=True) + "\n").encode("ascii")


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any], *, fsync: bool = False) -> None:
    """Append one record as one line, alone under the file lock, after cutting any torn tail."""
    data = _encode_line(record)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _cut_unterminated_tail(fd)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock


def read_trajectories(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the records of a trajectory file; an unterminated, undecodable or unparseable line is skipped with a
    warning. Lines are read as bytes and decoded one by one, so a tail torn in the middle of a UTF-8 character
    costs that line only."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("unterminated")
                yield json.loads(raw.decode("utf-8"))
            except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                warnings.warn(f"{path}:{line_no}: skipping a torn line", stacklevel=2)


class TrajectoryRecorder(gym.Wrapper[str, str, str, str], RecordConstructorArgs):
    """Append each finished episode to ``path`` (JSONL, schema in this module's docstring).

    Agents that have per-token log-probs call ``env.get_wrapper_attr("record_step_extras")(logprobs=...,
    token_ids=...)`` right before ``env.step(action)``; episode-level data goes through
    ``record_episode_extras(**kw)``. An episode that is reset or closed before it ends is not written.
    """

    def __init__(
        self,
        env: gym.Env[str, str],
        path: str | os.PathLike[str],
        *,
        record_reference: bool = False,
        fsync: bool = False,
    ) -> None:
        RecordConstructorArgs.__init__(
            self, _disable_deepcopy=True, path=str(path), record_reference=record_reference, fsync=fsync
        )
        gym.Wrapper.__init__(self, env)
        self.path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        repair_tail(self.path)
        self.record_reference = record_reference
        self.fsync = fsync
        self.episodes_written = 0
        self._episode: dict[str, Any] | None = None
        self._pending: dict[str, Any] = {}

    def record_step_extras(
        self, *, logprobs: Sequence[float] | None = None, token_ids: Sequence[int] | None = None
    ) -> None:
        """Attach the log-probs / token ids of the action about to be taken with ``step``."""
        self._pending = {"logprobs": logprobs, "token_ids": token_ids}

    def record_episode_extras(self, **extras: Any) -> None:
        """Attach episode-level data (e.g. the sampling temperature) to the current episode."""
        if self._episode is not None:
            self._episode["extras"].update(extras)

    def get_wrapper_state(self) -> dict[str, Any]:
        """The episode in progress (planners rewind it with the env, ``wrappers.state``: every finished branch of
        a search is then recorded as one episode)."""
        return copy.deepcopy({"episode": self._episode, "pending": self._pending})

    def set_wrapper_state(self, state: dict[str, Any]) -> None:
        self._episode = copy.deepcopy(state["episode"])
        self._pending = copy.deepcopy(state["pending"])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        spec = getattr(self.env, "spec", None)
        self._episode = {
            "schema": SCHEMA,
            "env_id": spec.id if spec is not None else None,
            "problem_id": info.get("problem_id"),
            "question": info.get("problem"),
            "instruction": info.get("instruction"),
            "prompt": obs,
            "steps": [],
            "actions": [],
            "rewards": [],
            "logprobs": [],
            "token_ids": [],
            "step_infos": [],
            "seed": seed,
            "extras": {},
        }
        self._pending = {}
        return obs, info

    def step(self, action: str):
        obs, reward, terminated, truncated, info = self.env.step(action)
        episode = self._episode
        if episode is not None:
            episode["actions"].append(action if isinstance(action, str) else str(action))
            episode["rewards"].append(float(reward))
            episode["logprobs"].append(self._pending.get("logprobs"))
            episode["token_ids"].append(self._pending.get("token_ids"))
            episode["step_infos"].append({k: info[k] for k in _STEP_INFO_KEYS if k in info})
            episode["steps"] = list(info.get("steps", episode["actions"]))
            self._pending = {}
            if terminated or truncated:
                self._finish(episode, info, terminated, truncated)
        return obs, reward, terminated, truncated, info

    def _finish(
        self, episode: dict[str, Any], info: dict[str, Any], terminated: bool, truncated: bool
    ) -> None:
        correct = info.get("is_success")
        episode.update(
            {
                "return": float(sum(episode["rewards"])),
                "length": len(episode["actions"]),
                "terminated": bool(terminated),
                "truncated": bool(truncated),
                "correct": None if correct is None else bool(correct),
                "answer": info.get("answer"),
                "time": time.time(),
            }
        )
        if self.record_reference:
            problem = getattr(self.env.unwrapped, "problem", None)
            episode["reference_answer"] = getattr(problem, "answer", None)
        append_jsonl(self.path, episode, fsync=self.fsync)
        self.episodes_written += 1
        self._episode = None
