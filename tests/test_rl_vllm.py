"""GRPO sampling from a vLLM engine while training a transformers copy: weights reach vLLM after every update."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from agents.engines import HFEngine  # noqa: E402
from agents.engines.testing import byte_level_tokenizer, save_tiny_model, tiny_model  # noqa: E402
from agents.rl.grpo import GRPO, GRPOConfig  # noqa: E402
from agents.rl.toy import DIGITS_ID, register_toy_envs  # noqa: E402

register_toy_envs()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(
        tmp_path_factory.mktemp("rl-vllm") / "model", seed=0, tokenizer=byte_level_tokenizer()
    )


@pytest.fixture(scope="module")
def vllm_engine(tiny_folder: Path) -> Iterator:
    pytest.importorskip("vllm")
    from agents.engines import VLLMEngine

    engine = VLLMEngine(tiny_folder, dtype="float32", enforce_eager=True, max_model_len=512, seed=0)
    yield engine
    engine.close()


def _greedy(engine, prompts) -> list[list[int]]:
    return [group[0].token_ids for group in engine.generate(prompts, max_new_tokens=8, temperature=0)]


@pytest.mark.vllm
@pytest.mark.parametrize("lora_r", [0, 4])
def test_grpo_with_vllm_engine_syncs_weights(vllm_engine, lora_r: int) -> None:
    if lora_r:
        pytest.importorskip("peft")
    model, tokenizer = tiny_model(0, tokenizer=byte_level_tokenizer())
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = GRPOConfig(
        prompts_per_update=2,
        group_size=4,
        max_new_tokens=8,
        max_steps=1,
        learning_rate=2e-2,
        kl_coef=0.0,
        autocast="off",
        verbose=0,
        lora_r=lora_r,
    )
    agent = GRPO(vllm_engine, DIGITS_ID, config, model=model)
    prompts = [vllm_engine.step_prompt(f"Problem {i}", [], "Write digits.") for i in range(3)]
    try:
        agent.learn(2)
        assert agent.num_updates == 2
        policy = agent.model.merge_and_unload() if lora_r else agent.model
        changed = any(not torch.equal(p, initial[n]) for n, p in policy.named_parameters() if n in initial)
        assert changed, "the update did not change the policy"
        trained_hf = HFEngine(policy, tokenizer)
        assert _greedy(vllm_engine, prompts) == _greedy(trained_hf, prompts)
    finally:
        fresh, _ = tiny_model(0, tokenizer=byte_level_tokenizer())
        vllm_engine.update_weights(fresh)  # back to the initial weights for the next parametrisation
