"""Which games an ALFWorld env plays (``reasoning_gym.alfworld.games``): ids of explicit game files, a misnamed
``$ALFWORLD_DATA``, and the module layering (no textworld needed: nothing here loads a game)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from reasoning_gym.alfworld.games import GamePool

ALFWORLD_DIR = Path(__file__).resolve().parent.parent / "reasoning_gym" / "alfworld"


def _game(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "game.tw-pddl").write_text(json.dumps({"solvable": True}))
    (folder / "traj_data.json").write_text(json.dumps({"task_type": "pick_and_place_simple"}))
    return folder


def test_game_file_ids_are_unique_and_name_the_game(tmp_path: Path) -> None:
    """ALFWorld's layout <task>/<trial>/game.tw-pddl: trial folder names repeat across tasks."""
    folders = [
        _game(tmp_path / f"pick_and_place_simple-Obj{task}-None-Shelf-{task}" / f"trial_{trial}")
        for task in range(6)
        for trial in range(5)
    ]
    pool = GamePool(game_files=folders, cache_dir=tmp_path / "cache")
    assert len(set(pool.problem_ids)) == 30
    assert pool.problem_ids[7] == "pick_and_place_simple-Obj1-None-Shelf-1/trial_2"
    for folder in folders:  # each id finds its own game
        ref = pool.get(f"{folder.parent.name}/{folder.name}")
        assert ref.game_file == (folder / "game.tw-pddl").resolve()
    single = GamePool(game_files=[folders[3]], cache_dir=tmp_path / "cache")
    assert single.problem_ids == ["trial_3"]  # one game keeps its folder's name


def test_alfworld_data_without_json_folder_is_an_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"ALFWORLD_DATA=.*has no json_2\.1\.1"):
        GamePool(cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match=r"data_dir=.*has no json_2\.1\.1"):
        GamePool(data_dir=tmp_path / "elsewhere", cache_dir=tmp_path / "cache")
    assert GamePool(source="generated", num_games=3, cache_dir=tmp_path / "cache").source == "generated"


def test_alfworld_default_cache_set_by_import_alfworld_is_not_a_choice(tmp_path: Path, monkeypatch) -> None:
    """``import alfworld`` writes ``~/.cache/alfworld`` into ``$ALFWORLD_DATA`` when it is unset: after that import
    an env must still play generated games, not fail for a folder nobody named."""
    monkeypatch.setenv("HOME", str(tmp_path))
    default = tmp_path / ".cache" / "alfworld"
    default.mkdir(parents=True)
    monkeypatch.setenv("ALFWORLD_DATA", str(default))
    assert GamePool(num_games=3, cache_dir=tmp_path / "cache").source == "generated"
    with pytest.raises(
        FileNotFoundError, match=r"data_dir=.*has no json_2\.1\.1"
    ):  # named explicitly: an error
        GamePool(data_dir=default, cache_dir=tmp_path / "cache")


def test_alfworld_data_without_games_says_where_it_looked(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "json_2.1.1" / "train").mkdir(parents=True)
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    with pytest.raises(ValueError, match=r"no ALFWorld games found in .*json_2\.1\.1/train"):
        GamePool(cache_dir=tmp_path / "cache")


def test_generate_does_not_import_games() -> None:
    """games -> generate only: the circle games <-> generate is broken."""
    tree = ast.parse((ALFWORLD_DIR / "generate.py").read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    } | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "reasoning_gym.alfworld.games" not in imported
