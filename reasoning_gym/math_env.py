"""``openr/MATH-v0`` and ``openr/GSM8K-v0``: competition math and grade-school word problems, one step per action."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from reasoning_gym.base import ListSource, ReasoningEnv
from reasoning_gym.data import find_default, load_gsm8k, load_math

__all__ = ["GSM8KEnv", "MathEnv"]

MATH_HUB_NAME = "HuggingFaceH4/MATH-500"
GSM8K_HUB_NAME = "openai/gsm8k"


class MathEnv(ReasoningEnv):
    """MATH (Hendrycks et al., 2021) as a step-level environment; see ``ReasoningEnv`` for the protocol.

    ## Arguments
    ``data_path``: a local JSONL file/folder in the PRM800K schema (problem, solution, answer, subject, level,
    unique_id) or a Hugging Face hub name. Default: ``$OPENR_GYM_DATA/math/test500.jsonl`` when present, else the
    hub's MATH-500. ``levels`` / ``subjects`` filter the problems. Other arguments as ``ReasoningEnv``.
    """

    def __init__(
        self,
        data_path: str | os.PathLike | None = None,
        levels: Iterable[int] | None = None,
        subjects: Iterable[str] | None = None,
        split: str = "test",
        **kwargs: Any,
    ) -> None:
        source = data_path if data_path is not None else (find_default("math/test500.jsonl") or MATH_HUB_NAME)
        problems = load_math(source, levels=levels, subjects=subjects, split=split)
        kwargs.setdefault("max_steps", 20)
        super().__init__(ListSource(problems, "openr/MATH-v0"), **kwargs)


class GSM8KEnv(ReasoningEnv):
    """GSM8K (Cobbe et al., 2021) as a step-level environment; answers are numbers (``#### N`` in the data).

    ## Arguments
    ``data_path``: a local GSM8K JSONL (question, answer) or a hub name. Default:
    ``$OPENR_GYM_DATA/gsm8k/test.jsonl`` when present, else the hub's ``openai/gsm8k``. ``split`` picks the hub
    split. Other arguments as ``ReasoningEnv``.
    """

    def __init__(
        self, data_path: str | os.PathLike | None = None, split: str = "test", **kwargs: Any
    ) -> None:
        source = (
            data_path if data_path is not None else (find_default(f"gsm8k/{split}.jsonl") or GSM8K_HUB_NAME)
        )
        problems = load_gsm8k(source, split=split)
        kwargs.setdefault("max_steps", 16)
        super().__init__(ListSource(problems, "openr/GSM8K-v0"), **kwargs)
