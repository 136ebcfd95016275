"""Trainer weights to vLLM engine actors on GPUs over NCCL, through vLLM's own weight-transfer engine.

Why: the object-store path (``RayEngine.update_weights`` by default) copies every weight trainer GPU -> host ->
object store -> each actor's host -> its GPU. On GPUs vLLM ships a weight-transfer engine for exactly this RL
loop (``WeightTransferConfig(backend="nccl")``, docs.vllm.ai "Weight Transfer"): the trainer joins one NCCL group
with every inference worker and broadcasts the weights GPU to GPU in packed buffers. Here the trainer process is
NCCL rank 0 and actor ``i``'s workers take ranks ``1 + i * gpus_per_actor`` onwards; :class:`ActorsSyncClient` is
vLLM's ``VLLMWeightSyncClient`` protocol over the engine actors (each control call goes to all of them at once).

GPU only (NCCL): on CPU, and whenever an actor has restarted (its NCCL ranks are gone), RayEngine uses the
object store. Nothing here imports vLLM until a sender is built.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["ActorsSyncClient", "NCCLWeightSender", "worker_init_infos"]


def worker_init_infos(
    init_info: dict[str, Any], num_actors: int, gpus_per_actor: int
) -> list[dict[str, Any]]:
    """One worker-side init payload per actor: vLLM's trainer engine writes ``rank_offset = 1`` (one inference
    engine); with several engines actor ``i``'s first worker is rank ``1 + i * gpus_per_actor``."""
    if num_actors < 1 or gpus_per_actor < 1:
        raise ValueError(f"need num_actors >= 1 and gpus_per_actor >= 1, got {num_actors}, {gpus_per_actor}")
    expected = 1 + num_actors * gpus_per_actor
    if init_info.get("world_size") != expected:
        raise ValueError(
            f"world_size must be 1 + actors x GPUs = {expected}, got {init_info.get('world_size')}"
        )
    return [{**init_info, "rank_offset": 1 + i * gpus_per_actor} for i in range(num_actors)]


class ActorsSyncClient:
    """vLLM's ``VLLMWeightSyncClient`` over engine actors: ``call(actor, method, kwargs, version)`` returns a Ray ref
    for ``EngineActor.weight_transfer(method, kwargs, version)``; every control call waits for all actors (with a
    time limit). ``version`` (set by the engine before each round) is what the actors record once it finishes."""

    def __init__(
        self, ray: Any, actors: Sequence[Any], gpus_per_actor: int, timeout: float, call: Callable[..., Any]
    ) -> None:
        self.ray = ray
        self.actors = list(actors)
        self.gpus_per_actor = gpus_per_actor
        self.timeout = timeout
        self.call = call
        self.version: int | None = None

    def _all(
        self, method: str, kwargs: Sequence[dict[str, Any]] | dict[str, Any], version: int | None = None
    ) -> None:
        per_actor = kwargs if isinstance(kwargs, list) else [kwargs] * len(self.actors)
        refs = [self.call(actor, method, args, version) for actor, args in zip(self.actors, per_actor)]
        self.ray.get(refs, timeout=self.timeout)

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        infos = worker_init_infos(init_info, len(self.actors), self.gpus_per_actor)
        self._all("init_weight_transfer_engine", [{"init_info": info} for info in infos])

    def start_weight_update(self) -> None:
        self._all("start_weight_update", {})

    def update_weights(self, update_info: Any) -> None:
        self._all("update_weights", {"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update", {}, self.version)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


class NCCLWeightSender:
    """The trainer side: one NCCL group with every actor's workers, then ``send(model)`` per policy update.

    ``model`` is anything with ``state_dict()`` on the trainer's GPU (the trainers pass the policy, or its merged
    LoRA view); the tied LM head is left out when the served model ties it (vLLM loads it from the embeddings).
    """

    def __init__(
        self, client: ActorsSyncClient, model: Any, *, tied_head: bool, address: str | None = None
    ) -> None:
        from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        holder = self

        class _CurrentModel(WeightSource):
            """The model of the latest ``send`` call, read as its state dict (names as vLLM's loader expects)."""

            def _items(self) -> Iterator[tuple[str, Any]]:
                for name, tensor in holder.model.state_dict().items():
                    if not (tied_head and name == "lm_head.weight"):
                        yield name, tensor.detach().contiguous()

            def metadata(self) -> list[Any]:
                return [ParamMeta(name, tensor.dtype, tuple(tensor.shape)) for name, tensor in self._items()]

            def __iter__(self) -> Iterator[tuple[str, Any]]:
                return self._items()

        import torch

        self.model = model
        self.client = client
        self.device = next(iter(model.state_dict().values())).device
        if self.device.type != "cuda":
            raise ValueError(f"NCCL weight transfer sends from a CUDA device; the model is on {self.device}")
        self._on_device = lambda: torch.cuda.device(self.device)  # NCCL uses the current device's stream
        world_size = 1 + len(client.actors) * client.gpus_per_actor
        info = NCCLTrainerInitInfo(
            master_address=address or client.ray.util.get_node_ip_address(),
            master_port=_free_port(),
            world_size=world_size,
            rank=0,
        )
        with self._on_device():
            self.engine = WeightTransferTrainerFactory.trainer_init(
                info, client=client, source=_CurrentModel()
            )

    def send(self, model: Any, version: int | None = None) -> None:
        """Broadcast ``model``'s weights to every actor (start, concurrent receive + broadcast, finish); the actors
        record ``version`` once the round has finished."""
        self.model = model
        self.client.version = version
        with self._on_device():
            self.engine.send_weights()

    def close(self) -> None:
        self.engine.shutdown()
