"""Offline ALFWorld game generation from what ships in the ``alfworld`` wheel, validated with the planner.

Why: real ALFWorld games come from ``alfworld-download`` (network). The wheel ships everything needed to make new
ones: the PDDL domain and grammar (``alfworld/data``), the room contents of 120 AI2-THOR scenes
(``alfworld/gen/layouts/FloorPlan*-objects.json`` / ``-openable.json``), which receptacle holds which object and which
objects can be cleaned / heated / cooled / toggled (``alfworld/gen/constants.py``) and the PDDL goal and text template
of every task type (``alfworld/gen/goal_library.py``).

A game is made from one integer seed: the task type is ``TASK_TYPES[seed % 6]`` (so any window of six seeds covers all
six types), then a room that can host it, the target object / receptacle / lamp, and a random placement of the room's
objects in its receptacles (the goal never holds at the start). The game is kept only if fast-downward finds a plan
and replaying that plan wins; otherwise the next sub-attempt of the same seed is tried, so a seed always maps to the
same game. The plan is stored as the game's ``walkthrough``.

Folders follow ALFWorld's layout (``game.tw-pddl`` + ``traj_data.json``), so ALFWorld's own tools read them too.
"""

from __future__ import annotations

import functools
import json
import os
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from reasoning_gym.alfworld.engine import GameLoadError, make_textworld_env, planner_plan

__all__ = [
    "GENERATOR_VERSION",
    "TASK_TYPES",
    "HELD_OUT_SCENES",
    "GeneratedGame",
    "default_cache_dir",
    "generate_game",
    "ensure_generated_game",
    "generated_game_dir",
]

GENERATOR_VERSION = 1
TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
# ALFRED's valid_unseen rooms (one per room type): generated "valid_unseen" games use only these, "train" never does.
HELD_OUT_SCENES = (10, 219, 308, 424)
# Splits draw from different random streams (the split name is part of every seed string).
_SPLITS = ("train", "valid_seen", "valid_unseen")
_APPLIANCE = {
    "pick_clean_then_place_in_recep": "SinkBasin",
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
}
_STATE_FLAGS = {
    "cleanable": "Cleanable",
    "heatable": "Heatable",
    "coolable": "Coolable",
    "sliceable": "Sliceable",
}
_LAMPS = ("DeskLamp", "FloorLamp")
_LAMP_HOLDERS = ("Desk", "SideTable", "Dresser", "Shelf", "CoffeeTable", "TVStand", "DiningTable", "Ottoman")
_MAX_ATTEMPTS = 25
_MAX_PLAN_STEPS = 30
_MAX_PER_CLASS = 4
_MAX_RECEPTACLES = 16
_MAX_CLUTTER_CLASSES = 12


@dataclass(frozen=True)
class GeneratedGame:
    """One generated game: the ``game.tw-pddl`` JSON, the ``traj_data.json`` JSON and the planner's plan."""

    game: dict
    traj_data: dict
    plan: list[str]


@dataclass(frozen=True)
class _Scene:
    number: int
    room_type: str
    objects: tuple[str, ...]
    receptacles: tuple[tuple[str, str, tuple[float, ...] | None], ...]  # (class, ALFRED id, pose or None)


def _constants() -> Any:
    import alfworld.gen.constants as constants

    return constants


def _mangle(alfred_id: str) -> str:
    """ALFRED ids as ALFWorld's PDDL spells them (``Apple|+01.00|...`` -> ``Apple_bar__plus_01_dot_00...``)."""
    for old, new in (("|", "_bar_"), ("+", "_plus_"), ("-", "_minus_"), (".", "_dot_"), (",", "_comma_")):
        alfred_id = alfred_id.replace(old, new)
    return alfred_id


@functools.cache
def _wheel_text(relative: str) -> str:
    return resources.files("alfworld").joinpath(relative).read_text()


@functools.cache
def _static_receptacles() -> frozenset[str]:
    c = _constants()
    return frozenset(set(c.VAL_RECEPTACLE_OBJECTS) - set(c.MOVABLE_RECEPTACLES))


@functools.cache
def _scene(number: int) -> _Scene:
    c = _constants()
    layouts = resources.files("alfworld.gen").joinpath("layouts")
    objects = tuple(json.loads(layouts.joinpath(f"FloorPlan{number}-objects.json").read_text()))
    poses = json.loads(layouts.joinpath(f"FloorPlan{number}-openable.json").read_text())
    room_type = next(name for name, numbers in c.SCENE_TYPE.items() if number in numbers)
    static = _static_receptacles()
    receptacles: list[tuple[str, str, tuple[float, ...] | None]] = []
    seen_classes = set()
    for alfred_id, pose in sorted(poses.items()):
        cls = alfred_id.split("|")[0]
        cls = {"Sink": "SinkBasin", "Bathtub": "BathtubBasin"}.get(cls, cls)
        if cls in static:
            receptacles.append((cls, alfred_id, tuple(pose)))
            seen_classes.add(cls)
    present = (
        set(objects)
        | {"SinkBasin" for o in objects if o == "Sink"}
        | {"BathtubBasin" for o in objects if o == "Bathtub"}
    )
    for cls in sorted((present & static) - seen_classes):
        receptacles.append((cls, "", None))  # ids are made per game (positions unknown)
    return _Scene(number, room_type, objects, tuple(receptacles))


@functools.cache
def _all_scene_numbers() -> tuple[int, ...]:
    layouts = resources.files("alfworld.gen").joinpath("layouts")
    numbers = sorted(
        int(entry.name[len("FloorPlan") : -len("-objects.json")])
        for entry in layouts.iterdir()
        if entry.name.startswith("FloorPlan") and entry.name.endswith("-objects.json")
    )
    return tuple(numbers)


def _scene_numbers(split: str) -> list[int]:
    numbers = _all_scene_numbers()
    if split == "valid_unseen":
        return [n for n in numbers if n in HELD_OUT_SCENES]
    return [n for n in numbers if n not in HELD_OUT_SCENES]


class _Retry(Exception):
    """This attempt cannot host the task; try the next sub-seed."""


def _coords(rng: random.Random) -> str:
    return "|".join(f"{rng.uniform(-3.0, 3.0):+06.2f}" for _ in range(3))


def _choose_task(rng: random.Random, task_type: str, scene: _Scene) -> dict[str, str]:
    c = _constants()
    receptacle_classes = {cls for cls, _, _ in scene.receptacles}
    placeable = {o for r in receptacle_classes for o in c.VAL_RECEPTACLE_OBJECTS[r]} & set(scene.objects)
    params = {
        "object_target": "",
        "parent_target": "",
        "toggle_target": "",
        "mrecep_target": "",
        "object_sliced": False,
    }
    if task_type == "look_at_obj_in_light":
        lamps = sorted(set(_LAMPS) & set(scene.objects))
        candidates = sorted(placeable - {"Box", "Pan", "Pot"})
        if not lamps or not candidates:
            raise _Retry
        params.update(object_target=rng.choice(candidates), toggle_target=rng.choice(lamps))
        return params
    appliance = _APPLIANCE.get(task_type)
    if appliance and appliance not in receptacle_classes:
        raise _Retry
    flag = {"SinkBasin": "Cleanable", "Microwave": "Heatable", "Fridge": "Coolable"}.get(appliance or "")
    objects = sorted(o for o in placeable if not flag or o in c.VAL_ACTION_OBJECTS[flag])
    if not objects:
        raise _Retry
    target = rng.choice(objects)
    parents = sorted(
        r for r in receptacle_classes if target in c.VAL_RECEPTACLE_OBJECTS[r] and r != appliance
    )
    if not parents:
        raise _Retry
    parent = rng.choice(parents)
    # The target must start somewhere else, so the goal does not hold at the start.
    if not any(target in c.VAL_RECEPTACLE_OBJECTS[r] for r in receptacle_classes - {parent, appliance}):
        raise _Retry
    params.update(object_target=target, parent_target=parent)
    return params


def _capped_receptacles(
    rng: random.Random, scene: _Scene, task_type: str, params: dict
) -> list[tuple[str, str, tuple[float, ...] | None]]:
    """At most a few receptacles per class and ``_MAX_RECEPTACLES`` in all (planning time grows fast with more)."""
    by_class: dict[str, list] = {}
    for entry in scene.receptacles:
        by_class.setdefault(entry[0], []).append(entry)
    needed = {params["parent_target"], _APPLIANCE.get(task_type, "")} - {""}
    chosen = []
    for _cls, entries in sorted(by_class.items()):
        k = min(len(entries), _MAX_PER_CLASS)
        chosen.extend(sorted(rng.sample(entries, k)) if len(entries) > k else entries)
    while len(chosen) > _MAX_RECEPTACLES:
        counts: dict[str, int] = {}
        for entry in chosen:
            counts[entry[0]] = counts.get(entry[0], 0) + 1
        removable = [e for e in chosen if counts[e[0]] > 1 or e[0] not in needed]
        chosen.remove(removable[rng.randrange(len(removable))])
    return chosen


def _pddl_problem(rng: random.Random, name: str, task_type: str, scene: _Scene, params: dict) -> str:
    c = _constants()
    used_ids: set[str] = set()
    used_locs: set[str] = set()

    def new_location(pose: tuple[float, ...] | None) -> str:
        if pose is not None:
            x, z, rot, horizon = (
                round(pose[0] / 0.25),
                round(pose[1] / 0.25),
                int(pose[2]) // 90,
                int(pose[3]),
            )
        else:
            x, z, rot, horizon = (
                rng.randint(-12, 12),
                rng.randint(-12, 12),
                rng.randint(0, 3),
                rng.choice([0, 30, 60]),
            )
        while f"loc|{x}|{z}|{rot}|{horizon}" in used_locs:
            x += 1
        used_locs.add(f"loc|{x}|{z}|{rot}|{horizon}")
        return _mangle(f"loc|{x}|{z}|{rot}|{horizon}")

    def new_id(cls: str, suffix: str = "") -> str:
        while True:
            alfred_id = f"{cls}|{_coords(rng)}{suffix}"
            if alfred_id not in used_ids:
                used_ids.add(alfred_id)
                return _mangle(alfred_id)

    # Receptacles (kitchens get 2-4 stove burners when the layout file lists none).
    receptacles: list[tuple[str, str, str]] = []  # (class, pddl id, location)
    for cls, alfred_id, pose in _capped_receptacles(rng, scene, task_type, params):
        copies = rng.randint(2, 4) if (cls == "StoveBurner" and not alfred_id) else 1
        for _ in range(copies):
            if alfred_id:
                used_ids.add(alfred_id)
                pddl_id = _mangle(alfred_id)
            else:
                suffix = {"SinkBasin": "|SinkBasin", "BathtubBasin": "|BathtubBasin"}.get(cls, "")
                pddl_id = new_id({"SinkBasin": "Sink", "BathtubBasin": "Bathtub"}.get(cls, cls), suffix)
            receptacles.append((cls, pddl_id, new_location(pose)))
    start = new_location(None)
    location_of = {pddl_id: loc for _, pddl_id, loc in receptacles}

    target, parent, toggle = params["object_target"], params["parent_target"], params["toggle_target"]
    blocked = {parent} if parent else set()  # never start with the target already in a goal receptacle

    objects: list[tuple[str, str, str]] = []  # (class, pddl id, receptacle id)
    static_set = _static_receptacles()
    clutter = sorted(set(scene.objects) - static_set - {target, toggle})
    kept = set(rng.sample(clutter, min(len(clutter), _MAX_CLUTTER_CLASSES))) | {target, toggle}
    for cls in sorted(set(scene.objects) & kept):
        if cls in static_set or cls in ("Sink", "Bathtub"):
            continue
        if cls in _LAMPS:
            if cls != toggle:
                continue
            holders = [r for r in receptacles if r[0] in _LAMP_HOLDERS] or [
                r for r in receptacles if r[0] not in c.OPENABLE_CLASS_SET
            ]
            if not holders:
                raise _Retry
            objects.append((cls, new_id(cls), rng.choice(holders)[1]))
            continue
        homes = [r for r in receptacles if cls in c.VAL_RECEPTACLE_OBJECTS[r[0]]]
        if cls == target:
            homes = [r for r in homes if r[0] not in blocked and r[0] != _APPLIANCE.get(task_type)]
            low = 2 if task_type == "pick_two_obj_and_place" else 1
            copies = rng.randint(low, 3)
        else:
            copies = rng.randint(1, 2)
        if not homes:
            if cls == target:
                raise _Retry
            continue
        for _ in range(copies):
            objects.append((cls, new_id(cls), rng.choice(homes)[1]))
    if not any(cls == target for cls, _, _ in objects):
        raise _Retry

    object_classes = sorted({cls for cls, _, _ in objects})
    receptacle_classes = sorted({cls for cls, _, _ in receptacles})
    goal_types = {target, toggle} - {""}
    otypes = sorted(set(object_classes) | goal_types)
    rtypes = sorted(set(receptacle_classes) | ({parent} - {""}))

    facts = [f"(atLocation agent1 {start})"]
    for cls, pddl_id, loc in receptacles:
        facts.append(f"(receptacleType {pddl_id} {cls}Type)")
        facts.append(f"(receptacleAtLocation {pddl_id} {loc})")
        if cls in c.OPENABLE_CLASS_SET:
            facts.append(f"(openable {pddl_id})")
    for rtype in receptacle_classes:
        for otype in object_classes:
            if otype in c.VAL_RECEPTACLE_OBJECTS[rtype]:
                facts.append(f"(canContain {rtype}Type {otype}Type)")
    for cls, pddl_id, holder in objects:
        facts.append(f"(objectType {pddl_id} {cls}Type)")
        facts.append(f"(inReceptacle {pddl_id} {holder})")
        facts.append(f"(objectAtLocation {pddl_id} {location_of[holder]})")
        if cls in _LAMPS:
            facts.append(f"(toggleable {pddl_id})")
            continue
        facts.append(f"(pickupable {pddl_id})")
        if cls in c.MOVABLE_RECEPTACLES:
            facts.append(f"(isReceptacleObject {pddl_id})")
        for predicate, group in _STATE_FLAGS.items():
            if cls in c.VAL_ACTION_OBJECTS[group]:
                facts.append(f"({predicate} {pddl_id})")

    import alfworld.gen.goal_library as goal_library

    goal = goal_library.gdict[task_type]["pddl"].format(obj=target, recep=parent, toggle=toggle, mrecep="")
    goal = goal.replace("#", "-")
    declarations = (
        ["agent1 - agent"]
        + [f"{t}Type - otype" for t in otypes]
        + [f"{t}Type - rtype" for t in rtypes]
        + [f"{pddl_id} - object" for _, pddl_id, _ in objects]
        + [f"{pddl_id} - receptacle" for _, pddl_id, _ in receptacles]
        + sorted({f"{loc} - location" for loc in [start, *location_of.values()]})
    )
    lines = [
        f"(define (problem {name})",
        "(:domain alfred)",
        "(:objects",
        *declarations,
        ")",
        "(:init",
        *facts,
        ")",
    ]
    return "\n".join(lines) + "\n" + goal


def _goal_text(rng: random.Random, task_type: str, params: dict) -> str:
    import alfworld.gen.goal_library as goal_library

    template = rng.choice(goal_library.gdict[task_type]["templates"])
    return template.format(
        obj=params["object_target"].lower(),
        recep=params["parent_target"].lower(),
        toggle=params["toggle_target"].lower(),
        mrecep="",
    )


@functools.cache
def _validator() -> Any:
    """One TextWorld env per process for validation: each new env maps its own 34 MB copy of fast-downward."""
    return make_textworld_env(fast=True)


def _validated_plan(game: dict) -> list[str]:
    """The planner's plan if it exists and replaying it wins from the start (else :class:`GameLoadError`)."""
    env = _validator()
    env.load(game)
    state = env.reset()
    if state["won"]:
        raise GameLoadError("goal already holds at the start")
    plan = planner_plan(env)
    if not plan or len(plan) > _MAX_PLAN_STEPS:
        raise GameLoadError(f"no usable plan (length {len(plan)})")
    for command in plan:
        if command not in state["admissible_commands"]:
            raise GameLoadError(f"plan step {command!r} is not admissible")
        state, _, _ = env.step(command)
    if not state["won"]:
        raise GameLoadError("replaying the plan does not win")
    return plan


def generate_game(seed: int, split: str = "train") -> GeneratedGame:
    """The game for ``seed`` in ``split`` (deterministic; planner-validated). Raises ``GameLoadError`` if none."""
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLITS)}")
    task_type = TASK_TYPES[seed % len(TASK_TYPES)]
    c = _constants()
    valid_rooms = c.GOALS_VALID[task_type]
    scenes = [n for n in _scene_numbers(split) if _scene(n).room_type in valid_rooms]
    errors: list[str] = []
    for attempt in range(_MAX_ATTEMPTS):
        rng = random.Random(f"openr-alfworld-v{GENERATOR_VERSION}:{split}:{seed}:{attempt}")
        scene = _scene(rng.choice(scenes))
        try:
            params = _choose_task(rng, task_type, scene)
            name = f"gen_v{GENERATOR_VERSION}_{split}_{seed}"
            problem = _pddl_problem(rng, name, task_type, scene, params)
        except _Retry:
            continue
        goal_text = _goal_text(rng, task_type, params)
        grammar = _wheel_text("data/alfred.twl2").replace("UNKNOWN GOAL", goal_text)
        game = {"pddl_domain": _wheel_text("data/alfred.pddl"), "grammar": grammar, "pddl_problem": problem}
        try:
            plan = _validated_plan(game)
        except GameLoadError as exc:
            errors.append(str(exc))
            continue
        game.update(solvable=True, walkthrough=plan)
        traj_data = {
            "task_id": name,
            "task_type": task_type,
            "pddl_params": params,
            "scene": {"floor_plan": f"FloorPlan{scene.number}", "scene_num": scene.number},
            "turk_annotations": {"anns": [{"task_desc": goal_text, "high_descs": []}]},
            "generator": {"name": "openr-gym", "version": GENERATOR_VERSION, "split": split, "seed": seed},
        }
        return GeneratedGame(game, traj_data, plan)
    raise GameLoadError(
        f"no solvable {task_type} game for seed {seed} after {_MAX_ATTEMPTS} attempts: {errors[-3:]}"
    )


def default_cache_dir() -> Path:
    """``$OPENR_GYM_ALFWORLD_CACHE``, else ``$XDG_CACHE_HOME/openr-gym/alfworld`` (``~/.cache/openr-gym/alfworld``).

    It lives here, next to the cache's writer, so that ``games`` imports ``generate`` and never the reverse."""
    explicit = os.environ.get("OPENR_GYM_ALFWORLD_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "openr-gym" / "alfworld"


def generated_game_dir(cache_dir: str | os.PathLike, seed: int, split: str = "train") -> Path:
    """Where the game for ``seed`` lives in the cache."""
    task_type = TASK_TYPES[seed % len(TASK_TYPES)]
    return Path(cache_dir) / f"generated-v{GENERATOR_VERSION}" / split / f"{seed:06d}-{task_type}"


def ensure_generated_game(cache_dir: str | os.PathLike, seed: int, split: str = "train") -> Path:
    """The path of the game's ``game.tw-pddl``, generating and caching it on first use (atomic writes)."""
    folder = generated_game_dir(cache_dir, seed, split)
    game_file = folder / "game.tw-pddl"
    if game_file.exists() and (folder / "traj_data.json").exists():
        return game_file
    generated = generate_game(seed, split)
    folder.mkdir(parents=True, exist_ok=True)
    for filename, payload in (("traj_data.json", generated.traj_data), ("game.tw-pddl", generated.game)):
        tmp = folder / f".{filename}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(payload))
        tmp.replace(folder / filename)
    return game_file


def main(argv: list[str] | None = None) -> None:
    """Pre-generate games into the cache: ``python -m reasoning_gym.alfworld.generate --num-games 300``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--split", default="train", choices=sorted(_SPLITS))
    parser.add_argument("--num-games", type=int, default=300)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None, help="default: ~/.cache/openr-gym/alfworld")
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir or default_cache_dir()
    for seed in range(args.first_seed, args.first_seed + args.num_games):
        path = ensure_generated_game(cache_dir, seed, args.split)
        print(path, flush=True)


if __name__ == "__main__":
    main()
