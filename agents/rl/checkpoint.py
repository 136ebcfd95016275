"""Resumable training checkpoints: trainable weights, optimizer, every RNG and the step counters.

Why all of it: an exact resume (same weights after N + M updates whether or not training stopped at N) needs the
optimizer moments, the python / numpy / torch RNG streams and the agent's own counters, not just the weights.
Only trainable parameters are stored (LoRA adapters when LoRA is on); frozen weights come from the model the
agent is rebuilt with.

Why a folder is written aside and then renamed (:func:`atomic_folder`): a checkpoint is several files (the
policy, ``agent.json``, ``training_state.pt``); a run killed while overwriting them in place would leave new
weights next to an old optimizer. Written aside, a checkpoint folder either exists complete or not at all, and
:func:`latest_checkpoint` (what ``--resume`` uses) finds the newest one and clears what killed writers left.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "atomic_folder",
    "clean_stale_folders",
    "latest_checkpoint",
    "load_training_state",
    "remove_folder",
    "rng_state",
    "save_training_state",
    "set_rng_state",
    "trainable_state_dict",
]

_FILE = "training_state.pt"
_ASIDE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+$")


def _aside(final: Path, kind: str) -> Path:
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """Yield an empty folder next to ``final``; on success it becomes ``final`` by rename (an existing ``final``
    is moved aside first and deleted after), on error it is deleted.

    A kill at any moment leaves either the old complete folder, the new complete folder, or (between the two
    renames of an overwrite) the old one under a ``.<name>.old-*`` name that :func:`clean_stale_folders` renames
    back. Page-cache durability only: a kill cannot lose written data, a power cut may."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _aside(final, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = _aside(final, "old")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def remove_folder(folder: str | Path) -> None:
    """Delete a folder by first renaming it aside: a kill mid-delete leaves a stale ``.tmp`` folder (cleared
    later), never a half-deleted checkpoint under its own name."""
    folder = Path(folder)
    if not folder.exists():
        return
    doomed = _aside(folder, "tmp")
    os.rename(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def clean_stale_folders(parent: str | Path) -> list[Path]:
    """Delete the ``.<name>.tmp-<pid>-*`` folders of writers that are gone and restore a ``.<name>.old-*`` whose
    ``<name>`` is missing (a kill between the two renames of an overwrite); returns what was removed."""
    parent = Path(parent)
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in sorted(parent.iterdir()):
        match = _ASIDE.match(entry.name)
        if match is None or not entry.is_dir() or _alive(int(match["pid"])):
            continue
        final = parent / match["name"]
        if match["kind"] == "old" and not final.exists():
            os.rename(entry, final)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def latest_checkpoint(save_dir: str | Path, prefix: str = "checkpoint_") -> Path | None:
    """The complete ``<prefix><updates>`` folder with the most updates in ``save_dir`` (None if there is none),
    after clearing what killed writers left there."""
    save_dir = Path(save_dir)
    clean_stale_folders(save_dir)
    best: tuple[int, Path] | None = None
    if save_dir.is_dir():
        for entry in save_dir.iterdir():
            number = entry.name.removeprefix(prefix)
            if entry.name.startswith(prefix) and number.isdigit() and (entry / _FILE).is_file():
                if best is None or int(number) > best[0]:
                    best = (int(number), entry)
    return best[1] if best else None


def rng_state() -> dict[str, Any]:
    """The global python, numpy and torch RNG states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def trainable_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that receive gradients (all of them for full fine-tuning, the adapters under LoRA)."""
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def save_training_state(
    folder: str | Path,
    *,
    modules: Mapping[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None,
    counters: Mapping[str, Any],
) -> Path:
    """Write ``training_state.pt`` into ``folder`` (created); ``counters`` is any picklable agent state."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "modules": {name: trainable_state_dict(module) for name, module in modules.items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "counters": dict(counters),
        "rng": rng_state(),
    }
    path = folder / _FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_training_state(
    folder: str | Path,
    *,
    modules: Mapping[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns the counters.

    Raises ``ValueError`` when a stored tensor has no trainable counterpart (e.g. a LoRA checkpoint loaded into a
    model without LoRA), instead of silently training from the wrong weights.
    """
    path = Path(folder) / _FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    for name, module in modules.items():
        stored = state["modules"].get(name)
        if stored is None:
            raise ValueError(f"checkpoint {path} has no weights for {name!r}")
        params = dict(module.named_parameters())
        unknown = sorted(set(stored) - set(params))
        if unknown:
            raise ValueError(
                f"checkpoint {path}: {len(unknown)} tensors do not fit {name!r}, e.g. {unknown[0]}"
            )
        with torch.no_grad():
            for key, tensor in stored.items():
                params[key].copy_(tensor)
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng:
        set_rng_state(state["rng"])
    return state["counters"]
