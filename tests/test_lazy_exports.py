"""Package exports are lazy, written one way (``lazy_loader.attach``), and every exported name resolves."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAZY_PACKAGES = [
    "agents",
    "agents.engines",
    "agents.rl",
    "agents.search",
    "rewards",
    "rewards.prm",
    "reasoning_gym.alfworld",
]


def test_importing_the_packages_pulls_in_no_heavy_library():
    code = "import sys\n" + "".join(f"import {name}\n" for name in LAZY_PACKAGES)
    code += "heavy = sorted({'torch', 'transformers', 'vllm', 'textworld', 'alfworld'} & set(sys.modules))\n"
    code += "assert not heavy, heavy\n"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_lazy_package_init_uses_the_one_helper(package):
    source = (ROOT / package.replace(".", "/") / "__init__.py").read_text()
    assert "lazy_loader.attach(" in source and "def __getattr__" not in source


@pytest.mark.parametrize("package", [p for p in LAZY_PACKAGES if p != "reasoning_gym.alfworld"])
def test_every_exported_name_resolves(package):
    pytest.importorskip("torch")
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    assert sorted(dir(module)) == sorted(module.__all__)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_search_agents_import_like_rl_agents():
    import agents
    from agents.rl import GRPO
    from agents.search import MCTS, BeamSearch

    assert agents.MCTS is MCTS and agents.BeamSearch is BeamSearch and agents.GRPO is GRPO
