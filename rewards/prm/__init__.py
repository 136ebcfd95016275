"""Process reward models: one ``score(questions, step_lists) -> list[list[float]]`` interface, three model kinds.

- ``StepTagPRM``: a causal LM read at a tag after each step (Math-Shepherd ``ки`` / OpenR Math-psa formats).
- ``ClassificationPRM``: a token classifier read at a separator token (Qwen2.5-Math-PRM style).
- ``ValueHeadPRM``: a scalar head on a causal LM (``CausalLMWithValueHead``, shared with PPO's critic and OREO's
  value model).

``load_prm(path)`` rebuilds whatever ``experiments/train_prm.py`` saved. Torch and transformers are imported only
when one of these names is first used (lazy exports, ``lazy_loader``).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "base": ["AGGREGATIONS", "Aggregation", "ProcessRewardModel", "aggregate_scores"],
        "formats": ["FORMATS", "MATH_PSA", "MATH_SHEPHERD", "VALUE_HEAD", "StepFormat", "get_format"],
        "loading": ["PRM_CONFIG_FILE", "load_prm"],
        "step_tag": ["StepTagPRM"],
        "classification": ["ClassificationPRM"],
        "value_head": ["CausalLMWithValueHead", "ValueHeadPRM"],
    },
)
