"""vLLM's NCCL weight transfer behind RayEngine (``weight_transfer="nccl"``).

The transfer itself needs CUDA (NCCL): ``test_nccl_weights_reach_every_vllm_actor`` is marked ``gpu`` and runs on a
machine with two GPUs (scripts/gpu_check.sh). The rest run everywhere: the per-actor NCCL ranks, the fan-out of
vLLM's control calls over the actors (through a fake Ray named as such), and the argument checks.
"""

from __future__ import annotations

import os

import pytest

from agents.engines.nccl_weights import ActorsSyncClient, worker_init_infos


def test_each_actor_gets_its_own_rank_offset():
    info = {
        "master_address": "10.0.0.1",
        "master_port": 29500,
        "world_size": 7,
        "rank_offset": 1,
        "packed": True,
    }
    infos = worker_init_infos(info, num_actors=3, gpus_per_actor=2)
    assert [i["rank_offset"] for i in infos] == [1, 3, 5]  # the trainer is rank 0; actor i's workers follow
    assert all(i["master_port"] == 29500 and i["world_size"] == 7 and i["packed"] for i in infos)
    with pytest.raises(ValueError, match="world_size must be 1 \\+ actors x GPUs = 5"):
        worker_init_infos(info, num_actors=2, gpus_per_actor=2)
    with pytest.raises(ValueError, match="gpus_per_actor >= 1"):
        worker_init_infos(info, num_actors=2, gpus_per_actor=0)


class FakeRay:
    """Stands in for the ``ray`` module in a unit test: a "ref" is the call itself, ``get`` returns them."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def get(self, refs: list, timeout: float) -> list:
        self.timeouts.append(timeout)
        return refs


def test_the_client_sends_every_control_call_to_every_actor():
    calls = []
    fake_ray = FakeRay()
    client = ActorsSyncClient(
        fake_ray,
        ["a0", "a1"],
        1,
        30.0,
        lambda actor, method, kwargs, version: calls.append((actor, method, kwargs, version)),
    )
    client.init_weight_transfer_engine(
        {"master_address": "h", "master_port": 1, "world_size": 3, "rank_offset": 1}
    )
    assert [(a, m, k["init_info"]["rank_offset"]) for a, m, k, _ in calls] == [
        ("a0", "init_weight_transfer_engine", 1),
        ("a1", "init_weight_transfer_engine", 2),
    ]
    calls.clear()
    client.version = 7
    client.start_weight_update()
    client.update_weights({"names": ["w"], "dtype_names": ["bfloat16"], "shapes": [[2]]})
    client.finish_weight_update()
    assert [(a, m, v) for a, m, _, v in calls] == [  # only a finished round marks the actors' version
        ("a0", "start_weight_update", None),
        ("a1", "start_weight_update", None),
        ("a0", "update_weights", None),
        ("a1", "update_weights", None),
        ("a0", "finish_weight_update", 7),
        ("a1", "finish_weight_update", 7),
    ]
    assert calls[2][2] == {"update_info": {"names": ["w"], "dtype_names": ["bfloat16"], "shapes": [[2]]}}
    assert fake_ray.timeouts == [30.0] * 4  # every control call waits with the time limit


def test_nccl_transfer_needs_vllm_actors_on_gpus():
    from agents.engines import RayEngine

    with pytest.raises(ValueError, match="needs backend='vllm'"):
        RayEngine("smollm2-135m-instruct", backend="hf", weight_transfer="nccl")
    with pytest.raises(ValueError, match="needs backend='vllm'"):
        RayEngine("smollm2-135m-instruct", backend="vllm", gpus_per_actor=0, weight_transfer="nccl")
    with pytest.raises(ValueError, match="weight_transfer must be"):
        RayEngine("smollm2-135m-instruct", weight_transfer="gloo")


@pytest.mark.gpu
@pytest.mark.ray
@pytest.mark.vllm
def test_nccl_weights_reach_every_vllm_actor(tmp_path):
    """Two GPUs: the trainer's model on the last one, one vLLM actor on GPU 0; greedy output equals the trainer's
    after a broadcast, for the start-up weights and for new ones."""
    torch = pytest.importorskip("torch")
    ray = pytest.importorskip("ray")
    pytest.importorskip("vllm")
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs: the trainer's and the vLLM actor's")
    from agents.engines import HFEngine, RayEngine
    from agents.engines.ray_engine import connect
    from agents.engines.testing import save_tiny_model, tiny_model

    folder = save_tiny_model(tmp_path / "model", seed=0)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    connect("local", num_gpus=1, log_to_driver=False)
    try:
        with RayEngine(
            str(folder),
            num_actors=1,
            backend="vllm",
            gpus_per_actor=1,
            weight_transfer="nccl",
            engine_kwargs={"dtype": "float32", "enforce_eager": True, "max_model_len": 512},
        ) as engine:
            prompts = [engine.step_prompt(f"What is {i} + 30?", [], "Solve step by step.") for i in range(4)]
            new_model, _ = tiny_model(1, tokenizer=engine.tokenizer)
            new_model = new_model.to(f"cuda:{torch.cuda.device_count() - 1}")  # Ray gives the actor GPU 0
            engine.update_weights(new_model)
            want = [
                g[0].text
                for g in HFEngine(new_model, engine.tokenizer).generate(
                    prompts, max_new_tokens=8, temperature=0
                )
            ]
            assert [g[0].text for g in engine.generate(prompts, max_new_tokens=8, temperature=0)] == want
            assert engine.actor_status()[0]["version"] == 1
    finally:
        ray.shutdown()
