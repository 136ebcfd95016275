"""ALFWorld household tasks as a step-level Gymnasium env (``openr/ALFWorld-v0``), offline.

Exports are lazy (``lazy_loader``): ``textworld`` / ``alfworld`` load only when an env or a generator is used.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "env": ["ALFWorldEnv"],
        "games": ["GamePool"],
        "generate": ["TASK_TYPES", "default_cache_dir", "generate_game"],
        "expert": ["HandcodedExpert", "run_expert"],
        "speedups": ["enable_fast_textworld", "stock_textworld"],
    },
)
