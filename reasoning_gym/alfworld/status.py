"""A status line for an ALFWorld game: the task, what the player holds, and the receptacles not visited yet.

Why: a small policy reading a long game chat loses the task at its top, the object in its hand and where it has
already looked (docs/alfworld.md, fifth session: clones that cycle between two receptacles and take the first object
they meet). The game knows all three, as it knows the admissible commands, so the env can say them
(``show_status=True``) instead of leaving that bookkeeping to the model. The line is read from the game's own text
(the room description and the replies to accepted commands), so a recorded chat gets the same line back.

The marks that cut an observation into its parts (task, status line, admissible commands) live here too, so the env
that writes them and the chat view that reads them share one spelling.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "ADMISSIBLE_MARK",
    "GOAL_MARK",
    "STATUS_MARK",
    "accepted",
    "game_status",
    "goal_object",
    "room_receptacles",
    "task_text",
]

GOAL_MARK = "Your task is to: "
STATUS_MARK = "\n\nStatus: "
ADMISSIBLE_MARK = "\n\nAdmissible commands: "
_ROOM = re.compile(r"Looking quickly around you, you see (.*?)\.(?:\n|$)")
_ARTICLE = re.compile(r"^(?:and )?(?:a|an) ")
_DONE = {"heat": "heated", "cool": "cooled", "clean": "cleaned"}
_GOAL_OBJECT = re.compile(
    r"^(?:put (?:a|an|some|two) (?:clean |hot |cool )?(\w+) (?:in|on)"
    r"|(?:clean|heat|cool) (?:a|an|some) (\w+) and put"
    r"|look at (?:a |an |the |some )?(\w+) under"
    r"|examine (?:a |an |the |some )?(\w+) with"
    r"|find two (\w+) and put)"
)


def task_text(intro: str) -> str:
    """The task sentence of a game's opening text (``""`` if it has none)."""
    return intro.rsplit(GOAL_MARK, 1)[-1].strip() if GOAL_MARK in intro else ""


def goal_object(task: str) -> str | None:
    """The object class a task is about (``"cloth"`` in "put a clean cloth in sinkbasin."), from ALFWorld's six task
    templates; ``None`` for any other sentence."""
    match = _GOAL_OBJECT.match(task.strip().lower())
    return next((group for group in match.groups() if group), None) if match else None


def room_receptacles(intro: str) -> list[str]:
    """The receptacles the room description lists, in its order (``[]`` if it has no such sentence)."""
    match = _ROOM.search(intro)
    if match is None:
        return []
    names = (_ARTICLE.sub("", part.strip()) for part in match.group(1).split(","))
    return [name for name in names if name and name != "nothing"]


def accepted(reply: str) -> bool:
    """Whether the game carried out the command that got ``reply`` (it answers a refused one "Nothing happens")."""
    return not reply.startswith("Nothing happens")


def game_status(intro: str, steps: Iterable[tuple[str, str]]) -> str:
    """``Task: ... Holding: ... Not visited: ...`` after ``steps`` (command, the game's reply) from ``intro``.

    Only accepted commands count (replies that do not start with "Nothing happens"): ``go to X`` visits X,
    ``take O from R`` puts O in hand, ``move O to R`` empties it, ``heat/cool/clean O with R`` marks O.
    """
    goal = task_text(intro)
    unvisited = room_receptacles(intro)
    held, marks = "", []
    for command, reply in steps:
        if not accepted(reply):
            continue
        words = command.split()
        if command.startswith("go to "):
            target = command[len("go to ") :].strip()
            if target in unvisited:
                unvisited.remove(target)
        elif words and words[0] == "take" and " from " in command:
            held, marks = command[len("take ") :].split(" from ", 1)[0].strip(), []
        elif words and words[0] == "move" and " to " in command:
            held, marks = "", []
        elif words and words[0] in _DONE and held and command[len(words[0]) + 1 :].startswith(held + " "):
            marks.append(_DONE[words[0]])
    holding = (held + (f" ({', '.join(marks)})" if marks else "")) if held else "nothing"
    parts = [
        f"Task: {goal}" if goal else "",
        f"Holding: {holding}.",
        f"Not visited: {', '.join(unvisited) or 'none'}.",
    ]
    return " ".join(part for part in parts if part)
