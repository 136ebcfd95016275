"""Which ALFWorld games an env plays: real ALFWorld data when present, otherwise offline-generated games.

Why a pool of ids: ``reset(seed=...)`` samples a problem id, ``reset(options={"problem_id": ...})`` replays one, and
generated games are only built (and cached on disk) when first played, so a pool of hundreds costs nothing upfront.

Sources, in order for ``source="auto"``:
1. ``game_files`` given explicitly (e.g. the real sample game in ``../shared/data/alfworld``);
2. ``$ALFWORLD_DATA/json_2.1.1/<split>`` (downloaded with ``alfworld-download`` on a networked machine);
3. generated games (``reasoning_gym.alfworld.generate``), cached under :func:`default_cache_dir`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from reasoning_gym.alfworld.generate import TASK_TYPES, default_cache_dir, ensure_generated_game

__all__ = ["GamePool", "GameRef", "default_cache_dir", "alfworld_json_dir", "REAL_SPLITS"]

REAL_SPLITS = ("train", "valid_seen", "valid_unseen")
_GENERATED_PREFIX = "gen"


def alfworld_json_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """``<data_dir or $ALFWORLD_DATA>/json_2.1.1``; None when neither is set (never downloads).

    Raises ``FileNotFoundError`` when a data folder is named but holds no ``json_2.1.1/``: whoever set it meant real
    games, and silently playing generated ones instead would mislabel every result."""
    root = data_dir or os.environ.get("ALFWORLD_DATA")
    if not root:
        return None
    named = "data_dir" if data_dir else "$ALFWORLD_DATA"
    path = Path(root).expanduser() / "json_2.1.1"
    if not path.is_dir() and not data_dir and _is_alfworld_default(root):
        return None  # `import alfworld` writes its default cache into $ALFWORLD_DATA: nobody chose it
    if not path.is_dir():
        raise FileNotFoundError(
            f"{named}={root} has no json_2.1.1/ folder (ALFWorld's layout: json_2.1.1/<split>/<task>/<trial>/"
            "game.tw-pddl, from alfworld-download); fix the path, unset it, or pass source='generated'"
        )
    return path


def _is_alfworld_default(root: str | os.PathLike) -> bool:
    """Whether ``root`` is the cache folder ``alfworld.info`` puts into ``$ALFWORLD_DATA`` at import when unset."""
    default = Path("~/.cache/alfworld").expanduser()
    return Path(root).expanduser().resolve() == default.resolve()


@dataclass(frozen=True)
class GameRef:
    """One playable game: its problem id and either a file or a generator seed."""

    problem_id: str
    game_file: Path | None = None
    seed: int | None = None
    split: str = "train"


def _real_games(json_dir: Path, split: str, task_types: Sequence[str]) -> list[GameRef]:
    refs = []
    split_dir = json_dir / split
    for traj_path in sorted(split_dir.rglob("traj_data.json")):
        folder = traj_path.parent
        if "movable" in str(folder) or "Sliced" in str(folder):  # ALFWorld skips these too
            continue
        game_file = folder / "game.tw-pddl"
        if not game_file.exists():
            continue
        try:
            task_type = json.loads(traj_path.read_text())["task_type"]
            if task_type not in task_types or not json.loads(game_file.read_text()).get("solvable", False):
                continue
        except (OSError, ValueError, KeyError):
            continue
        refs.append(GameRef(f"{split}/{folder.relative_to(split_dir).as_posix()}", game_file, split=split))
    return refs


def _file_games(game_files: Iterable[str | os.PathLike]) -> list[GameRef]:
    """One ref per game; its id is the game's folder relative to the folder all the games share.

    So ALFWorld's layout ``<task>/<trial>/game.tw-pddl`` gives ``<task>/<trial>`` (the trial folder alone repeats
    across tasks), and a single game keeps its folder's name."""
    paths = []
    for entry in game_files:
        path = Path(entry).expanduser()
        if path.is_dir():
            path = path / "game.tw-pddl"
        if not path.exists():
            raise FileNotFoundError(f"ALFWorld game file not found: {path}")
        paths.append(path.resolve())
    folders = [path.parent for path in paths]
    common = Path(os.path.commonpath(folders)) if folders else Path()
    if len(set(folders)) == 1:
        common = folders[0].parent
    return [GameRef(folder.relative_to(common).as_posix(), path) for folder, path in zip(folders, paths)]


class GamePool:
    """The games one env samples from, by problem id; generated games are built on first use."""

    def __init__(
        self,
        *,
        split: str = "train",
        num_games: int = 300,
        game_files: Iterable[str | os.PathLike] | None = None,
        task_types: Sequence[str] | None = None,
        source: str = "auto",
        data_dir: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if split not in REAL_SPLITS:
            raise ValueError(f"split must be one of {REAL_SPLITS}, got {split!r}")
        if source not in ("auto", "files", "alfworld", "generated"):
            raise ValueError(f"source must be 'auto', 'files', 'alfworld' or 'generated', got {source!r}")
        self.task_types = tuple(task_types) if task_types else TASK_TYPES
        unknown = set(self.task_types) - set(TASK_TYPES)
        if unknown:
            raise ValueError(f"unknown task types {sorted(unknown)}; expected some of {TASK_TYPES}")
        self.split = split
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        use_files = game_files is not None or source == "files"
        json_dir = alfworld_json_dir(data_dir) if source in ("auto", "alfworld") and not use_files else None
        if use_files:
            self.source, refs = "files", _file_games(game_files or [])
        elif source == "alfworld" or (source == "auto" and json_dir is not None):
            if json_dir is None:
                raise FileNotFoundError(
                    "source='alfworld' needs $ALFWORLD_DATA/json_2.1.1 (run alfworld-download)"
                )
            self.source, refs = "alfworld", _real_games(json_dir, split, self.task_types)
            if not refs:
                raise ValueError(
                    f"no ALFWorld games found in {json_dir / split} (wanted <task>/<trial>/traj_data.json and "
                    f"a solvable game.tw-pddl of task types {list(self.task_types)})"
                )
        else:
            self.source, refs = "generated", self._generated_refs(num_games)
        if not refs:
            raise ValueError(f"no ALFWorld games found (source={self.source!r}, split={split!r})")
        self.refs = refs
        self._by_id = {ref.problem_id: ref for ref in refs}

    def _generated_refs(self, num_games: int) -> list[GameRef]:
        if num_games < 1:
            raise ValueError(f"num_games must be >= 1, got {num_games}")
        wanted = {TASK_TYPES.index(t) for t in self.task_types}
        refs, seed = [], 0
        while len(refs) < num_games:
            if seed % len(TASK_TYPES) in wanted:
                refs.append(self.generated_ref(seed))
            seed += 1
        return refs

    def generated_ref(self, seed: int) -> GameRef:
        return GameRef(f"{_GENERATED_PREFIX}-{self.split}-{seed:06d}", seed=seed, split=self.split)

    @property
    def problem_ids(self) -> list[str]:
        return [ref.problem_id for ref in self.refs]

    def __len__(self) -> int:
        return len(self.refs)

    def get(self, problem_id: str) -> GameRef:
        """The game with this id; generated ids outside the pool (``gen-<split>-<seed>``) are accepted too."""
        ref = self._by_id.get(problem_id)
        if ref is not None:
            return ref
        parts = str(problem_id).split("-")
        if (
            len(parts) == 3
            and parts[0] == _GENERATED_PREFIX
            and parts[1] in REAL_SPLITS
            and parts[2].isdigit()
        ):
            return GameRef(problem_id, seed=int(parts[2]), split=parts[1])
        raise KeyError(f"unknown ALFWorld problem_id {problem_id!r} ({len(self.refs)} games in this pool)")

    def game_file(self, ref: GameRef) -> Path:
        """The ``game.tw-pddl`` of a game, generating it into the cache first if needed."""
        if ref.game_file is not None:
            return ref.game_file
        return ensure_generated_game(self.cache_dir, int(ref.seed or 0), ref.split)
