"""Outcome judgers and process reward models (never imports ``agents``: language models are handed in).

Exports are lazy (``lazy_loader``): the PRMs and the LLM judge load torch / transformers only when first used.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "judge": ["MathJudger"],
        "answer": ["extract_answer"],
        "llm_judge": ["JudgeVerdict", "LLMJudge"],
        "prm": ["ProcessRewardModel", "load_prm"],
    },
)
