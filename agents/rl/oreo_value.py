"""OREO's value model V(s) and the scorer that lets every search agent use it like a PRM.

The value model is a zero-initialised scalar head (``rewards.prm.value_head``) either on its own copy of the LM
(as the paper does) or on the policy's final hidden states (cheaper: one backbone serves both). V(s) is read at the
last token of the state, i.e. the hidden state from which the policy writes the next action: in training that is
the token before each step's first token; in search it is the last token of the prompt the policy would read next.

``ValueScorer`` implements both the PRM protocol ``score(questions, step_lists) -> list[list[float]]`` (one value
per step: V of the state after it) and the search agents' node-value protocol ``evaluate(nodes, ledgers)``, which
reads each node's own next prompt (on ALFWorld that prompt holds the game's observations, which the
question-and-steps protocol cannot see). It counts the tokens it reads, so searches can be compared at equal
compute (generated tokens plus value-model tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from agents.engines.logprobs import hidden_states
from agents.engines.prompting import encode_prompt, render_prompt

__all__ = ["ValueScorer"]


class ValueScorer:
    """V(s) of partial solutions for search (``BeamSearch(engine, env, prm=scorer)``, ``MCTS``, ``BestOfN``).

    ``backbone`` / ``head``: the value model (``agent.value_backbone()`` / ``agent.value_head``). ``engine`` and
    ``adapter`` render prompts exactly as the policy reads them. ``tokens_read`` / ``calls`` count the work.
    """

    name = "value"

    def __init__(
        self,
        backbone: Any,
        head: torch.nn.Module,
        engine: Any,
        *,
        instruction: str = "",
        adapter: Any = None,
        batch_size: int = 16,
        max_batch_tokens: int = 16384,
        autocast: Any = None,
    ) -> None:
        self.backbone = backbone
        self.head = head
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.instruction = instruction
        self.adapter = adapter
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.autocast = autocast
        self.tokens_read = 0
        """Tokens the value model ran over (every prompt read in full)."""
        self.new_tokens = 0
        """Tokens a prefix-caching value model would run over: each node's prompt minus its parent's."""
        self.calls = 0
        self._prompt_lengths: dict[int, int] = {}

    # --- the PRM protocol ---------------------------------------------------------------------------------------

    def score(self, questions: Sequence[str], step_lists: Sequence[Sequence[str]]) -> list[list[float]]:
        """Per candidate, V of the state after each of its steps (math step prompts, one pass per candidate)."""
        if len(questions) != len(step_lists):
            raise ValueError(f"{len(questions)} questions but {len(step_lists)} step lists")
        encoded = []
        for question, steps in zip(questions, step_lists):
            prefixes = [
                self._encode(self.engine.step_prompt(question, list(steps[: j + 1]), self.instruction))
                for j in range(len(steps))
            ]
            if not prefixes:
                encoded.append(([], []))
                continue
            ids = prefixes[-1]
            encoded.append((ids, [min(len(p), len(ids)) - 1 for p in prefixes]))
        return self._read(encoded)

    # --- the search agents' node-value protocol -----------------------------------------------------------------

    def evaluate(self, nodes: Sequence[Any], ledgers: Sequence[Any]) -> None:
        """``node.value`` = V of the state the node reached, read at the end of the prompt the policy would read
        there; ``node.step_scores`` = its parent's plus that value."""
        from agents.adapters import StepAdapter

        adapter = self.adapter or StepAdapter(self.instruction)
        encoded = []
        if len(self._prompt_lengths) > 100_000:
            self._prompt_lengths.clear()
        for node in nodes:
            ids = self._encode(adapter.prompt(self.engine, node.info, node.observation))
            encoded.append((ids, [len(ids) - 1]))
            ledgers[node.problem].prm_tokens += len(ids)  # the compute a test-time scaling curve counts
            parent_length = self._prompt_lengths.get(id(node.parent), 0) if node.parent is not None else 0
            self._prompt_lengths[id(node)] = len(ids)
            self.new_tokens += max(len(ids) - parent_length, 0)
        values = self._read(encoded)
        for problem in {node.problem for node in nodes}:
            ledgers[problem].prm_calls += 1
        for node, value in zip(nodes, values):
            parent_scores = list(node.parent.step_scores) if node.parent is not None else []
            node.value = float(value[0])
            node.step_scores = parent_scores[: max(node.depth - 1, 0)] + [node.value]

    # --- shared -------------------------------------------------------------------------------------------------

    def _encode(self, prompt: Any) -> list[int]:
        return encode_prompt(self.tokenizer, render_prompt(self.tokenizer, prompt))

    def _read(self, encoded: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        from rewards.prm._batching import chunked_position_scores, model_device, pad_id_of

        self.calls += 1
        self.tokens_read += sum(len(ids) for ids, _ in encoded)
        todo = [i for i, (ids, _) in enumerate(encoded) if ids]
        results: list[list[float]] = [[] for _ in encoded]
        if not todo:
            return results

        def reader(input_ids, attention_mask, rows, cols):
            hidden = hidden_states(self.backbone, input_ids, attention_mask)[rows, cols]
            return self.head(hidden.float()).squeeze(-1)

        was_training = self.backbone.training
        self.backbone.eval()
        try:
            # fp32 read: no autocast on the backbone's own device (CPU or CUDA)
            device = model_device(self.backbone).type
            context = self.autocast() if self.autocast is not None else torch.autocast(device, enabled=False)
            with context:
                scores = chunked_position_scores(
                    [encoded[i] for i in todo],
                    reader,
                    pad_id=pad_id_of(self.tokenizer),
                    device=model_device(self.backbone),
                    batch_size=self.batch_size,
                    max_batch_tokens=self.max_batch_tokens,
                )
        finally:
            self.backbone.train(was_training)
        for i, values in zip(todo, scores):
            results[i] = values
        return results
