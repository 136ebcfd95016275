"""The CUDA path, on tiny models: engines, training, the PRM and vLLM weight sync on a GPU.

Every test here is marked ``gpu`` and skipped cleanly without CUDA (tests/conftest.py); ``scripts/gpu_check.sh``
runs them on a GPU machine, next to the end-to-end check with SmolLM2-135M (``experiments/gpu_check.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

from agents.engines import HFEngine  # noqa: E402
from agents.engines.testing import byte_level_tokenizer, save_tiny_model, tiny_model  # noqa: E402


def _greedy(engine, prompts, tokens: int = 8) -> list[list[int]]:
    return [group[0].token_ids for group in engine.generate(prompts, max_new_tokens=tokens, temperature=0)]


def test_hf_engine_on_cuda_matches_cpu_greedy_and_keeps_the_global_rng():
    model, tokenizer = tiny_model(0)
    prompts = [f"Problem {i}: add the numbers." for i in range(4)]
    cpu = _greedy(HFEngine(model, tokenizer), prompts)
    cuda_engine = HFEngine(model.to("cuda"), tokenizer)
    assert cuda_engine.device.type == "cuda"
    assert _greedy(cuda_engine, prompts) == cpu
    state = torch.cuda.get_rng_state()
    first = cuda_engine.generate(prompts[:1], n=4, max_new_tokens=6, temperature=1.0, seed=3)
    again = cuda_engine.generate(prompts[:1], n=4, max_new_tokens=6, temperature=1.0, seed=3)
    assert [c.token_ids for c in first[0]] == [c.token_ids for c in again[0]]
    assert torch.equal(torch.cuda.get_rng_state(), state), "a seeded call changed the global CUDA RNG"


def test_trainer_autocast_runs_on_the_policy_device():
    from agents.engines.hardware import bf16_is_fast
    from agents.rl.sft import SFT, SFTConfig

    model, tokenizer = tiny_model(0)
    agent = SFT(
        HFEngine(model.to("cuda"), tokenizer), "openr/Arithmetic-v0", SFTConfig(batch_size=2, verbose=0)
    )
    with agent.autocast():
        assert torch.is_autocast_enabled("cuda") is bf16_is_fast("cuda")
        assert not torch.is_autocast_enabled("cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    agent.learn(1)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert next(model.parameters()).device.type == "cuda"


@pytest.mark.parametrize("agent_name", ["GRPO", "PPO"])
def test_on_policy_updates_run_on_cuda(agent_name: str):
    import agents
    from agents.rl.toy import DIGITS_ID, register_toy_envs

    register_toy_envs()
    model, tokenizer = tiny_model(0)
    agent_class = getattr(agents, agent_name)
    config = agent_class.config_class(
        prompts_per_update=2, group_size=4, max_new_tokens=6, max_steps=1, learning_rate=1e-2, kl_coef=0.05,
        verbose=0,
    )  # fmt: skip
    agent = agent_class(HFEngine(model.to("cuda"), tokenizer), DIGITS_ID, config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    agent.learn(2)
    assert agent.num_timesteps == 2
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.device.type == "cuda" for m in agent.checkpoint_modules().values() for p in m.parameters())


def test_load_model_and_load_prm_default_to_cuda(tmp_path: Path):
    from agents.engines import load_model
    from rewards.prm import load_prm

    folder = save_tiny_model(tmp_path / "tiny")
    model, _ = load_model(str(folder))
    assert next(model.parameters()).device.type == "cuda"
    prm = load_prm(folder)
    assert next(prm.model.parameters()).device.type == "cuda"
    scores = prm.score(["What is 1 + 1?"], [["1 + 1 = 2.", "The answer is 2."]])
    assert len(scores[0]) == 2 and all(0.0 <= s <= 1.0 for s in scores[0])


def test_bench_engines_hf_backend_on_cuda(tmp_path: Path):
    from experiments.bench_engines import main

    folder = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "bench.json"
    main(["--backends", "hf", "--model", str(folder), "--batch-sizes", "1", "2", "--max-new-tokens", "4"]
         + ["--branches", "2", "--prefix-tokens", "40", "--overhead-batch", "2", "--out", str(out)])  # fmt: skip
    import json

    hf = json.loads(out.read_text())["backends"]["hf"]
    assert hf["hardware"]["cuda"] and all(row["tok_s"] > 0 for row in hf["throughput"])


@pytest.mark.vllm
def test_vllm_on_cuda_weight_sync_matches_the_trained_model(tmp_path: Path):
    pytest.importorskip("vllm")
    from agents.engines import VLLMEngine

    tokenizer = byte_level_tokenizer()
    folder = save_tiny_model(tmp_path / "tiny", seed=0, tokenizer=tokenizer)
    engine = VLLMEngine(
        folder, dtype="float32", enforce_eager=True, max_model_len=512, gpu_memory_utilization=0.2
    )
    try:
        trained, _ = tiny_model(1, tokenizer=tokenizer)  # other weights, same architecture
        prompts = [engine.step_prompt(f"Problem {i}", [], "Write digits.") for i in range(3)]
        engine.update_weights(trained)
        assert _greedy(engine, prompts) == _greedy(HFEngine(trained.to("cuda"), tokenizer), prompts)
    finally:
        engine.close()
