"""OREO's value model V(s) and the scorer that lets every search agent use it like a PRM.

The value model is a zero-initialised scalar head (``rewards.prm.value_head``) either on its own copy of the LM
(as the paper does) or on the policy's final hidden states (cheaper: one backbone serves both). V(s) is read at the
last token of the state, i.e. the hidden state from which the policy writes the next action: in training that is
the token before each step's first token; in search it is the last token of the prompt the policy would read next.

The value loss (Eq. 8) trains V only at those states, the positions *before* each action. A finished candidate
has no next action, so V "after its last step" is read at a position V was never fitted on. Its value comes
instead from the soft Bellman identity OREO enforces (Eq. 3, with r = 0 before the end and r = R at the end):

    V(s_{t+1}) = V(s_t) + beta * log pi(a_t | s_t) / pi_ref(a_t | s_t)       (non-terminal steps)
    R          = V(s_T) + beta * log pi(a_T | s_T) / pi_ref(a_T | s_T)       (the last step)

so a finished candidate is scored ``V(s_last) + beta * log-ratio of its last action`` (``terminal="bellman"``,
``soft_bellman_terminal_value``): V at a trained state plus the policy's and the reference's log-probs of the last
step (one policy and one reference pass over it). Without the policy (a bare value model) the cheapest correct
estimate is ``terminal="state"``: V(s_last), the value of the last trained state (the log-ratio taken as 0).
``terminal="after"`` keeps the old reading (V after the last step), only for comparison.

``ValueScorer`` implements both the PRM protocol ``score(questions, step_lists)`` (one value per step: V of the
state after it, the last one from ``terminal``) and the search agents' node-value protocol ``evaluate(nodes,
ledgers)``, which reads each node's own next prompt (on ALFWorld that prompt holds the game's observations, which
the question-and-steps protocol cannot see). It counts the tokens it reads (value, policy and reference passes), so
searches can be compared at equal compute (generated tokens plus scorer tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from agents.engines.logprobs import hidden_states
from agents.engines.prompting import encode_prompt, render_prompt

__all__ = ["TERMINAL_MODES", "ValueScorer", "soft_bellman_terminal_value"]

TERMINAL_MODES = ("bellman", "state", "after")
"""How a finished candidate is valued: V(s_last) + beta * log-ratio, V(s_last), or V after the last step."""

ActionRow = tuple[list[int], list[int], int]
"""(context ids, response ids, index of the first token of the last action in the response)."""
LogProbs = Callable[[Sequence[ActionRow]], tuple[torch.Tensor, torch.Tensor]]
"""Rows -> ``(B, R)`` response log-probs under the policy and under the reference (OREO's training temperature)."""


def soft_bellman_terminal_value(
    value_last_state: torch.Tensor,
    logprobs: torch.Tensor,
    reference_logprobs: torch.Tensor,
    action_mask: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """``(B,)`` outcome estimate of finished candidates: V(s_last) + beta * sum over the last action's tokens
    (``action_mask`` 1) of log pi - log pi_ref. The soft Bellman identity at the terminal step, so V is read only
    at a state the value loss trains; at an exact fit of Eq. 8 it returns the trajectory's R."""
    log_ratio = ((logprobs.float() - reference_logprobs.float()) * action_mask).sum(-1)
    return value_last_state.float() + beta * log_ratio


class ValueScorer:
    """V(s) of partial solutions for search (``BeamSearch(engine, env, prm=scorer)``, ``MCTS``, ``BestOfN``).

    ``backbone`` / ``head``: the value model (``agent.value_backbone()`` / ``agent.value_head``). ``engine`` and
    ``adapter`` render prompts exactly as the policy reads them. ``log_probs`` (``OREO.action_logprobs``) and
    ``beta`` give finished candidates their soft-Bellman value; ``terminal`` picks the rule (default
    ``"bellman"`` when ``log_probs`` is given, else ``"state"``). ``tokens_read`` / ``new_tokens`` / ``calls``
    count the work of every pass (``ratio_tokens_read``: the policy and reference passes alone). V of a prompt is
    cached by its tokens, so a scorer assumes a fixed value model: build a new one after further training.
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
        log_probs: LogProbs | None = None,
        beta: float = 0.0,
        terminal: str | None = None,
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
        self.log_probs = log_probs
        self.beta = float(beta)
        self.terminal = terminal or ("bellman" if log_probs is not None else "state")
        if self.terminal not in TERMINAL_MODES:
            raise ValueError(f"terminal must be one of {TERMINAL_MODES}, got {self.terminal!r}")
        if self.terminal == "bellman" and log_probs is None:
            raise ValueError("terminal='bellman' needs log_probs (the policy's and the reference's)")
        self.tokens_read = 0
        """Tokens the scorer's models ran over (every prompt read in full)."""
        self.new_tokens = 0
        """Tokens a prefix-caching scorer would run over: each node's prompt minus its parent's."""
        self.ratio_tokens_read = 0
        """Of ``tokens_read``: the policy and reference passes over finished candidates' last actions."""
        self.calls = 0
        self._prompt_lengths: dict[int, int] = {}
        self._state_values: dict[tuple[int, ...], float] = {}
        self._reference_contexts: set[tuple[int, ...]] = set()

    # --- the PRM protocol ---------------------------------------------------------------------------------------

    def score(
        self,
        questions: Sequence[str],
        step_lists: Sequence[Sequence[str]],
        finished: Sequence[bool] | None = None,
    ) -> list[list[float]]:
        """Per candidate, the value after each of its steps, read in the training layout (the step-0 prompt and
        the steps joined by the delimiter): V(s_{j+1}) for every step but the last; for the last, V(s_n) when the
        candidate is unfinished (``finished[i]`` False: the delimiter follows it) and the ``terminal`` rule when
        it is finished (the default: the PRM protocol ranks finished solutions)."""
        from agents.rl.rollout import episode_to_tokens

        if len(questions) != len(step_lists):
            raise ValueError(f"{len(questions)} questions but {len(step_lists)} step lists")
        finished = [True] * len(questions) if finished is None else list(finished)
        delimiter = getattr(self.engine, "step_delimiter", "\n\n")
        encoded: list[tuple[list[int], list[int]]] = []
        ratio_rows: dict[int, ActionRow] = {}
        for i, (question, steps) in enumerate(zip(questions, step_lists)):
            if not steps:
                encoded.append(([], []))
                continue
            done = bool(finished[i])
            item = episode_to_tokens(
                self.tokenizer,
                self.engine,
                question,
                self.instruction,
                list(steps),
                "eos" if done else "stop",
                delimiter=delimiter,
                max_response_tokens=1 << 30,
            )
            context, response = list(item.prompt_ids), list(item.response_ids)
            starts = [0] + [end + 1 for end in item.step_ends[:-1]]
            positions = [len(context) + start - 1 for start in starts]  # V(s_0) ... V(s_{n-1})
            if not done or self.terminal == "after":
                positions.append(len(context) + len(response) - 1)  # after the last step
            encoded.append((context + response, positions))
            if done and self.terminal == "bellman":
                ratio_rows[i] = (context, response, starts[-1])
        values = self._read(encoded)
        terminal = self._terminal_values(list(ratio_rows.values()), [values[i][-1] for i in ratio_rows])
        by_row = dict(zip(ratio_rows, terminal))
        scores: list[list[float]] = []
        for i, (row, steps) in enumerate(zip(values, step_lists)):
            if not row:
                scores.append([])
            elif len(row) > len(
                steps
            ):  # unfinished / "after": the last read is the value after the last step
                scores.append(row[1:])
            else:  # finished: V(s_1) ... V(s_{n-1}), then the terminal rule from V(s_{n-1})
                scores.append(row[1:] + [by_row.get(i, row[-1])])
        return scores

    # --- the search agents' node-value protocol -----------------------------------------------------------------

    def evaluate(self, nodes: Sequence[Any], ledgers: Sequence[Any]) -> None:
        """``node.value`` = V of the state the node reached, read at the end of the prompt the policy would read
        there; a finished node (``node.done``) is valued by the ``terminal`` rule from its parent's state and its
        own action. ``node.step_scores`` = its parent's plus that value."""
        from agents.adapters import StepAdapter

        adapter = self.adapter or StepAdapter(self.instruction)
        if len(self._prompt_lengths) > 100_000:
            self._prompt_lengths.clear()
        if len(self._state_values) > 50_000:
            self._state_values.clear()
            self._reference_contexts.clear()
        finals = [
            node for node in nodes if node.done and node.parent is not None and self.terminal != "after"
        ]
        final_ids = {id(node) for node in finals}
        reads: list[tuple[Any, list[int], int]] = []  # (node whose prompt is read, ids, prefix already read)
        for node in nodes:
            if id(node) in final_ids:
                continue
            ids = self._encode(adapter.prompt(self.engine, node.info, node.observation))
            parent_length = self._prompt_lengths.get(id(node.parent), 0) if node.parent is not None else 0
            self._prompt_lengths[id(node)] = len(ids)
            reads.append((node, ids, parent_length))
        parent_ids: dict[int, list[int]] = {}
        queued = {tuple(ids) for _, ids, _ in reads}
        for node in finals:  # the state the last action was taken from
            ids = self._encode(adapter.prompt(self.engine, node.parent.info, node.parent.observation))
            parent_ids[id(node)] = ids
            key = tuple(ids)
            if key not in self._state_values and key not in queued:
                queued.add(key)
                grand = node.parent.parent
                reads.append((node, ids, self._prompt_lengths.get(id(grand), 0) if grand is not None else 0))
        values = self._read([(ids, [len(ids) - 1]) for _, ids, _ in reads])
        for (node, ids, parent_length), value in zip(reads, values):
            ledgers[node.problem].prm_tokens += len(ids)  # the compute a test-time scaling curve counts
            self.new_tokens += max(len(ids) - parent_length, 0)
            self._state_values[tuple(ids)] = float(value[0])
            if id(node) not in final_ids:
                node.value = float(value[0])
        if finals:
            states = [self._state_values[tuple(parent_ids[id(node)])] for node in finals]
            if self.terminal == "bellman":
                rows = [
                    (parent_ids[id(node)], self._action_ids(adapter, node, parent_ids[id(node)]), 0)
                    for node in finals
                ]
                for node, (context, response, _) in zip(finals, rows):
                    ledgers[node.problem].prm_tokens += 2 * (len(context) + len(response))
                states = self._terminal_values(rows, states)
            for node, value in zip(finals, states):
                node.value = float(value)
        for problem in {node.problem for node in nodes}:
            ledgers[problem].prm_calls += 1
        for node in nodes:
            parent_scores = list(node.parent.step_scores) if node.parent is not None else []
            node.step_scores = parent_scores[: max(node.depth - 1, 0)] + [float(node.value)]

    # --- shared -------------------------------------------------------------------------------------------------

    def _action_ids(self, adapter: Any, node: Any, parent_ids: list[int]) -> list[int]:
        """The last action's tokens in the training layout: a math step ends with EOS when the solution finished
        (``node.terminated``) and with the delimiter otherwise; a game command in the chat view is the assistant
        turn the chat template writes (end-of-turn included, as ``oreo_data.conversation_row`` trains it), in
        the single-turn view the command and the delimiter (``_turn_rows``)."""
        from agents.adapters import TextGameAdapter

        eos = self.tokenizer.eos_token_id
        prompt = adapter.prompt(self.engine, node.parent.info, node.parent.observation)
        if isinstance(prompt, list) and getattr(self.tokenizer, "chat_template", None):
            messages = [*prompt, {"role": "assistant", "content": node.action}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False).rstrip()
            ids = encode_prompt(self.tokenizer, text)
            if ids[: len(parent_ids)] == parent_ids and len(ids) > len(parent_ids):
                return ids[len(parent_ids) :]
        if node.terminated and not isinstance(adapter, TextGameAdapter) and eos is not None:
            ids = list(self.tokenizer(node.action, add_special_tokens=False)["input_ids"])
            return ids + [int(eos)]
        text = node.action + adapter.step_delimiter
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) or [int(eos or 0)]

    def _terminal_values(self, rows: list[ActionRow], states: list[float]) -> list[float]:
        """``soft_bellman_terminal_value`` of each row (context, response, start of the last action) given
        V(s_last) in ``states``; counts the two passes' tokens."""
        if not rows:
            return []
        assert self.log_probs is not None
        logprobs, reference = self.log_probs(rows)
        mask = torch.zeros(logprobs.shape, dtype=torch.float32)
        for i, (context, response, start) in enumerate(rows):
            mask[i, start : len(response)] = 1.0
            read = len(context) + len(response)
            self.tokens_read += 2 * read
            self.ratio_tokens_read += 2 * read
            # prefix cache: the policy sampled these tokens after this context; the reference reads a context once
            key = tuple(context)
            self.new_tokens += 2 * len(response) + (0 if key in self._reference_contexts else len(context))
            self._reference_contexts.add(key)
        values = soft_bellman_terminal_value(
            torch.tensor(states, dtype=torch.float32), logprobs.cpu(), reference.cpu(), mask, self.beta
        )
        return [float(v) for v in values]

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
