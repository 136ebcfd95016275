"""The main job: its stage cache (keys, reuse, --fresh, resume), its compute accounting, and (slow) the pipeline."""

from __future__ import annotations

import json

import pytest

from experiments.stages import StageCache, path_fingerprint, stage_key

# --- the stage cache -------------------------------------------------------------------------------------------


def test_stage_key_depends_on_name_config_and_inputs_in_order():
    base = stage_key("prm", {"lr": 1e-4, "epochs": 2}, ["a", "b"])
    assert base == stage_key("prm", {"epochs": 2, "lr": 1e-4}, ["a", "b"])  # key order does not matter
    assert base != stage_key("prm", {"lr": 2e-4, "epochs": 2}, ["a", "b"])
    assert base != stage_key("prm", {"lr": 1e-4, "epochs": 2}, ["b", "a"])
    assert base != stage_key("labels", {"lr": 1e-4, "epochs": 2}, ["a", "b"])


def test_path_fingerprint_changes_when_files_change(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"1234")
    first = path_fingerprint(str(folder))
    assert first == path_fingerprint(str(folder))
    (folder / "weights.bin").write_bytes(b"123456")
    assert path_fingerprint(str(folder)) != first
    assert path_fingerprint("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_stage_cache_reuses_rebuilds_on_change_and_fresh(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder.name)
        (folder / "out.txt").write_text("made")
        return {"file": "out.txt", "value": len(calls)}

    cache = StageCache(tmp_path)
    first = cache.run("labels", {"k": 1}, ["policy-key"], build)
    assert not first.reused and first.folder.name == f"labels-{first.key}" and first.summary["value"] == 1
    assert (first.folder / "out.txt").read_text() == "made" and (first.folder / "stage.json").is_file()
    again = cache.run("labels", {"k": 1}, ["policy-key"], build)
    assert again.reused and again.key == first.key and again.summary == first.summary and len(calls) == 1
    other_input = cache.run("labels", {"k": 1}, ["another-policy"], build)
    assert not other_input.reused and other_input.key != first.key and len(calls) == 2
    fresh = StageCache(tmp_path, fresh=True).run("labels", {"k": 1}, ["policy-key"], build)
    assert not fresh.reused and fresh.key == first.key and fresh.summary["value"] == 3


def test_interrupted_stage_is_not_reused_and_resumes_from_its_partial_folder(tmp_path):
    cache = StageCache(tmp_path)

    def crash(folder):
        (folder / "cells.jsonl").write_text("first cell\n")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.run("search", {"b": [1, 2]}, [], crash)
    assert not list(tmp_path.glob("search-*/stage.json"))

    def resume(folder):
        kept = (folder / "cells.jsonl").read_text()
        return {"kept": kept}

    result = cache.run("search", {"b": [1, 2]}, [], resume)
    assert result.summary["kept"] == "first cell\n" and not result.reused
    assert not list(tmp_path.glob("*.partial"))


# --- compute accounting ----------------------------------------------------------------------------------------


class CountingPRM:
    """A stand-in scorer (named as such) around a real ValueHeadPRM that records what it was asked to read."""

    def __init__(self, prm):
        self.prm = prm
        self.read = 0

    def score(self, questions, step_lists):
        self.read += sum(len(self.prm.encode(q, s)[0]) for q, s in zip(questions, step_lists))
        scores = self.prm.score(questions, step_lists)
        self.last_read_tokens = self.prm.last_read_tokens
        return scores


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("transformers")
    from agents.engines.testing import tiny_model

    return tiny_model(seed=0)


def test_ledgers_count_generated_prompt_and_prm_read_tokens(tiny):
    import gymnasium as gym

    import agents
    import reasoning_gym  # noqa: F401
    from agents.engines import HFEngine
    from experiments.main_job import compute_of
    from rewards.prm import CausalLMWithValueHead, ValueHeadPRM

    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, prefix_cache_tokens=0)
    prm = CountingPRM(ValueHeadPRM(CausalLMWithValueHead(model), tokenizer))
    env = gym.make("openr/Arithmetic-v0", level=2)
    problems = [{"problem_id": "L2-1"}, {"problem_id": "L2-2"}]
    before = engine.stats.generated_tokens
    agent = agents.BestOfN(engine, env, prm=prm, n=3, max_steps=2, max_new_tokens=4, temperature=1.0)
    results = agent.solve_many(env, problems)
    assert sum(r["generated_tokens"] for r in results) == engine.stats.generated_tokens - before
    assert sum(r["prm_tokens"] for r in results) == prm.read > 0
    for r in results:
        # no prefix cache: the engine processes every prompt whole
        assert r["prompt_tokens"] == r["full_prompt_tokens"] > 0
        assert compute_of(r, with_prm=True) == r["generated_tokens"] + r["prompt_tokens"] + r["prm_tokens"]
        assert compute_of(r, with_prm=False) == r["generated_tokens"] + r["prompt_tokens"]
        assert len(r["candidate_scores"]) == len(r["candidate_correct"]) == 3
    # the likelihood fallback reads nothing
    plain = agents.BestOfN(engine, env, n=2, max_steps=2, max_new_tokens=4, temperature=1.0)
    assert all(r["prm_tokens"] == 0 for r in plain.solve_many(env, problems))


def test_identical_candidates_are_scored_once_and_charged_once(tiny):
    import gymnasium as gym

    import agents
    import reasoning_gym  # noqa: F401
    from agents.engines import HFEngine
    from rewards.prm import CausalLMWithValueHead, ValueHeadPRM

    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer)
    prm = CountingPRM(ValueHeadPRM(CausalLMWithValueHead(model), tokenizer))
    env = gym.make("openr/Arithmetic-v0", level=2)
    agent = agents.BestOfN(engine, env, prm=prm, n=3, max_steps=1, max_new_tokens=4, temperature=0.0)
    [result] = agent.solve_many(env, [{"problem_id": "L2-1"}])
    assert len(set(map(tuple, result["candidate_scores"]))) == 1  # three greedy samples: one text
    single = len(prm.prm.encode(env.unwrapped.problem.question, [result["steps"][0]])[0])
    assert result["prm_tokens"] == prm.read == single


def test_methods_reselect_the_same_samples_and_gaps_compare_at_equal_compute():
    from experiments.main_job import MainJobConfig, candidate_ranking, equal_compute_gaps, method_rows

    def result(correct, answers, scores, right, gen, prompt, prm, keys=None):
        return {
            "correct": correct, "generated_tokens": sum(gen), "prompt_tokens": 2 + sum(prompt),
            "prm_tokens": sum(dict(zip(keys or answers, prm)).values()), "pass_at_k": any(right),
            "candidate_answers": answers, "candidate_scores": scores, "candidate_correct": right,
            "candidate_terminated": [True] * len(answers), "candidate_generated_tokens": gen,
            "candidate_prompt_tokens": prompt, "candidate_prm_tokens": prm, "candidate_keys": keys or answers,
        }  # fmt: skip

    # best-of-3: majority picks "4" (wrong), the PRM vote (min) picks "5" (right)
    bon = result(True, ["4", "4", "5"], [[0.1], [0.2], [0.9]], [False, False, True], [3, 3, 4], [1, 1, 1],
                 [2, 2, 1], keys=["a", "b", "c"])  # fmt: skip
    greedy = result(False, ["4"], [[0.5]], [False], [4], [1], [0])
    cells = [
        {"run": "greedy", "budget": 1, "set": 0, "seconds": 1.0, "results": [greedy]},
        {"run": "best_of_n", "budget": 3, "set": 0, "seconds": 3.0, "results": [bon]},
    ]
    rows = method_rows(cells, MainJobConfig(budgets=(1, 3), problem_sets=1))
    by = {(r["method"], r["budget"]): r for r in rows}
    assert by[("majority_vote", 3)]["accuracy"] == 0.0 and by[("prm_vote", 3)]["accuracy"] == 1.0
    assert by[("prm_best_of_n", 3)]["accuracy"] == 1.0
    assert by[("majority_vote", 3)]["compute"] == 10 + 5 and by[("prm_vote", 3)]["compute"] == 10 + 5 + 5
    # budget 1: the three samples as three runs of one: each right once in three, each priced on its own
    for method in ("majority_vote", "prm_vote", "prm_best_of_n"):
        assert by[(method, 1)]["accuracy"] == pytest.approx(1 / 3)
    assert by[("majority_vote", 1)]["compute"] == pytest.approx((4 + 4 + 5) / 3 + 2)
    assert by[("prm_vote", 1)]["compute"] == pytest.approx((4 + 4 + 5) / 3 + 2 + 5 / 3)
    assert by[("prm_vote", 1)]["seconds_per_problem"] == pytest.approx(1.0)  # a third of the run's 3 s
    ranking = candidate_ranking(cells, "min")
    assert ranking["budget"] == 3 and ranking["within_problem_pairs"] == 2
    assert ranking["within_problem_pair_accuracy"] == 1.0 and ranking["candidate_auc"] == 1.0
    gaps = {(g["method"], g["budget"]): g for g in equal_compute_gaps(rows)}
    # majority's curve: (13/3 + 2, 1/3) and (15, 0.0); the PRM vote at 20 is beyond it -> compared at 15
    assert gaps[("prm_vote", 3)]["gap"] == 1.0 and gaps[("prm_vote", 3)]["beyond_majority_range"]


def test_subset_results_split_samples_into_disjoint_groups_priced_on_their_own():
    from experiments.main_job import subset_results

    result = {
        "generated_tokens": 20, "prompt_tokens": 7 + 4, "prm_tokens": 3 + 4 + 5,
        "candidate_answers": ["1", "1", "2", "3"], "candidate_correct": [True, True, False, False],
        "candidate_scores": [[0.1]] * 4, "candidate_terminated": [True] * 4,
        "candidate_generated_tokens": [5, 5, 4, 6], "candidate_prompt_tokens": [1, 1, 1, 1],
        "candidate_prm_tokens": [3, 3, 4, 5], "candidate_keys": ["x", "x", "y", "z"],
    }  # fmt: skip
    first, second = subset_results(result, 2)
    assert first["candidate_answers"] == ["1", "1"] and second["candidate_answers"] == ["2", "3"]
    # shared prompt (7) once per group; the two identical candidates of the first group are read once
    assert (first["generated_tokens"], first["prompt_tokens"], first["prm_tokens"]) == (10, 9, 3)
    assert (second["generated_tokens"], second["prompt_tokens"], second["prm_tokens"]) == (10, 9, 9)
    assert first["pass_at_k"] and not second["pass_at_k"]
    assert subset_results(result, 4) == [result] and len(subset_results(result, 3)) == 1


def test_best_of_n_results_price_each_candidate(tiny):
    import gymnasium as gym

    import agents
    import reasoning_gym  # noqa: F401
    from agents.engines import HFEngine
    from rewards.prm import CausalLMWithValueHead, ValueHeadPRM

    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, prefix_cache_tokens=0)
    prm = CountingPRM(ValueHeadPRM(CausalLMWithValueHead(model), tokenizer))
    env = gym.make("openr/Arithmetic-v0", level=2)
    agent = agents.BestOfN(engine, env, prm=prm, n=3, max_steps=2, max_new_tokens=4, temperature=1.0)
    for r in agent.solve_many(env, [{"problem_id": "L2-1"}, {"problem_id": "L2-2"}]):
        assert sum(r["candidate_generated_tokens"]) == r["generated_tokens"]
        shared = r["prompt_tokens"] - sum(r["candidate_prompt_tokens"])
        assert 0 < shared < r["prompt_tokens"]  # the problem's prompt, processed once for the three samples
        assert sum(dict(zip(r["candidate_keys"], r["candidate_prm_tokens"])).values()) == r["prm_tokens"]


# --- the whole pipeline ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_main_job_runs_every_stage_then_reuses_them(tmp_path, capsys):
    import torch

    pytest.importorskip("transformers")
    from agents.engines.testing import save_tiny_model
    from experiments.main_job import main

    model = save_tiny_model(tmp_path / "tiny", seed=0)
    args = [
        "--model", str(model), "--sft-steps", "1", "--sft-batch-size", "2", "--label-problems", "4",
        "--label-samples", "2", "--label-rollouts", "1", "--prm-epochs", "1", "--prm-batch-size", "2",
        "--prm-trainable-layers", "1", "--budgets", "1", "2", "--problem-sets", "2", "--problems-per-set", "2",
        "--max-steps", "2", "--max-new-tokens", "3", "--dtype", "float32", "--threads", "1",
        "--oreo-steps", "1", "--oreo-batch-size", "2",
        "--out", str(tmp_path / "job"), "--no-progress",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        first = main(args)
        second = main(args)
    finally:
        torch.set_num_threads(threads)
    assert not any(s["reused"] for s in first["stages"].values())
    assert all(s["reused"] for s in second["stages"].values())
    assert first["rows"] == second["rows"]
    methods = {r["method"] for r in first["rows"]}
    assert methods == {
        "greedy",
        "majority_vote",
        "prm_vote",
        "prm_best_of_n",
        "prm_beam_search",
        "mcts",
        "oreo_beam_search",
    }
    oreo_rows = [r for r in first["rows"] if r["method"] == "oreo_beam_search"]
    assert all(r["prm_tokens"] > 0 for r in oreo_rows)  # the value model's reading is counted
    assert all(len(r["accuracy_per_set"]) == 2 for r in first["rows"])
    saved = json.loads((tmp_path / "job" / "results.json").read_text())
    assert set(saved["verdict"]) >= {"beats_majority_by_5_points", "prm_auc", "pass_at_k_per_budget"}
    assert (tmp_path / "job" / "accuracy_vs_compute.png").stat().st_size > 1000
    assert list((tmp_path / "job" / "tensorboard").glob("events.out.tfevents.*"))
    assert "test-time scaling at equal compute" in capsys.readouterr().out
