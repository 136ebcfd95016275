"""The memoized TextWorld (and cached translation) plays exactly like stock TextWorld, on real and generated games."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

from reasoning_gym.alfworld import speedups  # noqa: E402
from reasoning_gym.alfworld.engine import make_textworld_env  # noqa: E402
from reasoning_gym.alfworld.games import GamePool  # noqa: E402

pytestmark = pytest.mark.alfworld


def _trace(game_file: str, *, fast: bool, steps: int, seed: int, translation_dir: Path | None = None) -> list:
    """Feedback, admissible commands, won and facts along a seeded random walk (plus one inadmissible command)."""
    rng = random.Random(seed)
    env = make_textworld_env(fast=fast, facts=True, translation_dir=translation_dir)
    env.load(game_file)
    state = env.reset()
    trace = [(state.feedback, state["admissible_commands"], state["won"], sorted(map(str, state["facts"])))]
    for index in range(steps):
        command = "dance with the fridge" if index == 3 else rng.choice(state["admissible_commands"])
        state, _, _ = env.step(command)
        trace.append(
            (
                command,
                state.feedback,
                state["admissible_commands"],
                state["won"],
                sorted(map(str, state["facts"])),
            )
        )
    return trace


def _games(data_dir: Path | None) -> list[str]:
    pool = GamePool(num_games=6, source="generated")
    games = [str(pool.game_file(pool.get("gen-train-000003")))]
    if data_dir is not None:
        real = data_dir / "alfworld" / "real_sample_heat_potato_FloorPlan14" / "game.tw-pddl"
        if real.is_file():
            games.insert(0, str(real))
    return games


def test_fast_textworld_traces_equal_stock(tmp_path: Path) -> None:
    from reasoning_gym.data import shared_data_dir

    for game_file in _games(shared_data_dir()):
        with speedups.stock_textworld():
            assert not speedups.fast_textworld_enabled()
            stock = _trace(game_file, fast=False, steps=12, seed=1)
        fast = _trace(game_file, fast=True, steps=12, seed=1, translation_dir=tmp_path)
        assert speedups.fast_textworld_enabled()
        assert fast == stock
        # Second run reads the translation back from disk (a different code path for the parsed task).
        from reasoning_gym.alfworld import engine

        engine._CACHE._memory.clear()
        assert _trace(game_file, fast=True, steps=12, seed=1, translation_dir=tmp_path) == stock


def test_patches_install_and_restore() -> None:
    import textworld.envs.pddl.textgen as textgen

    speedups.enable_fast_textworld()
    patched = textgen._parse_and_convert
    with speedups.stock_textworld():
        assert textgen._parse_and_convert is not patched
    assert textgen._parse_and_convert is patched
