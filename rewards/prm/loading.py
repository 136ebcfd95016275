"""``load_prm``: rebuild whatever ``experiments/train_prm.py`` (or any PRM saver) wrote, from its ``prm_config.json``."""

from __future__ import annotations

import json
import os
from typing import Any

from rewards.prm.base import ProcessRewardModel
from rewards.prm.formats import MATH_SHEPHERD, VALUE_HEAD, StepFormat, get_format

__all__ = ["PRM_CONFIG_FILE", "load_prm"]

PRM_CONFIG_FILE = "prm_config.json"
"""The file in a saved PRM folder that names its kind and step format."""


def load_prm(
    path: str | os.PathLike[str], *, dtype: Any = None, device: str | None = None, **kwargs: Any
) -> ProcessRewardModel:
    """Load a PRM saved by ``experiments/train_prm.py`` (its ``prm_config.json`` names the kind and format).

    Without a config file the folder is taken as a Math-Shepherd step-tag PRM. ``dtype``: a torch dtype (None:
    as saved); ``device``: defaults to CUDA when available, else CPU (the policy's default too). ``kwargs`` go to
    the PRM constructor (``batch_size``, ``max_length``, ...).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config: dict[str, Any] = {"kind": "step-tag"}
    config_path = os.path.join(path, PRM_CONFIG_FILE)
    if os.path.exists(config_path):
        with open(config_path) as f:
            config.update(json.load(f))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model_kwargs = {"dtype": dtype} if dtype is not None else {}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind = config["kind"]
    if kind == "step-tag":
        from rewards.prm.step_tag import StepTagPRM

        fmt = config.get("format", MATH_SHEPHERD.name)
        fmt = StepFormat(**config["step_format"]) if "step_format" in config else get_format(fmt)
        model = AutoModelForCausalLM.from_pretrained(path, **model_kwargs).to(device)
        return StepTagPRM(model, tokenizer, fmt, **kwargs)
    if kind == "value-head":
        from rewards.prm.value_head import CausalLMWithValueHead, ValueHeadPRM

        model = CausalLMWithValueHead.from_pretrained(path, **model_kwargs).to(device)
        return ValueHeadPRM(model, tokenizer, config.get("format", VALUE_HEAD.name), **kwargs)
    if kind == "classification":
        from transformers import AutoModelForTokenClassification

        from rewards.prm.classification import ClassificationPRM

        model = AutoModelForTokenClassification.from_pretrained(path, **model_kwargs).to(device)
        return ClassificationPRM(model, tokenizer, **{**config.get("options", {}), **kwargs})
    raise ValueError(f"{config_path}: unknown PRM kind {kind!r}")
