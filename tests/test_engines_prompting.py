"""Prompt encoding: a step prompt's tokens must be the ones the model sees inside a whole solution."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from agents.engines.prompting import encode_prompt, plain_step_prompt, render_prompt, step_messages  # noqa: E402
from agents.engines.testing import tiny_model  # noqa: E402

QUESTION = "What is 8 * 3 + 1?"
INSTRUCTION = "Solve step by step."


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_model(seed=0)[1]


@pytest.mark.parametrize("steps", [[], ["8 + 9 = 17"], ["8 * 3 = 24", "24 + 1 = 25"]])
def test_step_prompt_tokens_are_a_prefix_of_the_continued_text(tokenizer, steps) -> None:
    prompt = render_prompt(tokenizer, step_messages(QUESTION, steps, INSTRUCTION))
    ids = encode_prompt(tokenizer, prompt)
    assert tokenizer.decode(ids) == prompt
    whole = tokenizer(prompt + "The answer is \\boxed{25}.")["input_ids"]
    assert whole[: len(ids)] == ids


def test_trailing_delimiter_is_not_one_token(tokenizer) -> None:
    """The real failure: a byte-level BPE encodes a final "\\n\\n" as one token that never precedes a word."""
    prompt = plain_step_prompt(QUESTION, ["8 + 9 = 17"], INSTRUCTION)
    naive = tokenizer(prompt)["input_ids"]
    ids = encode_prompt(tokenizer, prompt)
    assert tokenizer.decode(ids) == prompt
    assert naive[-1] != ids[-1] and tokenizer.decode(ids[-2:]) == "\n\n"


def test_text_without_trailing_space_is_encoded_as_is(tokenizer) -> None:
    assert encode_prompt(tokenizer, "no trailing space") == tokenizer("no trailing space")["input_ids"]
