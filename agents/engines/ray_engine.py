"""Engines beyond one machine: engine actors on Ray behind :class:`RayEngine`, the same interface as HFEngine.

Why Ray: when generation dominates (OpenRLHF reports 80 % of RLHF time in sampling), the way out is more engines
on more machines, and Ray already does placement, restarts and data movement (OpenRLHF, veRL and NeMo use it).
So nothing here is cluster code of our own:

- each engine (transformers or vLLM) runs in a Ray actor (:class:`EngineActor`), one per GPU or per group of CPU
  cores, gang-scheduled with a placement group and restarted by Ray (``max_restarts``) if its process dies;
- :class:`RayEngine` splits every ``generate`` batch over the actors (:class:`~agents.engines.routing.PrefixRouter`:
  prefix affinity, else the shortest queue), waits with a time limit (``ray.wait``), and reassembles the results
  complete and in order; a piece whose actor died or hung is retried on a live actor (Ray's own
  ``max_task_retries`` would wait for the *same* actor to restart and reload its model), and one that keeps
  failing raises :class:`RayEngineError` naming the actor(s) and the request;
- ``update_weights(model)`` puts the new weights into Ray's object store once (``ray.put``) and every actor loads
  them from there; each request also carries the current weights version, so an actor that restarted (and so
  came back with its start-up weights) catches up before it answers. vLLM actors on GPUs can instead take them
  over NCCL through vLLM's own weight-transfer engine (``weight_transfer="nccl"``, :mod:`.nccl_weights`).

Trainers and search agents take a RayEngine unchanged: it has ``generate``, ``score``, ``step_prompt``,
``tokenizer``, ``stats``, ``update_weights`` and ``model`` (the trainer's copy, in this process). ``ray`` is
imported only when a RayEngine is built (``pip install 'openr-gym[ray]'``).
"""

from __future__ import annotations

import copy
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .base import Completion, GenerationStats, Prompt, check_generate_args
from .prompting import DEFAULT_STEP_DELIMITER, TokenizerPrompts
from .routing import Piece, PrefixRouter

__all__ = ["EngineActor", "RayEngine", "RayEngineError", "connect", "import_ray"]

_INSTALL_HINT = "RayEngine needs Ray: pip install 'openr-gym[ray]' (or pip install 'ray[default]')"


class RayEngineError(RuntimeError):
    """A request kept failing on the engine actors (died, hung or unreachable) after every allowed attempt."""


def import_ray() -> Any:
    """Import ray or raise an ImportError naming the extra to install."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(f"{_INSTALL_HINT} ({error})") from error
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None, **init_kwargs: Any) -> Any:
    """Join the Ray cluster at ``address`` (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``), or with
    ``None`` / ``"local"`` start a private instance on this machine (bound to 127.0.0.1, no dashboard).

    Does nothing if Ray is already initialised in this process. Returns the ``ray`` module.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address in (None, "", "local"):
        init_kwargs.setdefault("include_dashboard", False)
        init_kwargs.setdefault("_node_ip_address", "127.0.0.1")
        # address="local": a new private instance even when another cluster runs on this machine (a bare init would
        # join that one, and refuse num_cpus)
        ray.init(address="local", num_cpus=num_cpus, **init_kwargs)
    else:
        ray.init(address=address, **init_kwargs)
    return ray


class _StateDict:
    """What an engine's ``update_weights`` reads: an object with ``state_dict()``."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state


def _build_engine(
    backend: str | Callable[..., Any], model: Any, tokenizer: Any, threads: int | None, kwargs: dict
) -> Any:
    if callable(backend):  # a user's engine class or factory: backend(model, tokenizer, **engine_kwargs)
        return backend(model, tokenizer, **kwargs)
    if backend == "hf":
        from .hf import HFEngine

        return HFEngine(model, tokenizer, num_threads=threads, **kwargs)
    if backend == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model, tokenizer, **kwargs)
    raise ValueError(f"backend must be 'hf', 'vllm' or a callable, got {backend!r}")


class EngineActor:
    """One engine in its own Ray worker process (RayEngine makes it a Ray actor; usable in-process for tests).

    ``model`` is a name / path each actor loads itself, or a model object (passed through the object store).
    Compute methods run one at a time; ``status`` runs in a separate concurrency group so it answers while a
    batch is being generated.
    """

    def __init__(
        self,
        name: str,
        backend: str | Callable[..., Any],
        model: Any,
        tokenizer: Any = None,
        engine_kwargs: dict | None = None,
        threads: int | None = None,
        seed: int = 0,
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        random.seed(seed)
        self.name = name
        self.engine = _build_engine(backend, model, tokenizer, threads, dict(engine_kwargs or {}))
        self.version = 0
        self.busy_since: float | None = None
        self.busy_seconds = 0.0
        self.requests = 0
        self.started = time.time()

    def ready(self) -> dict[str, Any]:
        """Where this actor runs (after its engine is built)."""
        import socket

        return {
            "name": self.name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "version": self.version,
            "code": __file__,  # which openr-gym this node runs (installed, shipped by runtime_env, ...)
        }

    def status(self) -> dict[str, Any]:
        """What the actor is doing now (answers during a batch: RayEngine calls it in its own concurrency group)."""
        busy = None if self.busy_since is None else time.time() - self.busy_since
        return {
            **self.ready(),
            "busy_for": busy,
            "busy_seconds": self.busy_seconds
            + (busy or 0.0),  # in compute calls since start (idle = the rest)
            "cpu_seconds": time.process_time(),  # this process's CPU time, all threads
            "requests": self.requests,
            "stats": self.engine.stats.snapshot(),
        }

    # -- weights -------------------------------------------------------------------------------------------------
    def load_weights(self, version: int, state: dict[str, Any]) -> int:
        """Load a state dict (resolved by Ray from the object store) and remember its version."""
        update = getattr(self.engine, "update_weights", None)
        if callable(update):  # vLLM: its own reload recipe
            update(_StateDict(state))
        else:
            self.engine.model.load_state_dict(state, strict=True)
            reset = getattr(self.engine, "reset_prefix_cache", None)
            if callable(reset):
                reset()
        self.version = version
        return version

    def _catch_up(self, weights: tuple[int, list[Any]] | None) -> None:
        """A restarted actor came back with its start-up weights: load the current ones first."""
        if weights is not None and weights[0] != self.version:
            import ray

            self.load_weights(weights[0], ray.get(weights[1][0]))

    # -- work ----------------------------------------------------------------------------------------------------
    @contextmanager
    def _busy(self) -> Iterator[None]:
        """Mark a compute call (``status`` shows how long it has run; ``busy_seconds`` sums them)."""
        self.busy_since = time.time()
        try:
            yield
        finally:
            self.busy_seconds += time.time() - self.busy_since
            self.busy_since = None

    def generate(
        self,
        weights: tuple[int, list[Any]] | None,
        requests: list[tuple[Prompt, int]],
        options: dict[str, Any],
        seed: int | None,
    ) -> list[list[Completion]]:
        """``requests`` = (prompt, samples); one ``engine.generate`` per distinct sample count, results in order."""
        self._catch_up(weights)
        with self._busy():
            by_count: dict[int, list[int]] = {}
            for index, (_, count) in enumerate(requests):
                by_count.setdefault(count, []).append(index)
            out: list[list[Completion]] = [[] for _ in requests]
            for offset, (count, indices) in enumerate(sorted(by_count.items())):
                groups = self.engine.generate(
                    [requests[i][0] for i in indices],
                    n=count,
                    seed=None if seed is None else seed + offset,
                    **options,
                )
                for i, group in zip(indices, groups):
                    out[i] = group
            self.requests += len(requests)
            return out

    def score(
        self, weights: tuple[int, list[Any]] | None, prompts: list[Prompt], continuations: list[str]
    ) -> list[list[float]]:
        self._catch_up(weights)
        with self._busy():
            return self.engine.score(prompts, continuations)

    def score_ids(
        self,
        weights: tuple[int, list[Any]] | None,
        prompt_ids: list[list[int]],
        continuation_ids: list[list[int]],
    ) -> list[list[float]]:
        self._catch_up(weights)
        with self._busy():
            return self.engine.score_ids(prompt_ids, continuation_ids)

    def reset_prefix_cache(self) -> None:
        reset = getattr(self.engine, "reset_prefix_cache", None)
        if callable(reset):
            reset()

    def weight_transfer(self, method: str, kwargs: dict[str, Any], version: int | None = None) -> None:
        """One step of vLLM's weight-transfer protocol on this actor's workers (``init_weight_transfer_engine``,
        ``start_weight_update``, ``update_weights``, ``finish_weight_update``); ``version`` marks the weights
        loaded once the update has finished."""
        self.engine.llm.collective_rpc(method, kwargs=kwargs)
        if version is not None:
            self.version = version


@dataclass
class _Shard:
    """One actor's part of a call: what to send, where it went, how it failed so far."""

    key: int
    actor: int
    args: tuple
    cost: float
    describe: str
    pieces: list[Piece] = field(default_factory=list)
    started: float = 0.0
    failures: list[str] = field(default_factory=list)


def _mixed_seed(seed: int, prompt: int, sample: int) -> int:
    """A reproducible seed per piece: independent of which actor runs it (a retry gives the same samples)."""
    return (seed * 1_000_003 + prompt * 9_973 + sample) % (2**31 - 1)


class RayEngine(TokenizerPrompts):
    """The engine interface over engine actors on a Ray cluster: each batch is spread over the actors.

    Args:
        model: a name for :func:`agents.engines.load_model`, an HF id or folder (each actor loads it), or a loaded
            model object (sent once through the object store; ``tokenizer`` is then required). In this process
            ``engine.model`` is that object, or the named model loaded on first access (what a trainer trains).
        tokenizer: defaults to the model's; used here for prompts and routing.
        num_actors: engine actors (one per GPU, or per ``threads_per_actor`` CPU cores).
        backend: ``"hf"`` (HFEngine), ``"vllm"`` (VLLMEngine), or a callable ``(model, tokenizer, **engine_kwargs)
            -> engine`` run inside each actor.
        threads_per_actor: CPU cores (Ray ``num_cpus``) and torch / OpenMP threads of each actor.
        gpus_per_actor: GPUs per actor; by default 1 for vLLM when the cluster has GPUs, else 0.
        engine_kwargs: passed to the backend engine in each actor (``max_batch_size``, ``dtype``, ...).
        address: the Ray cluster to join when Ray is not initialised yet (see :func:`connect`).
        seed: seeds the per-piece sampling seeds when ``generate(seed=None)`` (and each actor's torch seed).
        request_timeout: seconds one actor may take for its part of a call before it is restarted and the part
            retried elsewhere; startup_timeout: seconds for the actors to be placed and load their model.
        max_attempts: attempts per part (on different actors where possible) before :class:`RayEngineError`.
        max_restarts: Ray restarts of each actor (``-1``: unlimited).
        block_tokens, affinity_slack: prefix-affinity granularity and balance slack (see ``PrefixRouter``).
        runtime_env: Ray runtime environment of the actors (e.g. ``{"py_modules": [...]}`` on a cluster whose
            nodes do not have openr-gym installed); ``OMP_NUM_THREADS`` is set from ``threads_per_actor``.
        weight_transfer: how ``update_weights`` reaches the actors: ``"object_store"`` (one ``ray.put``, any
            backend, CPU or GPU) or ``"nccl"`` (vLLM actors on whole GPUs, trainer model on a GPU: vLLM's own
            NCCL weight-transfer engine, GPU to GPU; falls back to the object store after an actor restart).
    """

    def __init__(
        self,
        model: Any = "smollm2-135m-instruct",
        tokenizer: Any = None,
        *,
        num_actors: int = 2,
        backend: str | Callable[..., Any] = "hf",
        threads_per_actor: int = 1,
        gpus_per_actor: float | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        address: str | None = None,
        seed: int = 0,
        request_timeout: float = 600.0,
        startup_timeout: float = 600.0,
        max_attempts: int = 3,
        max_restarts: int = 3,
        block_tokens: int = 16,
        affinity_slack: float = 0.0,
        step_delimiter: str = DEFAULT_STEP_DELIMITER,
        runtime_env: dict[str, Any] | None = None,
        weight_transfer: str = "object_store",
    ) -> None:
        if num_actors < 1 or max_attempts < 1 or request_timeout <= 0:
            raise ValueError("need num_actors >= 1, max_attempts >= 1 and request_timeout > 0")
        if weight_transfer not in {"object_store", "nccl"}:
            raise ValueError(f"weight_transfer must be 'object_store' or 'nccl', got {weight_transfer!r}")
        if weight_transfer == "nccl" and (
            backend != "vllm" or (gpus_per_actor is not None and gpus_per_actor < 1)
        ):
            raise ValueError(
                "weight_transfer='nccl' needs backend='vllm' and whole GPUs per actor (gpus_per_actor >= 1); "
                f"got backend={backend!r}, gpus_per_actor={gpus_per_actor}"
            )
        # A private local instance gets at least the CPUs asked for (Ray's CPUs are a count, not a pinning).
        ray = connect(address, num_cpus=max(os.cpu_count() or 1, num_actors * threads_per_actor))

        self._ray = ray
        self.engine_kwargs = dict(engine_kwargs or {})
        self._model: Any = None
        self._model_name: str | None = None
        if isinstance(model, (str, os.PathLike)):
            self._model_name = str(model)
            if tokenizer is None:
                from .models import load_tokenizer

                tokenizer = load_tokenizer(self._model_name)
            payload: Any = self._model_name
        else:
            if tokenizer is None:
                raise ValueError("RayEngine(model_object) needs its tokenizer: RayEngine(model, tokenizer)")
            self._model = model
            payload = ray.put(model if _on_cpu(model) else copy.deepcopy(model).to("cpu"))
        self._payload = (
            payload  # kept alive: Ray re-reads the constructor arguments when it restarts an actor
        )
        self._tokenizer = tokenizer
        self.step_delimiter = step_delimiter
        self.stats = GenerationStats()
        self.backend = backend
        self.num_actors = num_actors
        self.request_timeout = request_timeout
        self.max_attempts = max_attempts
        if gpus_per_actor is None:
            has_gpus = ray.cluster_resources().get("GPU", 0) > 0
            gpus_per_actor = 1 if backend == "vllm" and has_gpus else 0
        if weight_transfer == "nccl":
            if gpus_per_actor < 1 or gpus_per_actor != int(gpus_per_actor):  # the cluster has no GPUs
                raise ValueError(
                    "weight_transfer='nccl' needs backend='vllm' and whole GPUs per actor (gpus_per_actor >= 1); "
                    f"got backend={backend!r}, gpus_per_actor={gpus_per_actor}"
                )
            self.engine_kwargs.setdefault("weight_transfer_config", {"backend": "nccl"})
        self.weight_transfer = weight_transfer
        self.gpus_per_actor = gpus_per_actor
        self._nccl: Any = None  # NCCLWeightSender, built at the first update
        self.actor_names = [f"engine-{i}" for i in range(num_actors)]
        self.actors = self._start_actors(
            payload, threads_per_actor, gpus_per_actor, max_restarts, seed, runtime_env, startup_timeout
        )
        try:
            self.actor_info = ray.get([a.ready.remote() for a in self.actors], timeout=startup_timeout)
        except Exception:
            self.close()
            raise
        self.router = PrefixRouter(num_actors, block_tokens=block_tokens, slack=affinity_slack)
        self._queued = [0.0] * num_actors
        self._down: dict[int, Any] = {}  # actor -> ping ref submitted after it failed
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._version = 0
        self._weights: tuple[int, list[Any]] | None = None
        self.faults: list[dict[str, Any]] = []
        """Every failed attempt: actor, error, request, and where it was retried."""
        self.last_broadcast_seconds: float | None = None
        """Seconds the last ``update_weights`` took (put + every actor loaded)."""
        self.last_routes: list[Piece] = []
        """Where the last ``generate`` placed each prompt's samples (before any retry)."""
        self.remote_seconds = 0.0
        """Wall seconds this process has spent in remote calls (from submitting the first part to fetching the last
        result, per call): the rest of a workload's time is the driver's own work between engine calls."""

    def _start_actors(
        self,
        payload: Any,
        threads: int,
        gpus: float,
        max_restarts: int,
        seed: int,
        runtime_env: dict[str, Any] | None,
        startup_timeout: float,
    ) -> list[Any]:
        """Reserve one bundle per actor (a placement group spread over nodes), then start the actors in it."""
        ray = self._ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle: dict[str, float] = {"CPU": threads, **({"GPU": gpus} if gpus else {})}
        self._placement = placement_group([dict(bundle) for _ in range(self.num_actors)], strategy="SPREAD")
        try:
            ray.get(self._placement.ready(), timeout=startup_timeout)
        except ray.exceptions.GetTimeoutError as error:
            remove_placement_group(self._placement)
            raise RayEngineError(
                f"the Ray cluster could not place {self.num_actors} engine actors of {bundle} within "
                f"{startup_timeout:.0f} s (cluster resources: {ray.cluster_resources()})"
            ) from error
        env_vars = {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        if self.backend == "vllm" and not gpus:
            env_vars["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        env = dict(runtime_env or {})
        env["env_vars"] = {**env_vars, **env.get("env_vars", {})}
        remote_class = ray.remote(concurrency_groups={"control": 1})(EngineActor)
        return [
            remote_class.options(
                num_cpus=threads,
                num_gpus=gpus,
                max_restarts=max_restarts,
                max_task_retries=0,  # retried here, on a live actor, instead of waiting for this one's restart
                runtime_env=env,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._placement, placement_group_bundle_index=i
                ),
            ).remote(name, self.backend, payload, self._tokenizer, self.engine_kwargs, threads, seed + i)
            for i, name in enumerate(self.actor_names)
        ]

    # -- interface -----------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def model(self) -> Any:
        """The policy in this process (a trainer's copy): the model object given, or the named one, loaded now."""
        if self._model is None:
            from .models import load_model

            self._model, _ = load_model(self._model_name, dtype=self.engine_kwargs.get("dtype", "auto"))
        return self._model

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        n: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        """Per prompt, ``n`` completions, computed on the actors; same results layout as every engine."""
        stops = check_generate_args(prompts, n, max_new_tokens, temperature, top_p, stop)
        texts = [self.render(p) for p in prompts]
        encoded = [self.encode(text) for text in texts]
        if any(not ids for ids in encoded):
            raise ValueError("empty prompt: give at least one token of context")
        if not texts:
            return []
        base_seed = seed if seed is not None else self._rng.randrange(2**31)
        options = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "stop": stops,
        }
        with self._lock:
            pieces = self.router.route(encoded, [n] * len(texts), self._live(), self._queued)
        self.last_routes = pieces
        by_actor: dict[int, list[Piece]] = {}
        for piece in pieces:
            by_actor.setdefault(piece.actor, []).append(piece)
        shards = []
        for actor, own in by_actor.items():
            requests = [(texts[p.prompt], p.samples) for p in own]
            first = own[0]
            shards.append(
                _Shard(
                    key=len(shards),
                    actor=actor,
                    args=(requests, options, _mixed_seed(base_seed, first.prompt, first.first)),
                    cost=sum(p.samples for p in own),
                    describe=_describe("generate", [p.prompt for p in own], texts[first.prompt]),
                    pieces=own,
                )
            )
        outputs = self._run("generate", shards)
        parts: list[list[tuple[int, list[Completion]]]] = [[] for _ in texts]
        with self._lock:
            for shard in shards:
                for piece, completions in zip(shard.pieces, outputs[shard.key]):
                    parts[piece.prompt].append((piece.first, completions))
                    for completion in completions:  # the serving actor now caches prompt + completion
                        self.router.observe(shard.actor, encoded[piece.prompt] + list(completion.token_ids))
        groups = [
            [c for _, completions in sorted(own, key=lambda x: x[0]) for c in completions] for own in parts
        ]
        self.stats.record(groups)
        return groups

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[list[float]]:
        """Per-token log-probs of each continuation after its prompt, the prompts split evenly over the actors."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        texts = [self.render(p) for p in prompts]
        return self._split_evenly("score", texts, list(continuations))

    def score_ids(
        self, prompt_ids: Sequence[Sequence[int]], continuation_ids: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """Like :meth:`score` on token ids."""
        if len(prompt_ids) != len(continuation_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(continuation_ids)} continuations")
        return self._split_evenly(
            "score_ids", [list(p) for p in prompt_ids], [list(c) for c in continuation_ids]
        )

    def _split_evenly(self, method: str, firsts: list, seconds: list) -> list[list[float]]:
        if not firsts:
            return []
        live = self._live()
        size = -(-len(firsts) // len(live))
        shards = []
        for index, start in enumerate(range(0, len(firsts), size)):
            stop = min(start + size, len(firsts))
            shards.append(
                _Shard(
                    key=index,
                    actor=live[index],
                    args=(firsts[start:stop], seconds[start:stop]),
                    cost=stop - start,
                    describe=_describe(method, list(range(start, stop)), firsts[start]),
                )
            )
        outputs = self._run(method, shards)
        return [row for shard in shards for row in outputs[shard.key]]

    # -- weights -------------------------------------------------------------------------------------------------
    def update_weights(self, model: Any) -> None:
        """Send a trainer's new weights to every actor: one ``ray.put``, each actor loads from the object store.

        Takes anything with ``state_dict()`` (a transformers model; the trainer's merged-LoRA view). An actor that
        is down now loads them when it is back (every request carries the weights version).
        """
        ray = self._ray
        started = time.perf_counter()
        if self.weight_transfer == "nccl" and not self.faults:
            self._send_over_nccl(model)
            self.last_broadcast_seconds = time.perf_counter() - started
            return
        state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
        ref = ray.put(state)
        del state
        with self._lock:
            self._version += 1
            self._weights = (self._version, [ref])
            self.router.clear()  # every cached prefix was computed with the old weights
        calls = {actor: self.actors[actor].load_weights.remote(self._version, ref) for actor in self._live()}
        for actor, call in calls.items():
            try:
                ray.get(call, timeout=self.request_timeout)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as error:
                self._mark_down(actor, f"update_weights: {_short(error)}", "update_weights", None)
        self.last_broadcast_seconds = time.perf_counter() - started

    def _send_over_nccl(self, model: Any) -> None:
        """vLLM's weight-transfer engine: every actor receives the broadcast, then marks the new version.

        ``_weights`` keeps the last object-store copy (or None): an actor that restarts later has lost its NCCL
        ranks, so a fault switches every later update to the object store, whose first put catches it up.
        """
        from .nccl_weights import ActorsSyncClient, NCCLWeightSender

        with self._lock:
            self._version += 1
            self._weights = None  # nothing to catch up from: the actors get these weights from the broadcast
            self.router.clear()
        if self._nccl is None:
            client = ActorsSyncClient(
                self._ray,
                self.actors,
                int(self.gpus_per_actor),
                self.request_timeout,
                lambda actor, method, kwargs, version: actor.weight_transfer.remote(method, kwargs, version),
            )
            tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
            self._nccl = NCCLWeightSender(client, model, tied_head=tied)
        self._nccl.send(model, self._version)

    def reset_prefix_cache(self) -> None:
        """Clear every actor's prefix cache (benchmarks time cold prompts with it)."""
        with self._lock:
            self.router.clear()
        self._ray.get(
            [self.actors[a].reset_prefix_cache.remote() for a in self._live()], timeout=self.request_timeout
        )

    # -- inspection ----------------------------------------------------------------------------------------------
    def actor_status(self, timeout: float = 30.0) -> list[dict[str, Any] | None]:
        """Per actor: pid, host, weights version, seconds busy with the current batch, requests, engine stats
        (None for an actor that does not answer within ``timeout``)."""
        ray = self._ray
        refs = [a.status.options(concurrency_group="control").remote() for a in self.actors]
        out: list[dict[str, Any] | None] = []
        for ref in refs:
            try:
                out.append(ray.get(ref, timeout=timeout))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                out.append(None)
        return out

    def generate_each(self, prompts: Sequence[Prompt], **kwargs: Any) -> list[list[list[Completion]]]:
        """The same ``generate`` call on every actor (e.g. to check that all of them serve the same weights)."""
        texts = [self.render(p) for p in prompts]
        n = kwargs.pop("n", 1)
        seed = kwargs.pop("seed", 0)
        check_generate_args(
            texts, n, kwargs.get("max_new_tokens", 256), kwargs.get("temperature", 1.0), 1.0, None
        )
        refs = [a.generate.remote(self._weights, [(t, n) for t in texts], kwargs, seed) for a in self.actors]
        return self._ray.get(refs, timeout=self.request_timeout)

    # -- dispatch and faults -------------------------------------------------------------------------------------
    def _live(self) -> list[int]:
        """Actors believed up; a failed actor is back once the ping sent after its failure answers."""
        ray = self._ray
        for actor, ping in list(self._down.items()):
            ready, _ = ray.wait([ping], timeout=0)
            if ready:
                try:
                    self.actor_info[actor] = ray.get(ready[0], timeout=0)  # its new pid after a restart
                    del self._down[actor]
                except ray.exceptions.RayActorError:
                    self._down[actor] = self.actors[actor].ready.remote()  # still restarting (or gone)
        live = [a for a in range(self.num_actors) if a not in self._down]
        # None up: use them anyway; Ray queues calls to a restarting actor, and the time limit still applies.
        return live or list(range(self.num_actors))

    def _mark_down(self, actor: int, error: str, request: str, retried_on: int | None) -> None:
        self.faults.append(
            {"actor": self.actor_names[actor], "error": error, "request": request, "retried_on": retried_on}
        )
        with self._lock:
            self.router.forget(actor)  # a restarted actor starts with an empty cache
            if actor not in self._down:
                self._down[actor] = self.actors[actor].ready.remote()
            sender, self._nccl = getattr(self, "_nccl", None), None
        if sender is not None:  # the restarted actor lost its NCCL ranks: it catches up from the object store
            state = {k: v.detach().to("cpu").contiguous() for k, v in sender.model.state_dict().items()}
            self._weights = (self._version, [self._ray.put(state)])
            sender.close()

    def _run(self, method: str, shards: list[_Shard]) -> dict[int, Any]:
        """Submit every shard, wait for all with a time limit each; retry a failed shard on another live actor."""
        ray = self._ray
        pending: dict[Any, _Shard] = {}

        def submit(shard: _Shard, actor: int) -> None:
            shard.actor = actor
            shard.started = time.monotonic()
            ref = getattr(self.actors[actor], method).remote(self._weights, *shard.args)
            pending[ref] = shard
            with self._lock:
                self._queued[actor] += shard.cost

        def failed(shard: _Shard, error: str) -> None:
            name = self.actor_names[shard.actor]
            shard.failures.append(f"{name} (pid {self._pid(shard.actor)}): {error}")
            if len(shard.failures) >= self.max_attempts:
                self._mark_down(shard.actor, error, shard.describe, None)
                raise RayEngineError(
                    f"{shard.describe} failed {len(shard.failures)} times, on "
                    + "; then on ".join(shard.failures)
                )
            with self._lock:
                queued = list(self._queued)
            candidates = [a for a in self._live() if a != shard.actor and a not in self._down]
            target = min(candidates, key=lambda a: queued[a]) if candidates else shard.actor
            self._mark_down(shard.actor, error, shard.describe, target)
            submit(shard, target)

        started = time.perf_counter()
        for shard in shards:
            submit(shard, shard.actor)
        results: dict[int, Any] = {}
        try:
            self._wait_all(pending, results, failed)
        finally:
            self.remote_seconds += time.perf_counter() - started
            for ref, shard in pending.items():  # an error left parts queued: do not let them run for nothing
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - already finished or its actor is gone
                    pass
                with self._lock:
                    self._queued[shard.actor] -= shard.cost
        return results

    def _wait_all(self, pending: dict[Any, _Shard], results: dict[int, Any], failed: Callable) -> None:
        ray = self._ray
        while pending:
            deadline = min(shard.started for shard in pending.values()) + self.request_timeout
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            for ref in ready:
                shard = pending.pop(ref)
                with self._lock:
                    self._queued[shard.actor] -= shard.cost
                try:
                    results[shard.key] = ray.get(ref, timeout=self.request_timeout)
                except ray.exceptions.RayTaskError as error:  # the engine raised: same error as in-process
                    raise error.as_instanceof_cause() from None
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as error:
                    failed(shard, _short(error))
            now = time.monotonic()
            for ref, shard in list(pending.items()):
                if now - shard.started >= self.request_timeout:  # hung: restart the actor, retry elsewhere
                    del pending[ref]
                    with self._lock:
                        self._queued[shard.actor] -= shard.cost
                    ray.kill(self.actors[shard.actor], no_restart=False)
                    failed(shard, f"no answer within {self.request_timeout:g} s (actor restarted)")

    def _pid(self, actor: int) -> Any:
        return self.actor_info[actor].get("pid", "?") if actor < len(getattr(self, "actor_info", [])) else "?"

    # -- lifetime ------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the actors and free their placement group (the Ray instance itself stays up)."""
        ray = self._ray
        from ray.util.placement_group import remove_placement_group

        sender = self.__dict__.pop("_nccl", None)
        if sender is not None:
            sender.close()
        for actor in getattr(self, "actors", []):
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []
        placement = self.__dict__.pop("_placement", None)
        if placement is not None:
            remove_placement_group(placement)

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _on_cpu(model: Any) -> bool:
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return parameter is None or parameter.device.type == "cpu"


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _describe(method: str, indices: list[int], first: Any) -> str:
    shown = indices if len(indices) <= 8 else [*indices[:8], "..."]
    return f"{method} request for prompts {shown} (first: {str(first)[-80:]!r})"
