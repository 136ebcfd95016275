"""LLM engines: one batched interface over transformers, vLLM, OpenAI-compatible servers and Ray engine actors.

Exports are lazy (``lazy_loader``): torch, transformers, vllm and ray load on first use, so ``import agents.engines``
is cheap.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "base": ["Completion", "Engine", "FinishReason", "GenerationStats", "Prompt", "StepPrompter"],
        "hf": ["HFEngine"],
        "vllm_engine": ["VLLMEngine"],
        "openai_engine": ["OpenAIEngine"],
        "ray_engine": ["RayEngine"],
        "models": ["DEFAULT_MODEL", "load_model", "load_tokenizer"],
    },
)
