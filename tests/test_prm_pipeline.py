"""The process-supervision pipeline end to end with tiny models: collect labels, train a PRM, best-of-N."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from agents.engines import HFEngine  # noqa: E402
from agents.engines.testing import byte_level_tokenizer, tiny_model  # noqa: E402
from experiments import collect_prm_data, prm_best_of_n, train_prm  # noqa: E402
from rewards.prm import load_prm  # noqa: E402
from rewards.prm.data import read_examples  # noqa: E402


def test_binary_auc_known_values():
    assert train_prm.binary_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert train_prm.binary_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert train_prm.binary_auc([0.5, 0.5, 0.5, 0.5], [False, True, False, True]) == 0.5
    assert train_prm.binary_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert math.isnan(train_prm.binary_auc([0.1, 0.2], [True, True]))


def test_split_steps():
    text = "3 + 4 = 7\n\n\n\nSo she has 7.\n\nThe answer is \\boxed{7}.\n\nExtra chatter."
    assert collect_prm_data.split_steps(text) == ["3 + 4 = 7", "So she has 7.", "The answer is \\boxed{7}."]
    assert collect_prm_data.split_steps("a\n\nb\n\nc", max_steps=2) == ["a", "b"]
    assert collect_prm_data.split_steps("  \n\n ") == []


def test_collect_writes_all_formats_with_consistent_labels(tmp_path):
    model, tokenizer = tiny_model(seed=0, tokenizer=byte_level_tokenizer())
    engine = HFEngine(model, tokenizer)
    config = collect_prm_data.PRMDataConfig(
        levels=[1],
        num_problems=2,
        samples=2,
        rollouts=2,
        max_new_tokens=16,
        rollout_max_new_tokens=8,
        max_steps=3,
        few_shot=1,
        out=str(tmp_path / "data"),
    )
    summary = collect_prm_data.collect(config, engine=engine, progress=False)
    assert summary["problems"] == 2 and summary["solutions"] == 4
    shots = summary["few_shot_messages"]
    assert [m["role"] for m in shots] == ["user", "assistant"] and "\\boxed{" in shots[1]["content"]
    assert 0.0 <= summary["positive_step_fraction_hard"] <= 1.0
    samples = [json.loads(line) for line in open(tmp_path / "data" / "samples.jsonl")]
    assert len(samples) == 4
    for s in samples:
        assert len(s["steps"]) == len(s["values"]) == len(s["hard"]) >= 1
        assert s["values"][-1] == float(s["correct"])
        assert all(h == (v > 0) for h, v in zip(s["hard"], s["values"]))
    shepherd = read_examples(tmp_path / "data" / "math_shepherd.jsonl")
    assert [ex.labels for ex in shepherd] == [[float(h) for h in s["hard"]] for s in samples]
    assert [ex.steps for ex in shepherd] == [s["steps"] for s in samples]
    aps = read_examples(tmp_path / "data" / "math_aps.jsonl")
    assert len(aps) == sum(len(s["steps"]) for s in samples)
    held_out = collect_prm_data.held_out_config(config)
    assert held_out.out.endswith("test") and held_out.samples == config.test_samples


def _synthetic_shepherd(path, n, seed):
    """A learnable toy task: a step is good iff it says 'fine'."""
    from rewards.prm.data import math_shepherd_record

    rng = random.Random(seed)
    rows = []
    with open(path, "w") as f:
        for i in range(n):
            steps = [rng.choice(["it is fine", "it is wrong"]) for _ in range(rng.randint(1, 3))]
            labels = [s.endswith("fine") for s in steps]
            f.write(json.dumps(math_shepherd_record(f"Question {i}?", steps, labels)) + "\n")
            rows.append(
                {
                    "problem_id": f"p{i // 4}",
                    "question": f"Question {i // 4}?",
                    "steps": steps + [f"The answer is \\boxed{{{i % 3}}}."],
                    "correct": all(labels),
                }
            )
    return rows


def test_train_prm_learns_a_step_rule_and_reloads(tmp_path):
    model, tokenizer = tiny_model(seed=0, tokenizer=byte_level_tokenizer(), hidden_size=64)
    _synthetic_shepherd(tmp_path / "train.jsonl", 64, seed=0)
    test_rows = _synthetic_shepherd(tmp_path / "test.jsonl", 16, seed=1)
    config = train_prm.PRMTrainConfig(
        data=[str(tmp_path / "train.jsonl")],
        eval_data=[str(tmp_path / "test.jsonl")],
        labels="hard",
        epochs=4,
        lr=3e-3,
        batch_size=8,
        autocast="off",
        logdir=str(tmp_path / "tb"),
        out=str(tmp_path / "prm"),
    )
    result = train_prm.train(config, model=model, tokenizer=tokenizer, progress=False)
    assert result["eval_after"]["auc"] > 0.95, result["history"]
    assert result["eval_after"]["auc"] > result["eval_before"]["auc"]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    prm = load_prm(tmp_path / "prm")
    fine, wrong = prm.score(["Question 1?"] * 2, [["it is fine"], ["it is wrong"]])
    assert fine[0] > 0.5 > wrong[0]

    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    out = prm_best_of_n.main(
        ["--samples", str(samples), "--prm", str(tmp_path / "prm"), "--n", "1", "2", "--trials", "5"]
    )
    acc = out["accuracy"]
    assert set(acc) == {1, 2} and acc[1]["random"] == pytest.approx(acc[1]["prm-best-min"])
    # The PRM that learned the rule picks the all-"fine" solution whenever there is one.
    assert acc[2]["prm-best-min"] == pytest.approx(acc[2]["pass@N"])


def test_trainable_layers_freeze_everything_below():
    model, _ = tiny_model(seed=0, tokenizer=byte_level_tokenizer(), hidden_size=32)
    params = train_prm._select_trainable(model, 1)
    trainable = {id(p) for p in params}
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {
        id(p) for p in [*model.model.layers[-1].parameters(), *model.model.norm.parameters()]
    }
    assert not model.model.embed_tokens.weight.requires_grad


class ScriptedEngine:
    """A stand-in engine (named as such) that answers from a script, so which prefixes get rolled out and the
    labels they get can be checked by hand; the real engine runs in
    ``test_collect_writes_all_formats_with_consistent_labels``."""

    step_delimiter = "\n\n"

    def __init__(self, solutions: dict[str, list[str]], rollout: dict[str, str]) -> None:
        self.solutions, self.rollout = solutions, rollout
        self.rolled_out: list[tuple[str, list[str]]] = []
        self.stats = type("Stats", (), {"generated_tokens": 0})()

    def step_prompt(self, question, steps, instruction=""):
        return json.dumps([question, list(steps)])

    def generate(self, prompts, *, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0, stop=None, seed=None):
        from agents.engines.base import Completion

        groups = []
        for prompt in prompts:
            question, steps = json.loads(prompt)
            if steps:
                self.rolled_out.append((question, steps))
                texts = [self.rollout[question]] * n
            else:
                texts = self.solutions[question][:n]
            groups.append([Completion(t, token_ids=[1], finish_reason="stop") for t in texts])
        return groups


def test_collect_rolls_out_only_mixed_problems_and_counts_sibling_samples(tmp_path):
    config = collect_prm_data.PRMDataConfig(
        levels=[1], num_problems=2, samples=2, rollouts=2, out=str(tmp_path / "all"), problems_per_batch=2
    )
    problems, _, _ = collect_prm_data._problems(config)
    mixed, unanimous = problems
    right = lambda p: f"\\boxed{{{p.answer}}}"  # noqa: E731
    wrong = lambda p: f"\\boxed{{{p.answer}1}}"  # noqa: E731
    solutions = {
        mixed.question: [f"step a\n\n{right(mixed)}", f"step a\n\n{wrong(mixed)}"],
        unanimous.question: [f"step b\n\n{wrong(unanimous)}"] * 2,
    }
    rollout = {mixed.question: right(mixed), unanimous.question: right(unanimous)}

    def collect(**changes):
        engine = ScriptedEngine(solutions, rollout)
        summary = collect_prm_data.collect(replace(config, **changes), engine=engine, progress=False)
        rows = [json.loads(line) for line in open(f"{changes.get('out', config.out)}/samples.jsonl")]
        values = {(r["question"], r["correct"]): r["values"] for r in rows}
        return summary, engine.rolled_out, values, [r["values"] for r in rows]

    # every prefix rolled out; a prefix's label counts only its own solution
    summary, rolled, values, _ = collect()
    assert summary["mixed_problems"] == 1 and len(rolled) == 2
    assert values[(mixed.question, True)] == [1.0, 1.0]  # rollouts [right, right] + itself (right)
    assert values[(mixed.question, False)] == [2 / 3, 0.0]  # rollouts [right, right] + itself (wrong)
    assert values[(unanimous.question, False)] == [2 / 3, 0.0]

    out = str(tmp_path / "mixed")
    summary, rolled, values, rows = collect(rollout_scope="mixed", sibling_outcomes=True, out=out)
    assert rolled == [(mixed.question, ["step a"])]  # the unanimous problem is not rolled out
    # "step a": 2 rollouts (right) + the 2 sampled solutions through it (right, wrong) = 3 / 4
    assert values[(mixed.question, True)] == [0.75, 1.0] and values[(mixed.question, False)] == [0.75, 0.0]
    assert values[(unanimous.question, False)] == [0.0, 0.0]  # labelled by its own samples alone
    examples = read_examples(f"{out}/samples.jsonl")  # the samples file reads as soft-labelled examples
    assert [ex.labels for ex in examples] == rows and len(rows) == 4


def test_pairwise_loss_and_within_question_pairs_known_answers():
    import torch

    z = torch.tensor([2.0, 0.0, 1.0, -1.0])
    loss = train_prm.pairwise_loss(z, ["q", "q", "r", "s"], [True, False, True, False])
    assert loss.item() == pytest.approx(math.log1p(math.exp(-2.0)))  # only (0, 1) is a same-question pair
    assert train_prm.pairwise_loss(z, ["q", "r", "s", "t"], [True, False, True, False]).item() == 0.0
    two = train_prm.pairwise_loss(z, ["q", "q", "q", "q"], [True, False, True, False])
    pairs = [(2.0, 0.0), (2.0, -1.0), (1.0, 0.0), (1.0, -1.0)]
    assert two.item() == pytest.approx(sum(math.log1p(math.exp(w - r)) for r, w in pairs) / 4)

    from rewards.prm.data import StepExample

    examples = [
        StepExample("q", ["a", "b"], [1.0, 1.0]),
        StepExample("q", ["a", "c"], [1.0, 0.0]),
        StepExample("q", ["d"], [0.0]),
        StepExample("r", ["e"], [1.0]),
    ]
    scores = [[0.9, 0.6], [0.9, 0.7], [0.6], [0.1]]
    # min-aggregated: right 0.6 vs wrong 0.7 (misordered) and vs 0.6 (tie: half)
    assert train_prm.within_question_pairs(examples, scores) == (0.25, 2)
    assert train_prm.mixed_questions(examples) == {"q"}


def test_train_prm_pairwise_on_mixed_questions_learns_to_rank_solutions(tmp_path):
    """Solutions of one question differ only in their last step; the pairwise term on mixed questions teaches the
    PRM to order them."""
    rng = random.Random(0)

    def write(path, questions):
        with open(path, "w") as f:
            for q in range(questions):
                for ok in (True, False, rng.random() < 0.5):
                    steps = [f"look at {q}", "it is fine" if ok else "it is wrong"]
                    row = {"problem_id": f"p{q}", "question": f"Q{q}?", "steps": steps}
                    f.write(json.dumps({**row, "values": [0.5, float(ok)], "correct": ok}) + "\n")

    write(tmp_path / "train.jsonl", 24)
    write(tmp_path / "test.jsonl", 8)
    model, tokenizer = tiny_model(seed=0, tokenizer=byte_level_tokenizer(), hidden_size=64)
    config = train_prm.PRMTrainConfig(
        data=[str(tmp_path / "train.jsonl")],
        eval_data=[str(tmp_path / "test.jsonl")],
        labels="soft",
        train_questions="mixed",
        pairwise_weight=1.0,
        epochs=3,
        lr=3e-3,
        batch_size=6,
        autocast="off",
        logdir=str(tmp_path / "tb"),
        out=str(tmp_path / "prm"),
    )
    result = train_prm.train(config, model=model, tokenizer=tokenizer, progress=False)
    assert result["train_examples"] == 72 and result["eval_after"]["pairs"] >= 8
    assert result["eval_after"]["pair_accuracy"] > max(0.9, result["eval_before"]["pair_accuracy"])
