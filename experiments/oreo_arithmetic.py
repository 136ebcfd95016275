"""OREO on Arithmetic level 2 from the shared SFT warm-start: SFT vs rejection-sampling fine-tuning vs OREO (GRPO as
a reference) at the same number of sampled trajectories; then value-guided beam search vs greedy vs majority vote.

    python -m experiments.oreo_arithmetic --out runs/h14/oreo_arithmetic --threads 1

Part 1, per seed: the warm-start policy samples ``problems x samples_per_problem`` trajectories of fresh level-2
problems at ``temperature`` (written in the recorder's format). RFT fine-tunes the warm-start on the correct ones;
OREO learns from all of them (R = 1 / 0); GRPO samples the same number of trajectories itself, in
``samples / (prompts_per_update x group_size)`` updates. Every method then answers the same ``eval_problems``
held-out problems greedily (``experiments.train``'s held-out seeds).

Part 2 (with OREO's seed-0 policy and value model): greedy, majority vote over N samples, and OREO's value-guided
step-level beam search (B beams x K samples, keep the B best by V; a finished candidate is valued V(s_last) +
beta * log pi / pi_ref of its last step, the soft Bellman identity, see ``agents.rl.oreo_value``), at budgets
N = B x K in ``budgets``, on the first ``search_problems`` held-out problems; compute = generated tokens + tokens
the scorer's models read (the value model, and the policy's and reference's passes over finished candidates' last
steps; in full, and with a prefix cache: each node's prompt minus its parent's, as the policy's engine reuses its
prefix). ``--search-from <saved OREO agent>`` runs part 2 alone (in its own process).
Results: ``results.json`` and a printed table.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ENV_ID = "openr/Arithmetic-v0"
BEAMS = {1: (1, 1), 2: (1, 2), 4: (2, 2), 8: (2, 4), 16: (4, 4)}
"""Budget N -> (beams B, samples per beam K) of the value-guided beam search."""


@dataclass
class OREOArithmeticConfig:
    """SFT vs RFT vs OREO (vs GRPO) on Arithmetic level 2, then value-guided search at equal compute."""

    init: str = "runs/rl/sft/agent"
    """The shared SFT warm-start (a saved agent folder with ``policy/``)."""
    level: int = 2
    """Arithmetic level trained and evaluated."""
    seeds: tuple[int, ...] = (0, 1)
    """Training seeds (problems, sampling and update order)."""
    methods: tuple[str, ...] = ("sft", "rft", "oreo", "grpo")
    """Methods of part 1 (``sft`` is the warm-start itself, evaluated once)."""
    problems: int = 32
    """Training problems sampled per seed."""
    samples_per_problem: int = 4
    """Trajectories per problem (problems x samples = the sample budget of every method)."""
    temperature: float = 1.3
    """Sampling temperature of the trajectories (the warm-start is nearly deterministic at 1.0)."""
    updates: int = 8
    """Optimizer steps of RFT and OREO."""
    batch_size: int = 16
    """Trajectories (examples) per RFT / OREO update."""
    learning_rate: float = 2e-5
    """Policy learning rate of RFT, OREO and GRPO (docs/rl.md's GRPO setting)."""
    value_learning_rate: float = 1e-4
    """OREO's value-model learning rate (its head starts at zero and must move in few updates)."""
    value_init: str = "mean_reward"
    """OREO's value head at the start: ``"mean_reward"`` (bias = the training samples' mean reward) or ``"zero"``
    (the paper; in the 4-update run V climbed only 0 -> 0.23 towards rewards of ~0.55, Adam moving the
    zero head ~0.06 per update)."""
    beta: float = 0.03
    """OREO's beta (the paper's default)."""
    grpo_prompts: int = 4
    """GRPO problems per update (x ``samples_per_problem`` samples each)."""
    eval_problems: int = 48
    """Held-out problems for the greedy accuracy."""
    search_problems: int = 24
    """Held-out problems for part 2 (0 skips it)."""
    budgets: tuple[int, ...] = (1, 2, 4, 8)
    """Samples per problem of majority vote and of the beam search (B x K)."""
    search_temperature: float = 1.0
    """Sampling temperature of majority vote and beam search."""
    max_new_tokens: int = 96
    """Token limit per solution (episode rollouts) and per step (search)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass."""
    threads: int = 1
    """Torch threads."""
    out: str = "runs/h14/oreo_arithmetic"
    """Output folder (results.json, collected trajectories, logs)."""
    save_oreo: bool = True
    """Save each seed's trained OREO agent under ``out/oreo_s<seed>/agent`` (for ``search_from``)."""
    search_from: str = ""
    """A saved OREO agent folder: skip part 1 and run only part 2 with it (e.g. in another process)."""
    calibration_trajectories: int = 64
    """Training trajectories on which the trained value model's calibration (won vs lost) is measured."""
    calibration_data: str = ""
    """With ``search_from``: a trajectories JSONL (the run's ``trajectories_s<seed>.jsonl``) on which to measure the
    loaded value's calibration (``value_diagnostics``); ``--search-problems 0`` then skips the search."""
    terminals: tuple[str, ...] = ("bellman",)
    """How value beam search values a finished candidate (``agents.rl.oreo_value.TERMINAL_MODES``): ``bellman``
    (V(s_last) + beta * log pi / pi_ref of the last step), ``state`` (V(s_last)) or ``after`` (V read after the
    last step, a position the value loss never trains: the old rule, for comparison). One run per mode and
    budget; runs other than ``bellman`` are named ``value_beam_<mode>@N``."""
    search_runs: tuple[str, ...] = ("greedy", "majority", "value_beam")
    """Which searches part 2 runs (a subset lets a second process add runs to the same comparison);
    ``value_best_of_n`` adds best-of-N (N = the largest budget) answered by the candidate of highest value, whose
    candidates also measure how well the value ranks held-out solutions (``value_auc``)."""


def _engine(config: OREOArithmeticConfig) -> Any:
    import torch

    from agents.engines import HFEngine
    from experiments.train import load_policy

    torch.set_num_threads(config.threads)
    model, tokenizer = load_policy("", config.init)
    return HFEngine(model, tokenizer, num_threads=config.threads)


def _common(config: OREOArithmeticConfig, seed: int, log: Path | None) -> dict[str, Any]:
    return dict(
        seed=seed,
        rollout_mode="episode",
        max_new_tokens=config.max_new_tokens,
        micro_batch_size=config.micro_batch_size,
        learning_rate=config.learning_rate,
        log_dir=str(log) if log else None,
        log_formats=("csv", "tensorboard"),
        verbose=0,
    )


def _greedy_accuracy(agent: Any, config: OREOArithmeticConfig) -> dict[str, float]:
    from experiments.train import held_out_seeds

    return agent.evaluate(held_out_seeds(config.eval_problems), k=1, temperature=0.0, env=ENV_ID)


def value_diagnostics(oreo: Any, count: int) -> dict[str, float]:
    """The trained OREO on its first ``count`` training trajectories, won (R = 1) vs lost (R = 0): V's mean over
    each trajectory's states, the mean log pi / pi_ref per action token, and the AUC of V's mean for telling won
    from lost (0.5: no better than chance), over all pairs (``value_auc``: a V that only knows which problems are
    easy scores high on it) and over the pairs of one problem (``value_auc_within_problem``: what a search needs,
    since it compares candidates of one problem). In-sample: it says whether V fitted, not whether it generalises."""
    import torch

    from agents.rl.oreo import TrajectoryBatch

    indices = list(range(min(count, len(oreo.pool))))
    values, ratios, rewards = [], [], []
    with torch.no_grad(), oreo.autocast():
        for start in range(0, len(indices), oreo.config.micro_batch_size):
            chunk = indices[start : start + oreo.config.micro_batch_size]
            batch = TrajectoryBatch([oreo._tokenized(i) for i in chunk], oreo.pad_token_id)
            terms = oreo.objective(batch, oreo._reference_logprobs(chunk, batch))
            values += terms["value_mean"].tolist()
            ratios += terms["log_ratio"].tolist()
            rewards += batch.rewards.tolist()
    won = [i for i, r in enumerate(rewards) if r > 0]
    lost = [i for i, r in enumerate(rewards) if r <= 0]

    def mean(xs: list[float], rows: list[int]) -> float:
        return sum(xs[i] for i in rows) / len(rows) if rows else float("nan")

    def pair(w: int, o: int) -> float:
        return float(values[w] > values[o]) + 0.5 * float(values[w] == values[o])

    questions = [oreo.pool[i].question for i in indices]
    pairs = [pair(w, o) for w in won for o in lost]
    within = [pair(w, o) for w in won for o in lost if questions[w] == questions[o]]
    return {
        "trajectories": len(indices),
        "won": len(won),
        "value_won": mean(values, won),
        "value_lost": mean(values, lost),
        "value_auc": sum(pairs) / len(pairs) if pairs else float("nan"),
        "value_auc_within_problem": sum(within) / len(within) if within else float("nan"),
        "within_problem_pairs": len(within),
        "log_ratio_won": mean(ratios, won),
        "log_ratio_lost": mean(ratios, lost),
    }


def train_seed(config: OREOArithmeticConfig, seed: int, out: Path) -> tuple[dict[str, Any], Any]:
    """Part 1 for one seed; returns its rows and the trained OREO agent (for part 2)."""
    from agents.rl.grpo import GRPO, GRPOConfig
    from agents.rl.oreo import OREO, OREOConfig
    from agents.rl.sft import SFT, SFTConfig, SFTExample

    env_kwargs = {"level": config.level}
    samples = config.problems * config.samples_per_problem
    rows: dict[str, Any] = {}
    started = time.time()
    oreo = OREO(
        _engine(config),
        ENV_ID,
        OREOConfig(
            **_common(config, seed, out / f"oreo_s{seed}"),
            temperature=config.temperature,
            beta=config.beta,
            value_learning_rate=config.value_learning_rate,
            value_init=config.value_init,
            batch_size=config.batch_size,
            data_path=str(out / f"trajectories_s{seed}.jsonl"),
        ),
        env_kwargs=env_kwargs,
    )
    trajectories = oreo.collect_trajectories(config.problems, config.samples_per_problem)
    sample_accuracy = sum(t.reward for t in trajectories) / len(trajectories)
    print(
        f"seed {seed}: {len(trajectories)} trajectories, {sample_accuracy:.3f} correct, {time.time() - started:.0f} s"
    )
    rows["samples"] = {"trajectories": len(trajectories), "correct_share": sample_accuracy}
    if "oreo" in config.methods:
        started = time.time()
        oreo.config.temperature = 1.0  # log-probs of the policy itself (sampling used ``config.temperature``)
        oreo.learn(config.updates, data=trajectories)
        rows["oreo"] = {**_greedy_accuracy(oreo, config), "train_seconds": time.time() - started}
        print(f"seed {seed}: oreo {rows['oreo']}", flush=True)
        if config.calibration_trajectories:
            rows["oreo_value"] = value_diagnostics(oreo, config.calibration_trajectories)
            print(f"seed {seed}: oreo value on training trajectories {rows['oreo_value']}", flush=True)
        if config.save_oreo:
            oreo.save(out / f"oreo_s{seed}" / "agent")
    if "rft" in config.methods:
        started = time.time()
        correct = [SFTExample(t.question, t.steps, t.instruction) for t in trajectories if t.reward > 0]
        rft = SFT(
            _engine(config),
            ENV_ID,
            SFTConfig(**_common(config, seed, out / f"rft_s{seed}"), batch_size=config.batch_size),
            env_kwargs=env_kwargs,
        )
        if correct:
            rft.learn(config.updates, examples=correct)
        rows["rft"] = {
            **_greedy_accuracy(rft, config),
            "examples": len(correct),
            "train_seconds": time.time() - started,
        }
        print(f"seed {seed}: rft {rows['rft']}", flush=True)
        del rft
    if "grpo" in config.methods:
        started = time.time()
        per_update = config.grpo_prompts * config.samples_per_problem
        grpo = GRPO(
            _engine(config),
            ENV_ID,
            GRPOConfig(
                **_common(config, seed, out / f"grpo_s{seed}"),
                prompts_per_update=config.grpo_prompts,
                group_size=config.samples_per_problem,
                temperature=config.temperature,
                kl_coef=0.0,
            ),
            env_kwargs=env_kwargs,
        )
        grpo.learn(max(1, samples // per_update))
        grpo.config.temperature = 1.0
        rows["grpo"] = {
            **_greedy_accuracy(grpo, config),
            "updates": max(1, samples // per_update),
            "train_seconds": time.time() - started,
        }
        print(f"seed {seed}: grpo {rows['grpo']}", flush=True)
        del grpo
    return rows, oreo


def search_comparison(config: OREOArithmeticConfig, oreo: Any) -> dict[str, Any]:
    """Part 2: greedy, majority vote and value-guided beam search with OREO's policy and value model."""
    import gymnasium as gym

    from agents.search.best_of_n import BestOfN, BestOfNConfig
    from agents.search.greedy import Greedy
    from experiments.train import held_out_seeds

    seeds = held_out_seeds(config.search_problems)
    problems = [None] * len(seeds)
    env = gym.make(ENV_ID, level=config.level)
    rows: dict[str, Any] = {}

    def run(name: str, agent: Any, scorer: Any = None) -> None:
        counters = ("tokens_read", "new_tokens", "ratio_tokens_read")
        before = {c: getattr(scorer, c, 0) for c in counters}
        started = time.time()
        results = agent.solve_many(env, problems, seeds=seeds)
        spent = {c: getattr(scorer, c, 0) - before[c] for c in counters}
        generated = sum(r["generated_tokens"] for r in results)
        count = len(results)
        rows[name] = {
            "accuracy": sum(r["correct"] for r in results) / count,
            "correct": sum(r["correct"] for r in results),
            "problems": count,
            "generated_tokens_per_problem": generated / count,
            # everything the scorer's models read: the value model, plus the policy's and the reference's
            # passes over finished candidates' last steps (``ratio_tokens_per_problem``)
            "value_tokens_per_problem": spent["tokens_read"] / count,
            "value_new_tokens_per_problem": spent["new_tokens"] / count,
            "ratio_tokens_per_problem": spent["ratio_tokens_read"] / count,
            "compute_per_problem": (generated + spent["tokens_read"]) / count,
            "compute_cached_per_problem": (generated + spent["new_tokens"]) / count,
            "seconds": time.time() - started,
        }
        if scorer is not None:
            rows[name].update(value_ranking(results))
        print(f"{name}: {rows[name]}", flush=True)
        if scorer is not None:  # for reading what the value prefers (results.json only)
            rows[name]["per_problem"] = [
                {
                    "answers": r.get("candidate_answers", []),
                    "correct": r.get("candidate_correct", []),
                    "terminated": r.get("candidate_terminated", []),
                    "values": [scores[-1] if scores else None for scores in r.get("candidate_scores", [])],
                    "chosen_correct": bool(r["correct"]),
                }
                for r in results
            ]

    common = dict(max_new_tokens=config.max_new_tokens, seed=0, temperature=config.search_temperature)
    with oreo.autocast():
        if "greedy" in config.search_runs:
            run("greedy", Greedy(oreo.engine, env, max_new_tokens=config.max_new_tokens))
        for budget in config.budgets:
            if "majority" in config.search_runs:
                run(
                    f"majority@{budget}",
                    BestOfN(oreo.engine, env, BestOfNConfig(n=budget, selection="majority_vote", **common)),
                )
            if "value_beam" not in config.search_runs:
                continue
            beams, samples = BEAMS[budget]
            for terminal in config.terminals:
                search = oreo.search_agent(
                    beam_width=beams, num_expansions=samples, terminal=terminal, **common
                )
                name = "value_beam" if terminal == "bellman" else f"value_beam_{terminal}"
                run(f"{name}@{budget}", search, search.prm)
        if "value_best_of_n" in config.search_runs:
            budget = max(config.budgets)
            for terminal in config.terminals:
                scorer = oreo.value_scorer(terminal=terminal)
                best = BestOfN(
                    oreo.engine, env, BestOfNConfig(n=budget, selection="prm_last_max", **common), prm=scorer
                )
                suffix = "" if terminal == "bellman" else f"_{terminal}"
                run(f"value_best_of_n{suffix}@{budget}", best, scorer)
    env.close()
    print_search_table(rows)
    return rows


def value_ranking(results: list[dict[str, Any]]) -> dict[str, float]:
    """How the value ranks a problem's finished candidates (those that stated an answer): the share of (right,
    wrong) pairs of one problem where the right one has the higher final value (ties 1/2), over all problems,
    and the number of such pairs. Measured on held-out problems, never used to choose anything."""
    wins, pairs = 0.0, 0
    for result in results:
        scored = [
            (scores[-1] if scores else 0.0, bool(right))
            for scores, right, done in zip(
                result.get("candidate_scores", []),
                result.get("candidate_correct", []),
                result.get("candidate_terminated", []),
            )
            if done
        ]
        for right_score, right in scored:
            if not right:
                continue
            for wrong_score, other in scored:
                if other:
                    continue
                pairs += 1
                wins += 1.0 if right_score > wrong_score else 0.5 if right_score == wrong_score else 0.0
    return {"value_auc": wins / pairs if pairs else float("nan"), "value_pairs": pairs}


def print_search_table(rows: dict[str, Any]) -> None:
    """One line per search run: accuracy (correct / problems) and compute per problem (full / prefix-cached)."""
    print(
        f"{'run':<22}{'accuracy':>16}{'generated':>11}{'scorer':>9}{'of it pi/ref':>14}{'compute':>9}{'cached':>8}"
    )
    for name, row in rows.items():
        accuracy = f"{row['accuracy']:.3f} ({row['correct']}/{row['problems']})"
        print(
            f"{name:<26}{accuracy:>16}{row['generated_tokens_per_problem']:>11.1f}"
            f"{row['value_tokens_per_problem']:>9.1f}{row['ratio_tokens_per_problem']:>14.1f}"
            f"{row['compute_per_problem']:>9.1f}{row['compute_cached_per_problem']:>8.1f}"
            + (
                f"  value AUC {row['value_auc']:.3f} ({row['value_pairs']} pairs)"
                if "value_auc" in row
                else ""
            )
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import tyro

    import reasoning_gym  # noqa: F401

    config = tyro.cli(OREOArithmeticConfig, args=argv, description=__doc__.split("\n\n")[0])
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"config": asdict(config), "seeds": {}}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(report, indent=2, default=str))

    if config.search_from:
        from agents.rl.oreo import OREO

        oreo = OREO.load(config.search_from, _engine(config), ENV_ID, env_kwargs={"level": config.level})
        report["search_from"] = config.search_from
        if config.calibration_data:
            oreo.add_data(config.calibration_data)
            report["oreo_value"] = value_diagnostics(oreo, config.calibration_trajectories)
            print(f"oreo value on training trajectories {report['oreo_value']}", flush=True)
            save()
        if not config.search_problems:
            return report
        report["search"] = search_comparison(config, oreo)
        save()
        print(
            json.dumps(
                {
                    k: {f: v for f, v in row.items() if f != "per_problem"}
                    for k, row in report["search"].items()
                },
                indent=2,
            )
        )
        return report
    if "sft" in config.methods:
        from agents.rl.sft import SFT, SFTConfig

        warm = SFT(
            _engine(config), ENV_ID, SFTConfig(**_common(config, 0, None)), env_kwargs={"level": config.level}
        )
        report["sft"] = _greedy_accuracy(warm, config)
        print(f"sft warm-start: {report['sft']}", flush=True)
        del warm
        save()
    for seed in config.seeds:
        rows, oreo = train_seed(config, seed, out)
        report["seeds"][str(seed)] = rows
        save()
        if seed == config.seeds[0] and config.search_problems:
            report["search"] = search_comparison(config, oreo)
            save()
        del oreo
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
