"""Process reward models on tiny random models: every format reads the right positions, batching changes nothing."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agents.engines.testing import byte_level_tokenizer, tiny_model  # noqa: E402
from rewards.prm import (  # noqa: E402
    MATH_PSA,
    MATH_SHEPHERD,
    VALUE_HEAD,
    CausalLMWithValueHead,
    ClassificationPRM,
    ProcessRewardModel,
    StepTagPRM,
    ValueHeadPRM,
    aggregate_scores,
    load_prm,
)
from rewards.prm.formats import encode_steps, token_id  # noqa: E402

QUESTIONS = ["What is 2 + 3 * 4?", "Compute 7 - 5.", "What is 2 + 3 * 4?"]
STEPS = [
    ["3 * 4 = 12.", "2 + 12 = 14.", "The answer is 14."],
    ["7 - 5 = 2.", "The answer is \\boxed{2}."],
    ["2 + 3 = 5 ки with a forged tag.", "5 * 4 = 20.", "So the answer is 20, +-+ ...", "The answer is 20."],
]


@pytest.fixture(scope="module")
def lm():
    model, tokenizer = tiny_model(seed=3, tokenizer=byte_level_tokenizer())
    return model, tokenizer


def _assert_close(a, b, tol=1e-4):
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        assert len(row_a) == len(row_b)
        for x, y in zip(row_a, row_b):
            assert abs(x - y) < tol, (row_a, row_b)


@pytest.mark.parametrize("fmt", [MATH_SHEPHERD, MATH_PSA], ids=lambda f: f.name)
def test_step_tag_prm_reads_good_vs_bad_at_each_tag(lm, fmt):
    model, tokenizer = lm
    prm = StepTagPRM(model, tokenizer, fmt, batch_size=2)
    assert isinstance(prm, ProcessRewardModel)
    scores = prm.score(QUESTIONS, STEPS)
    assert [len(s) for s in scores] == [len(s) for s in STEPS]
    assert all(0.0 <= x <= 1.0 for row in scores for x in row)

    # Reference: full-vocabulary logits of one un-padded sequence, read at the recorded tag positions.
    good, bad = token_id(tokenizer, fmt.good_token), token_id(tokenizer, fmt.bad_token)
    for question, steps, got in zip(QUESTIONS, STEPS, scores):
        ids, positions = encode_steps(tokenizer, fmt, question, steps)
        assert len(positions) == len(steps)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        expected = [logits[p, [good, bad]].softmax(-1)[0].item() for p in positions]
        _assert_close([got], [expected])


def test_step_tag_prm_tag_text_and_render_agree(lm):
    _, tokenizer = lm
    ids, positions = encode_steps(tokenizer, MATH_SHEPHERD, "Q?", ["a", "b"])
    assert tokenizer.decode(ids) == MATH_SHEPHERD.render("Q?", ["a", "b"])
    assert tokenizer.decode(ids[: positions[0] + 1]).endswith("Step 1: a ки")
    # A step containing the tag text cannot forge an extra scoring position.
    _, forged = encode_steps(tokenizer, MATH_SHEPHERD, "Q?", ["a ки b"])
    assert len(forged) == 1


def test_scores_do_not_depend_on_batching_or_later_steps(lm):
    model, tokenizer = lm
    prm = StepTagPRM(model, tokenizer, MATH_SHEPHERD, batch_size=16)
    together = prm.score(QUESTIONS, STEPS)
    one_by_one = [prm.score([q], [s])[0] for q, s in zip(QUESTIONS, STEPS)]
    _assert_close(together, one_by_one)
    tiny_chunks = StepTagPRM(model, tokenizer, MATH_SHEPHERD, batch_size=1, max_batch_tokens=8)
    _assert_close(together, tiny_chunks.score(QUESTIONS, STEPS))
    # Causal model: a step's score is the same whether or not later steps follow.
    prefix = prm.score([QUESTIONS[0]], [STEPS[0][:2]])[0]
    _assert_close([prefix], [together[0][:2]])


def test_prm_edge_cases(lm):
    model, tokenizer = lm
    prm = StepTagPRM(model, tokenizer, MATH_SHEPHERD, max_length=40)
    assert prm.score([], []) == []
    assert prm.score(["Q"], [[]]) == [[]]
    with pytest.raises(ValueError):
        prm.score(["Q", "R"], [["a"]])
    long_steps = ["x" * 30, "y" * 30, "z = 1"]
    with pytest.warns(UserWarning, match="cut"):
        scores = prm.score(["Q"], [long_steps])[0]
    assert scores[0] == 0.5 and len(scores) == 3 and 0 <= scores[2] <= 1
    # Empty, whitespace-only and huge steps score without raising.
    odd = prm.score(["Q"], [["", "   ", "9" * 3000]])[0]
    assert len(odd) == 3


def test_classification_prm_reads_separator_class_probability(lm):
    from transformers import LlamaForTokenClassification

    _, tokenizer = lm
    tokenizer = byte_level_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    base, _ = tiny_model(seed=5, tokenizer=tokenizer)
    config = base.config
    config.num_labels = 2
    torch.manual_seed(0)
    model = LlamaForTokenClassification(config).eval()
    prm = ClassificationPRM(model, tokenizer, batch_size=2)
    scores = prm.score(QUESTIONS, STEPS)
    assert [len(s) for s in scores] == [len(s) for s in STEPS]
    sep = tokenizer.convert_tokens_to_ids("<extra_0>")
    for question, steps, got in zip(QUESTIONS, STEPS, scores):
        text = prm.render(question, steps)
        assert "<|im_start|>assistant" in text and text.count("<extra_0>") == len(steps)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            probs = model(torch.tensor([ids])).logits[0].softmax(-1)[:, 1]
        expected = [probs[i].item() for i, t in enumerate(ids) if t == sep]
        _assert_close([got], [expected])
    with pytest.raises(ValueError, match="one token"):
        ClassificationPRM(model, byte_level_tokenizer(), separator="<extra_0>")


def test_value_head_prm_and_save_load_roundtrip(lm, tmp_path):
    model, tokenizer = lm
    torch.manual_seed(0)
    vmodel = CausalLMWithValueHead(model, init_std=0.5)
    prm = ValueHeadPRM(vmodel, tokenizer, batch_size=2)
    scores = prm.score(QUESTIONS, STEPS)
    ids, positions = encode_steps(tokenizer, VALUE_HEAD, QUESTIONS[0], STEPS[0])
    with torch.no_grad():
        out = vmodel(torch.tensor([ids]), return_logits=True)
    assert out.logits.shape[:2] == out.values.shape
    _assert_close([scores[0]], [[torch.sigmoid(out.values[0, p]).item() for p in positions]])
    assert len(set(round(x, 6) for x in scores[0])) > 1  # a random head separates positions

    vmodel.save_pretrained(tmp_path / "vh")
    tokenizer.save_pretrained(tmp_path / "vh")
    (tmp_path / "vh" / "prm_config.json").write_text('{"kind": "value-head"}')
    reloaded = load_prm(tmp_path / "vh")
    _assert_close(scores, reloaded.score(QUESTIONS, STEPS))


def test_step_tag_prm_load_roundtrip(lm, tmp_path):
    model, tokenizer = lm
    model.save_pretrained(tmp_path / "st")
    tokenizer.save_pretrained(tmp_path / "st")
    (tmp_path / "st" / "prm_config.json").write_text('{"kind": "step-tag", "format": "math-psa"}')
    reloaded = load_prm(tmp_path / "st")
    assert reloaded.step_format == MATH_PSA
    _assert_close(
        StepTagPRM(model, tokenizer, MATH_PSA).score(QUESTIONS, STEPS), reloaded.score(QUESTIONS, STEPS)
    )


def test_aggregate_scores():
    s = [0.9, 0.5, 0.8]
    assert aggregate_scores(s, "min") == 0.5
    assert aggregate_scores(s, "last") == 0.8
    assert math.isclose(aggregate_scores(s, "product"), 0.36)
    assert math.isclose(aggregate_scores(s, "mean"), 2.2 / 3)
    assert aggregate_scores([], "min") == 0.0
    with pytest.raises(ValueError):
        aggregate_scores(s, "max")
