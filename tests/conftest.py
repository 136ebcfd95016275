"""Shared pytest fixtures: the real data folder (skip cleanly when it is absent)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from reasoning_gym.data import shared_data_dir

# No hub at test time: every model and dataset comes from disk.
for _flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_flag, "1")
# Test models are tiny: a 1 GiB vLLM KV cache per engine (instead of a quarter of RAM) lets several engines coexist.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# OpenMP threads that sleep instead of spinning: on a shared 2-core machine, spinning stalls every other process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip cleanly on a machine without CUDA (torch is imported only if there are any)."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU (scripts/gpu_check.sh runs the gpu tests on one)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("shared data folder not found (set $OPENR_GYM_DATA)")
    return root


@pytest.fixture(scope="session")
def math500_path(data_dir: Path) -> Path:
    path = data_dir / "math" / "test500.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def gsm8k_path(data_dir: Path) -> Path:
    path = data_dir / "gsm8k" / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP spin-waits make them 3x slower.

    A test module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
