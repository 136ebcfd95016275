"""Best-of-N with a PRM vs majority vote at the same N, on solutions sampled by ``collect_prm_data.py``.

For every problem in ``--samples`` (``samples.jsonl``: each sampled solution with its steps and outcome), the PRM
scores every solution once; then, for each N, ``--trials`` random subsets of N solutions per problem are drawn and
each selection rule picks one answer:

- ``majority``: the most frequent final answer (self-consistency; solutions without an answer abstain);
- ``prm-best-<agg>``: the solution with the highest aggregated PRM score (``min``, ``last``, ``product``, ``mean``);
- ``prm-vote-<agg>``: the answer with the highest sum of aggregated PRM scores (OpenR's PRM-weighted vote);
- ``pass@N`` (oracle: any correct) and ``random`` (one solution at random = mean accuracy) for reference.

The subsets are shared by all rules, so differences come from the rules alone. Prints a Markdown table and writes
``--out`` (JSON).

Example::

    python -m experiments.prm_best_of_n --samples runs/prm/test/samples.jsonl --prm runs/prm/model --n 1 2 4
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import tyro

from rewards.prm.base import Aggregation

__all__ = ["PRMBestOfNConfig", "best_of_n_table", "main", "select_answers"]


def _answer(steps: Sequence[str]) -> str | None:
    from rewards import extract_answer

    answer = extract_answer("\n\n".join(steps))
    return None if answer is None else answer.strip()


def select_answers(candidates: list[dict[str, Any]], aggregations: Sequence[str]) -> dict[str, bool]:
    """Whether each rule picks a correct solution among ``candidates`` (dicts with answer, correct, prm)."""
    from rewards.prm import aggregate_scores

    result = {"pass@N": any(c["correct"] for c in candidates), "random": candidates[0]["correct"]}
    correct_of = {c["answer"]: c["correct"] for c in candidates if c["answer"] is not None}
    votes = Counter(c["answer"] for c in candidates if c["answer"] is not None)
    result["majority"] = bool(votes) and correct_of[votes.most_common(1)[0][0]]
    for agg in aggregations:
        values = [aggregate_scores(c["prm"], agg) for c in candidates]
        best = max(range(len(candidates)), key=lambda i: values[i])
        result[f"prm-best-{agg}"] = candidates[best]["correct"]
        weighted: dict[str, float] = defaultdict(float)
        for c, v in zip(candidates, values):
            if c["answer"] is not None:
                weighted[c["answer"]] += v
        result[f"prm-vote-{agg}"] = bool(weighted) and correct_of[max(weighted, key=weighted.get)]
    return result


def best_of_n_table(
    problems: dict[str, list[dict[str, Any]]],
    ns: Sequence[int],
    aggregations: Sequence[str],
    trials: int,
    seed: int,
) -> dict[int, dict[str, float]]:
    """Accuracy of each rule for each N, averaged over problems and ``trials`` random subsets."""
    rng = random.Random(seed)
    table: dict[int, dict[str, float]] = {}
    for n in ns:
        sums: dict[str, float] = defaultdict(float)
        count = 0
        for candidates in problems.values():
            if len(candidates) < n:
                continue
            for _ in range(trials):
                subset = rng.sample(candidates, n)
                for rule, ok in select_answers(subset, aggregations).items():
                    sums[rule] += float(ok)
                count += 1
        table[n] = {rule: total / max(1, count) for rule, total in sums.items()}
    return table


@dataclass
class PRMBestOfNConfig:
    """Best-of-N with a PRM vs majority vote at the same N, on solutions sampled by collect_prm_data.py."""

    samples: str
    """samples.jsonl written by collect_prm_data.py."""
    prm: str
    """Folder written by train_prm.py (or any load_prm folder)."""
    n: tuple[int, ...] = (1, 2, 4)
    """Subset sizes N."""
    aggregations: tuple[Aggregation, ...] = ("min", "last", "product", "mean")
    """How a solution's step scores become one score."""
    trials: int = 50
    """Random subsets of N solutions per problem."""
    seed: int = 0
    """Seeds the subsets."""
    batch_size: int = 16
    """PRM scoring batch."""
    dtype: str = "auto"
    """PRM weights dtype for scoring: auto (bf16 where the device runs it natively, else fp32), bfloat16, float32."""
    out: str | None = None
    """JSON results (default: next to --samples)."""


def parse_args(argv: Sequence[str] | None = None) -> PRMBestOfNConfig:
    """The config from the command line (``argv`` defaults to ``sys.argv[1:]``)."""
    return tyro.cli(PRMBestOfNConfig, args=argv, description=__doc__)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from agents.engines.hardware import hardware_info
    from agents.engines.models import resolve_dtype
    from rewards.prm import load_prm

    rows = [json.loads(line) for line in open(args.samples) if line.strip()]
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = resolve_dtype(args.dtype, device)
    prm = load_prm(args.prm, dtype=dtype, device=device, batch_size=args.batch_size)
    scores = prm.score([r["question"] for r in rows], [r["steps"] for r in rows])
    problems: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row, prm_scores in zip(rows, scores):
        problems[row["problem_id"]].append(
            {"answer": _answer(row["steps"]), "correct": bool(row["correct"]), "prm": prm_scores}
        )
    table = best_of_n_table(problems, args.n, args.aggregations, args.trials, args.seed)
    step_auc = None
    if all("hard" in r for r in rows):  # held-out Monte-Carlo step labels from collect_prm_data.py
        from experiments.train_prm import binary_auc

        flat = [(s, bool(h)) for r, row in zip(rows, scores) for s, h in zip(row, r["hard"])]
        step_auc = binary_auc([s for s, _ in flat], [h for _, h in flat])
        print(f"held-out step AUC vs Monte-Carlo labels: {step_auc:.4f} ({len(flat)} steps)")
    rules = list(next(iter(table.values())).keys()) if table else []
    print("| rule | " + " | ".join(f"N={n}" for n in table) + " |")
    print("|---|" + "---|" * len(table))
    for rule in rules:
        print(f"| {rule} | " + " | ".join(f"{table[n][rule]:.3f}" for n in table) + " |")
    result = {
        "problems": len(problems),
        "solutions": len(rows),
        "trials": args.trials,
        "prm": args.prm,
        "dtype": str(dtype).removeprefix("torch."),
        "hardware": hardware_info(model_dtype=dtype),
        "step_auc": step_auc,
        "accuracy": table,
    }
    out = args.out or args.samples.replace("samples.jsonl", "best_of_n.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
