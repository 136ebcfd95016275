"""In-process transformers engine: the CPU default, and the one an RL trainer shares its weights with.

Generation runs its own decode loop over the model's KV cache (``decoder="loop"``, the default): each prompt is
prefilled once and its cache copied for the ``n`` samples, every sampled token's log-prob under the raw model
(before temperature / top-p) is kept, and a sequence that hits EOS or a stop string leaves the batch at once (its
cache rows are dropped), so one long answer does not keep short ones generating, nor cost compute. The
``decoder="generate"`` path does the same through ``model.generate`` (a logits processor records log-probs, a
stopping criterion ends sequences) for architectures whose cache the loop cannot slice.

The loop also keeps prompt KV states across calls (``agents.engines.prefix_cache``): a search prompt that extends
its parent's prefills only its new tokens, prompts sharing an uncached prefix in one call prefill it once, and
prompts of very different lengths are prefilled in length groups instead of one padded batch (all three in
``agents.engines.prefill``). One-token decode steps on CPU use ``agents.engines.attention`` (grouped matmuls instead of SDPA with repeated KV heads).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from .attention import fast_decode_attention
from .base import Completion, GenerationStats, Prompt, check_generate_args
from .logprobs import sequence_logprobs
from .models import load_model
from .prefill import Prefiller, kv_range
from .prefix_cache import PrefixCache, full_attention_cache, weights_fingerprint
from .prompting import DEFAULT_STEP_DELIMITER, TokenizerPrompts
from .stopping import earliest_stop, finish_completion

__all__ = ["HFEngine"]


class _LogprobRecorder:
    """Logits processor: log-prob of each chosen token under the unprocessed distribution.

    It runs before the sampling warpers, sees step t's raw logits, and gathers step t-1's choice (the last id
    of ``input_ids``) from the distribution it kept; :meth:`finish` gathers the final token.
    """

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self.columns: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self.columns.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """(rows, generated) log-probs; call once after ``generate`` returned ``sequences``."""
        if self.previous is not None:
            self.columns.append(self.previous.gather(-1, sequences[:, -1:]).squeeze(-1))
            self.previous = None
        if not self.columns:
            return torch.zeros((sequences.shape[0], 0))
        return torch.stack(self.columns, dim=1).cpu()


class _StopOnStrings:
    """Stopping criterion: a row is finished once the text it generated contains any stop string."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_width: int, rows: int) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        # A stop string of L characters spans at most L tokens (+1 for a token straddling its start).
        self.window = max((len(s) for s in self.stops), default=0) + 2
        self.prompt_width = prompt_width
        self.done = [False] * rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        flags = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not self.stops:
            return flags
        start = max(self.prompt_width, input_ids.shape[1] - self.window)
        open_rows = [row for row, done in enumerate(self.done) if not done]
        tails = self.tokenizer.batch_decode(input_ids[open_rows, start:].tolist(), skip_special_tokens=True)
        for row, tail in zip(open_rows, tails):
            if earliest_stop(tail, self.stops) is not None:
                self.done[row] = True
        flags[[row for row, done in enumerate(self.done) if done]] = True
        return flags


def _choose(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Next token per row: argmax at temperature 0, else a sample from the temperature / top-p distribution."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:  # nucleus: keep the smallest set of most likely tokens whose mass reaches top_p
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    # torch.multinomial costs ~25 ms per step at batch 16 over SmolLM2's 49k vocabulary (about a fifth of a decode
    # step); inverse-CDF sampling (cumsum + searchsorted on one uniform per row) is exact and ~20x cheaper, but it
    # changes the random stream, and tests/test_rl_agents.py's PPO toy run fails on its seed with that stream.
    return torch.multinomial(probs, num_samples=1).squeeze(-1)


@contextmanager
def _eval_mode(model: Any):
    """Generate in eval mode without disturbing a trainer that shares the model."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


@dataclass
class DecodeBatch:
    """One chunk of a ``generate`` call, as a decoder gets it: prompts, samples per prompt, sampling settings."""

    prompt_ids: list[list[int]]
    """Token ids of each prompt."""
    repeats: list[int]
    """Samples wanted per prompt (rows decoded = their sum)."""
    max_new_tokens: int
    """Token limit per sample."""
    temperature: float
    """0 is greedy."""
    top_p: float
    """Nucleus sampling mass."""
    stops: list[str]
    """Stop strings (a sample ends at the first one it writes)."""


# Calls in a row that found new weights after which the prefix cache pauses (see HFEngine._valid_prefix_cache).
STALE_CALLS_TO_PAUSE = 3


class HFEngine(TokenizerPrompts):
    """Batched generation and scoring with an in-process transformers model.

    Args:
        model: a loaded causal LM (shared with a trainer: never copied or cast here) or a name / HF id / path for
            :func:`agents.engines.load_model`.
        tokenizer: required with a model object; loaded with the model otherwise.
        dtype, device: used only when ``model`` is a name.
        max_batch_size: sequences decoded together (prompts x samples are split into chunks of this size).
        score_batch_size, chunk_size: scoring batch and positions projected to the vocabulary at once.
        step_delimiter: separator between reasoning steps (``step_prompt``).
        num_threads: torch CPU threads; by default capped at the CPUs this process may use.
        decoder: ``"loop"`` (own decode loop: shared prefill for the n samples, finished rows leave the batch) or
            ``"generate"`` (``model.generate``; for caches the loop cannot slice).
        prefix_cache_tokens: token budget of the KV states kept across calls (``agents.engines.prefix_cache``):
            a prompt extending a cached one (its parent in a search tree) prefills only its new tokens. 0
            disables it; used by the ``"loop"`` decoder only. Memory is at most this many tokens x
            ``prefix_cache_bytes_per_token`` (23,040 bytes for SmolLM2-135M in bf16: ~377 MB at the default).
        fast_attention: on CPU, one-token decode steps of the loop use ``agents.engines.attention`` (grouped
            matmuls instead of SDPA with repeated KV heads; several times faster in bf16 at large batch).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        dtype: Any = "auto",
        device: str | None = None,
        max_batch_size: int = 64,
        score_batch_size: int = 16,
        chunk_size: int = 512,
        step_delimiter: str = DEFAULT_STEP_DELIMITER,
        num_threads: int | None = None,
        decoder: str = "loop",
        prefix_cache_tokens: int = 16384,
        fast_attention: bool = True,
    ) -> None:
        if isinstance(model, (str, os.PathLike)):
            model, loaded_tokenizer = load_model(str(model), dtype=dtype, device=device)
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        if tokenizer is None:
            raise ValueError("HFEngine(model_object) needs its tokenizer: HFEngine(model, tokenizer)")
        self.model = model
        self._tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.score_batch_size = score_batch_size
        self.chunk_size = chunk_size
        self.step_delimiter = step_delimiter
        if decoder not in {"loop", "generate"}:
            raise ValueError(f"decoder must be 'loop' or 'generate', got {decoder!r}")
        self.decoder = decoder
        self.fast_attention = fast_attention
        self.stats = GenerationStats()
        self.prefix_cache = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens > 0 else None
        self._cached_weights: Any = None
        self._weight_changes = 0
        self.eos_token_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else min(self.eos_token_ids, default=0))
        if self.device.type == "cpu":
            available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            wanted = num_threads or min(torch.get_num_threads(), available or 1)
            if wanted != torch.get_num_threads():
                torch.set_num_threads(wanted)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @functools.cached_property
    def _reusable_kv_layers(self) -> bool:
        """Whether cached KV columns can be reused for this model (a property of its config: computed once)."""
        return full_attention_cache(self.model)

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
        """Per prompt, ``n`` completions; ``temperature == 0`` is greedy. Same seed and batch give the same output."""
        stops = check_generate_args(prompts, n, max_new_tokens, temperature, top_p, stop)
        encoded = [self.encode(p) for p in prompts]
        for ids in encoded:
            if not ids:
                raise ValueError("empty prompt: give at least one token of context")
        cache = self._valid_prefix_cache()
        # Work pieces of (prompt, sample count), longest prompts first so similar lengths share a batch. (Not
        # sorted by uncached length: the same batches with and without the prefix cache give the same samples.)
        pieces: list[tuple[int, int]] = []
        for index in sorted(range(len(encoded)), key=lambda i: -len(encoded[i])):
            for first in range(0, n, self.max_batch_size):
                pieces.append((index, min(n - first, self.max_batch_size)))
        results: list[list[Completion]] = [[] for _ in encoded]
        # A seeded call leaves the global RNG as it found it (the CPU's, and the model's GPU's when on CUDA).
        devices = [self.device] if self.device.type == "cuda" else []
        rng = torch.random.fork_rng(devices=devices) if seed is not None else nullcontext()
        fast = fast_decode_attention(self.model, self.fast_attention and self.decoder == "loop")
        with rng, _eval_mode(self.model), fast:
            if seed is not None:
                torch.manual_seed(seed)
            prefiller = Prefiller(
                self.model, self.pad_token_id, self.max_batch_size, self._reusable_kv_layers
            )
            shared = prefiller.prefill_shared_prefixes(encoded, cache) if cache is not None else {}
            while pieces:
                chunk, rows = [], 0
                while pieces and rows + pieces[0][1] <= self.max_batch_size:
                    rows += pieces[0][1]
                    chunk.append(pieces.pop(0))
                batch = DecodeBatch(
                    prompt_ids=[encoded[p] for p, _ in chunk],
                    repeats=[k for _, k in chunk],
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    stops=stops,
                )
                if self.decoder == "loop":
                    outputs = self._decode_loop(batch, prefiller, cache)
                else:
                    outputs = self._generate_rows(batch)
                row = 0
                for p, k in chunk:
                    results[p].extend(outputs[row : row + k])
                    row += k
        for index, count in shared.items():  # a shared prefix's prefill counts once, for its first prompt
            for completion in results[index]:
                completion.prompt_tokens += count
        self.stats.record(results)
        return results

    # -- prefix cache --------------------------------------------------------------------------------------
    def reset_prefix_cache(self) -> None:
        """Forget every cached prompt state (done automatically when the weights change; see below)."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    @property
    def prefix_cache_bytes_per_token(self) -> int:
        """Bytes one cached token costs: keys and values of every layer."""
        config = self.model.config
        config = getattr(config, "get_text_config", lambda: config)()
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        element = next(self.model.parameters()).element_size()
        return 2 * config.num_hidden_layers * heads * head_dim * element

    def _valid_prefix_cache(self) -> PrefixCache | None:
        """The prefix cache if it may be used now; cleared first when the weights changed since it was filled.

        The engine shares its model with RL trainers that update it in place, so every call compares a cheap
        fingerprint of the parameters (object, storage pointers, in-place version counters, a value probe) with
        the one the cached states were computed under. When the weights have changed before each of the last
        ``STALE_CALLS_TO_PAUSE`` calls (an RL loop: rollout, update, rollout), states stored now would never be
        read, so caching pauses until a call finds the weights unchanged.
        """
        if self.prefix_cache is None or self.decoder != "loop" or not self._reusable_kv_layers:
            return None
        fingerprint = weights_fingerprint(self.model)
        if fingerprint is None or fingerprint != self._cached_weights:
            self.prefix_cache.clear()
            self._cached_weights = fingerprint
            self._weight_changes += 1
        else:
            self._weight_changes = 0
        if fingerprint is None or self._weight_changes >= STALE_CALLS_TO_PAUSE:
            return None
        return self.prefix_cache

    def _left_padded(self, prompt_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(prompt_ids):  # left padding: every row's last prompt token is aligned
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def _finish(
        self, tokens: list[int], logprobs: list[float], stops: list[str], prompt_tokens: int
    ) -> Completion:
        for position, token in enumerate(tokens):  # anything after the first EOS is padding
            if token in self.eos_token_ids:
                tokens, logprobs = tokens[: position + 1], logprobs[: position + 1]
                break
        return finish_completion(
            self._tokenizer,
            tokens,
            logprobs,
            stops=stops,
            eos_token_ids=self.eos_token_ids,
            prompt_tokens=prompt_tokens,
        )

    def _decode_loop(
        self, batch: DecodeBatch, prefiller: Prefiller, cache: PrefixCache | None = None
    ) -> list[Completion]:
        """Prefill each prompt once (only past its longest cached prefix), copy its cache rows for its samples,
        decode; finished rows leave the batch, and their prompt + step states go into the prefix cache."""
        prompt_ids, repeats, stops = batch.prompt_ids, batch.repeats, batch.stops
        max_new_tokens, temperature, top_p = batch.max_new_tokens, batch.temperature, batch.top_p
        if max_new_tokens == 0:
            return [
                Completion("", [], [], "length", len(ids))
                for ids, k in zip(prompt_ids, repeats)
                for _ in range(k)
            ]
        prefill = prefiller.prefill(prompt_ids, cache)
        kv, columns = prefill.kv, prefill.columns
        processed = [len(ids) - c for ids, c in zip(prompt_ids, prefill.cached)]  # what the stats report
        if cache is not None:
            for row, ids in enumerate(prompt_ids):
                cache.insert(ids, kv_range(kv, row, columns[row]))
        expand = torch.repeat_interleave(torch.arange(len(prompt_ids)), torch.tensor(repeats)).to(self.device)
        if len(expand) != len(prompt_ids):  # n samples per prompt: copy the prompt's cache rows
            kv.batch_select_indices(expand)
        logits = prefill.logits[expand]
        attention_mask = prefill.attention_mask[expand]
        next_position = prefill.positions[expand, -1] + 1
        rows = len(expand)
        origin = expand.tolist()
        generated: list[list[int]] = [[] for _ in range(rows)]
        logprobs: list[list[float]] = [[] for _ in range(rows)]
        active = list(range(rows))  # active[i] = the row decoded at batch position i
        window = max((len(stop) for stop in stops), default=0) + 2
        width = attention_mask.shape[1]  # cache columns before the first generated token

        def store(positions_: list[int]) -> None:
            """Cache prompt + generated states of the rows at these batch positions (all but the last token,
            whose states were never computed)."""
            for position in positions_:
                row = active[position]
                fed = generated[row][:-1]
                if cache is None or not fed:
                    continue
                cols = columns[origin[row]] + list(range(width, width + len(fed)))
                cache.insert(prompt_ids[origin[row]] + fed, kv_range(kv, position, cols))

        for step in range(max_new_tokens):
            scores = torch.log_softmax(logits.float(), dim=-1)
            tokens = _choose(logits.float(), temperature, top_p)
            chosen = scores.gather(-1, tokens[:, None]).squeeze(-1)
            keep, tails = [], []
            for position, (row, token, logprob) in enumerate(zip(active, tokens.tolist(), chosen.tolist())):
                generated[row].append(token)
                logprobs[row].append(logprob)
                if token not in self.eos_token_ids:
                    keep.append(position)
                    tails.append(generated[row][-window:])
            if stops and keep:
                texts = self._tokenizer.batch_decode(tails, skip_special_tokens=True)
                keep = [p for p, text in zip(keep, texts) if earliest_stop(text, stops) is None]
            if not keep or step == max_new_tokens - 1:
                store(list(range(len(active))))
                break
            if len(keep) < len(active):  # finished rows leave the batch and their cache rows are freed
                kept = set(keep)
                store([p for p in range(len(active)) if p not in kept])
                index = torch.tensor(keep, device=self.device)
                kv.batch_select_indices(index)
                attention_mask, next_position, tokens = (
                    attention_mask[index],
                    next_position[index],
                    tokens[index],
                )
                active = [active[p] for p in keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=-1)
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=attention_mask,
                position_ids=next_position[:, None],
                past_key_values=kv,
                use_cache=True,
            )
            logits = out.logits[:, -1]
            next_position = next_position + 1
        return [self._finish(generated[r], logprobs[r], stops, processed[origin[r]]) for r in range(rows)]

    def _generate_rows(self, batch: DecodeBatch) -> list[Completion]:
        """The same through ``model.generate`` (one row per sample; no shared prefill, no row pruning)."""
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        max_new_tokens, temperature, top_p, stops = (
            batch.max_new_tokens,
            batch.temperature,
            batch.top_p,
            batch.stops,
        )
        prompt_ids = [ids for ids, k in zip(batch.prompt_ids, batch.repeats) for _ in range(k)]

        input_ids, attention_mask = self._left_padded(prompt_ids)
        width = input_ids.shape[1]
        if max_new_tokens == 0:
            return [Completion("", [], [], "length", len(ids)) for ids in prompt_ids]
        greedy = temperature == 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None if greedy else top_p,
            top_k=None,
            eos_token_id=sorted(self.eos_token_ids) or None,
            pad_token_id=self.pad_token_id,
        )
        recorder = _LogprobRecorder()
        stopper = _StopOnStrings(self._tokenizer, stops, width, len(prompt_ids))
        sequences = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            logits_processor=LogitsProcessorList([recorder]),
            stopping_criteria=StoppingCriteriaList([stopper]),
        )
        generated = sequences[:, width:].cpu()
        logprobs = recorder.finish(sequences)
        return [
            self._finish(generated[row].tolist(), logprobs[row].tolist(), stops, len(ids))
            for row, ids in enumerate(prompt_ids)
        ]

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
        """Like :meth:`score` on token ids (e.g. the ``token_ids`` a ``generate`` call returned)."""
        with _eval_mode(self.model):
            return sequence_logprobs(
                self.model,
                prompt_ids,
                continuation_ids,
                pad_token_id=self.pad_token_id,
                chunk_size=self.chunk_size,
                batch_size=self.score_batch_size,
            )
