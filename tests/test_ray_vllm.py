"""RayEngine with vLLM actors (``backend="vllm"``): greedy output equal to HFEngine's, before and after a weight
broadcast. Slow (a vLLM engine starts inside each actor: ~20-60 s eager on CPU) and needs both extras."""

from __future__ import annotations

import os

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")

from agents.engines import HFEngine, RayEngine  # noqa: E402
from agents.engines.ray_engine import connect  # noqa: E402
from agents.engines.testing import save_tiny_model, tiny_model  # noqa: E402

pytestmark = [
    pytest.mark.ray,
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.usefixtures("one_torch_thread"),
]


def test_vllm_actors_serve_the_trainers_weights(tmp_path):
    folder = save_tiny_model(tmp_path / "model", seed=0)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    connect("local", num_cpus=2, log_to_driver=False)  # a private instance on 127.0.0.1, no dashboard
    try:
        vllm_kwargs = {
            "dtype": "float32",
            "enforce_eager": True,
            "max_model_len": 512,
            "cpu_kv_cache_gib": 0.25,
        }
        with RayEngine(str(folder), num_actors=2, backend="vllm", engine_kwargs=vllm_kwargs) as engine:
            prompts = [engine.step_prompt(f"What is {i} + 30?", [], "Solve step by step.") for i in range(4)]
            local = HFEngine(str(folder), dtype="float32", device="cpu", num_threads=1)
            want = [g[0].text for g in local.generate(prompts, max_new_tokens=8, temperature=0)]
            assert [g[0].text for g in engine.generate(prompts, max_new_tokens=8, temperature=0)] == want
            new_model, _ = tiny_model(1, tokenizer=engine.tokenizer)
            engine.update_weights(new_model)
            want = [
                g[0].text
                for g in HFEngine(new_model, engine.tokenizer, num_threads=1).generate(
                    prompts, max_new_tokens=8, temperature=0
                )
            ]
            for actor_output in engine.generate_each(prompts, max_new_tokens=8, temperature=0):
                assert [g[0].text for g in actor_output] == want
    finally:
        ray.shutdown()
