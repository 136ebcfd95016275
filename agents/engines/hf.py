"""In-process transformers engine: the CPU default, and the one an RL trainer shares its weights with.

Generation uses ``model.generate`` (left padding, KV cache) with two small hooks: a logits processor that records
the log-prob of each sampled token under the raw model (before temperature / top-p), and a stopping criterion that
ends each sequence as soon as its text contains a stop string, so one long answer does not keep short ones
generating to ``max_new_tokens``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from .base import Completion, GenerationStats, Prompt
from .logprobs import sequence_logprobs
from .models import load_model
from .prompting import DEFAULT_STEP_DELIMITER, encode_prompt, render_prompt, step_prompt
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


class HFEngine:
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
        self.stats = GenerationStats()
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

    # -- prompts -------------------------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str:
        """The text the model reads for ``prompt`` (chat messages go through the chat template)."""
        return render_prompt(self._tokenizer, prompt)

    def encode(self, prompt: Prompt) -> list[int]:
        return encode_prompt(self._tokenizer, self.render(prompt))

    def step_prompt(self, question: str, steps: Sequence[str], instruction: str = "") -> str:
        return step_prompt(self._tokenizer, question, steps, instruction, self.step_delimiter)

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
        if n < 1 or max_new_tokens < 0:
            raise ValueError(
                f"need n >= 1 and max_new_tokens >= 0, got n={n}, max_new_tokens={max_new_tokens}"
            )
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        if isinstance(prompts, (str, dict)):
            raise TypeError("generate takes a sequence of prompts; wrap a single prompt in a list")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        encoded = [self.encode(p) for p in prompts]
        for ids in encoded:
            if not ids:
                raise ValueError("empty prompt: give at least one token of context")
        # One row per (prompt, sample); rows of similar length decode together to limit padding.
        rows = [(p, s) for p in range(len(encoded)) for s in range(n)]
        rows.sort(key=lambda row: -len(encoded[row[0]]))
        results: list[list[Completion | None]] = [[None] * n for _ in encoded]
        rng = torch.random.fork_rng(devices=[]) if seed is not None else nullcontext()
        with rng, _eval_mode(self.model):
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(rows), self.max_batch_size):
                chunk = rows[start : start + self.max_batch_size]
                outputs = self._generate_rows(
                    [encoded[p] for p, _ in chunk], max_new_tokens, temperature, top_p, stops
                )
                for (p, s), completion in zip(chunk, outputs):
                    results[p][s] = completion
        completions = [[c for c in group if c is not None] for group in results]
        self.stats.record(completions)
        return completions

    def _generate_rows(
        self,
        prompt_ids: list[list[int]],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stops: list[str],
    ) -> list[Completion]:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        width = max(len(ids) for ids in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(prompt_ids):  # left padding: every row's last prompt token is aligned
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
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
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            generation_config=config,
            logits_processor=LogitsProcessorList([recorder]),
            stopping_criteria=StoppingCriteriaList([stopper]),
        )
        generated = sequences[:, width:].cpu()
        logprobs = recorder.finish(sequences)
        completions = []
        for row, ids in enumerate(prompt_ids):
            tokens = generated[row].tolist()
            for position, token in enumerate(tokens):  # tokens after the first EOS are padding
                if token in self.eos_token_ids:
                    tokens = tokens[: position + 1]
                    break
            completions.append(
                finish_completion(
                    self._tokenizer,
                    tokens,
                    logprobs[row, : len(tokens)].tolist(),
                    stops=stops,
                    eos_token_ids=self.eos_token_ids,
                    prompt_tokens=len(ids),
                )
            )
        return completions

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
