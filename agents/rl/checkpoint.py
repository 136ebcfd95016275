"""Resumable training checkpoints: trainable weights, optimizer, every RNG and the step counters.

Why all of it: an exact resume (same weights after N + M updates whether or not training stopped at N) needs the
optimizer moments, the python / numpy / torch RNG streams and the agent's own counters, not just the weights.
Only trainable parameters are stored (LoRA adapters when LoRA is on); frozen weights come from the model the
agent is rebuilt with.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["load_training_state", "rng_state", "save_training_state", "set_rng_state", "trainable_state_dict"]

_FILE = "training_state.pt"


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
