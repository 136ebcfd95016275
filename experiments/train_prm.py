"""Fine-tune a causal LM into a step-tag process reward model (Math-Shepherd / OpenR style).

Each training example is a question and its steps laid out in a step format (``--format math-shepherd``: "Step k:
... ки"); the loss is the cross-entropy between the model's two-way distribution over the "good" / "bad" tokens at
each *labelled step tag* and the step's label (soft Monte-Carlo value or hard 0/1): no loss anywhere else. Only the
hidden states at tag positions are projected onto the two candidate rows of the LM head, so memory does not grow
with the vocabulary.

Reads Math-Shepherd, PRM800K and MATH-APS files (format detected per file). Held-out data (``--eval-data``, or a
``--eval-fraction`` of the questions) gives step-level accuracy and ROC-AUC against the binary label (label > 0, the
Math-Shepherd "hard" estimate) before training and after each epoch. Curves go to TensorBoard (``--logdir``:
``train/loss``, ``train/lr``, ``eval/auc``, ``eval/accuracy``, ``eval/loss``, ``time/steps_per_second``); the
trained PRM (model, tokenizer, ``prm_config.json``) goes to ``--out`` and loads with ``rewards.prm.load_prm``.

Example (the run in docs/rewards.md)::

    python -m experiments.train_prm --data runs/prm/train/math_shepherd.jsonl --labels hard \\
        --eval-data runs/prm/test/math_shepherd.jsonl --epochs 2 --out runs/prm/model --logdir runs/prm/tb
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import tyro

from agents.engines.hardware import AutocastSetting, hardware_info
from agents.engines.hardware import autocast_dtype as hardware_autocast_dtype

__all__ = [
    "PRMTrainConfig",
    "binary_auc",
    "evaluate",
    "main",
    "mixed_questions",
    "pairwise_loss",
    "train",
    "within_question_pairs",
]


@dataclass
class PRMTrainConfig:
    """Fine-tune a causal LM into a step-tag process reward model."""

    data: list[str] = field(default_factory=list)
    """Training files (Math-Shepherd, PRM800K or MATH-APS JSONL)."""
    eval_data: list[str] = field(default_factory=list)
    """Held-out files; when empty, ``eval_fraction`` of the training questions are held out."""
    eval_fraction: float = 0.2
    """Fraction of the training questions held out when ``eval_data`` is empty."""
    data_format: str = "auto"
    """File format: ``auto`` (detected per file), or one ``rewards.prm.data.read_examples`` knows."""
    model: str = "smollm2-135m-instruct"
    """Starting model (name, HF id or local folder)."""
    format: str = "math-shepherd"
    """Step layout: ``math-shepherd`` or ``math-psa``."""
    labels: Literal["soft", "hard"] = "soft"
    """``soft`` (train on the label value) or ``hard`` (label > 0 -> 1)."""
    epochs: int = 2
    """Passes over the training examples."""
    lr: float = 2e-5
    """AdamW peak learning rate (linear warm-up, then linear decay)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.1
    """Fraction of the optimizer steps spent warming up."""
    batch_size: int = 8
    """Examples per optimizer step."""
    max_length: int = 512
    """Tokens kept per example (longer ones are cut; cut-off tags are not trained on)."""
    autocast: AutocastSetting = "auto"
    """Mixed precision, as the RL trainers do: ``auto`` = bf16 autocast where the device runs bf16 natively
    (``agents.engines.hardware``; on an AVX2 CPU it would be ~30x slower, so fp32 there), ``bf16``, ``off``;
    weights and optimizer stay fp32."""
    trainable_layers: int = 0
    """Train only the last k transformer layers and the final norm (0: the whole model). The candidate rows of the
    LM head stay as they are; backward then stops k layers down, which is what makes CPU runs fast."""
    pairwise_weight: float = 0.0
    """Weight of a within-question pairwise term (0: off): for every (right, wrong) pair of solutions of one question
    in a batch, ``-log sigmoid(z_right - z_wrong)`` on their last step tags' log-odds of "good" (the Bradley-Terry
    loss reward models are trained with, Ouyang et al. 2022 eq. 1, with outcomes as the preference). Batches then
    hold whole questions."""
    max_train_examples: int = 0
    """Cap on training examples (0: all)."""
    train_questions: Literal["all", "mixed"] = "all"
    """Train on every question, or only on ``mixed`` ones: questions whose solutions disagree on their outcome
    (last label). Those carry the within-question contrast that re-ranking needs; on a unanimous question the labels
    mostly say how hard the question is."""
    eval_at: Literal["epochs", "end", "none"] = "epochs"
    """When to evaluate on the held-out data: ``epochs`` (before training and after each epoch), ``end`` or ``none``."""
    logdir: str = "runs/prm/tb"
    """TensorBoard folder."""
    out: str = "runs/prm/model"
    """Folder of the trained PRM (model, tokenizer, ``prm_config.json``, ``metrics.json``)."""
    seed: int = 0
    """Seeds the held-out split, batch order and torch."""


def binary_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """ROC-AUC by the rank-sum (Mann-Whitney U) formula, ties counted half; NaN when one class is missing."""
    pairs = sorted(zip(scores, labels), key=lambda p: p[0])
    positives = sum(1 for _, y in pairs if y)
    negatives = len(pairs) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        average_rank = (i + 1 + j) / 2
        rank_sum += average_rank * sum(1 for _, y in pairs[i:j] if y)
        i = j
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def _load_examples(paths: Sequence[str], data_format: str) -> list[Any]:
    from rewards.prm.data import read_examples

    examples = []
    for path in paths:
        examples += [ex for ex in read_examples(path, data_format) if any(v is not None for v in ex.labels)]
    return examples


def _split(examples: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Hold out whole questions, so no question is both trained on and evaluated."""
    questions = sorted({ex.question for ex in examples})
    random.Random(seed).shuffle(questions)
    held = set(questions[: max(1, int(round(len(questions) * fraction)))])
    return [ex for ex in examples if ex.question not in held], [ex for ex in examples if ex.question in held]


def _outcome(example: Any) -> bool | None:
    """A solution's outcome: its last step's label > 0 (None when the last step is unlabelled)."""
    last = example.labels[-1] if example.labels else None
    return None if last is None else last > 0


def mixed_questions(examples: Sequence[Any]) -> set[str]:
    """Questions with at least one right and one wrong solution among ``examples``."""
    outcomes: dict[str, set[bool]] = {}
    for ex in examples:
        if _outcome(ex) is not None:
            outcomes.setdefault(ex.question, set()).add(bool(_outcome(ex)))
    return {q for q, seen in outcomes.items() if len(seen) == 2}


def within_question_pairs(
    examples: Sequence[Any], scores: Sequence[Sequence[float]], aggregation: str = "min"
) -> tuple[float, int]:
    """Share of (right, wrong) solution pairs of the same question whose aggregated scores are in the right order
    (ties half), and the number of pairs: how well the PRM re-ranks one question's candidates."""
    from rewards.prm import aggregate_scores

    by_question: dict[str, list[tuple[float, bool]]] = {}
    for ex, row in zip(examples, scores):
        if _outcome(ex) is not None and row:
            by_question.setdefault(ex.question, []).append((aggregate_scores(row, aggregation), _outcome(ex)))
    ordered, pairs = 0.0, 0
    for candidates in by_question.values():
        for right in (v for v, ok in candidates if ok):
            for wrong in (v for v, ok in candidates if not ok):
                pairs += 1
                ordered += 1.0 if right > wrong else 0.5 if right == wrong else 0.0
    return (ordered / pairs if pairs else float("nan")), pairs


def evaluate(prm: Any, examples: Sequence[Any]) -> dict[str, float]:
    """Step-level metrics of a PRM on labelled examples: AUC and accuracy vs (label > 0), BCE vs the label; and the
    within-question pair accuracy of its min-aggregated solution scores (what best-of-N re-ranking needs)."""
    scores = prm.score([ex.question for ex in examples], [ex.steps for ex in examples]) if examples else []
    flat_scores, flat_labels, losses = [], [], []
    for ex, row in zip(examples, scores):
        for score, label in zip(row, ex.labels):
            if label is None:
                continue
            flat_scores.append(score)
            flat_labels.append(label > 0)
            p = min(max(score, 1e-6), 1 - 1e-6)
            losses.append(-(label * math.log(p) + (1 - label) * math.log(1 - p)))
    n = len(flat_scores)
    pair_accuracy, pairs = within_question_pairs(examples, scores)
    return {
        "auc": binary_auc(flat_scores, flat_labels),
        "accuracy": sum((s >= 0.5) == y for s, y in zip(flat_scores, flat_labels)) / max(1, n),
        "loss": sum(losses) / max(1, n),
        "positive_fraction": sum(flat_labels) / max(1, n),
        "steps": float(n),
        "pair_accuracy": pair_accuracy,
        "pairs": float(pairs),
    }


def _batches(encoded: list[Any], batch_size: int, rng: random.Random, by_question: bool = False):
    """Shuffled batches; ``by_question``: questions are shuffled and their solutions kept together (so a batch
    holds the pairs the pairwise term compares)."""
    order = list(range(len(encoded)))
    rng.shuffle(order)
    if by_question:
        groups: dict[str, list[int]] = {}
        for i in order:
            groups.setdefault(encoded[i][3], []).append(i)
        order = [i for group in groups.values() for i in group]
    for start in range(0, len(order), batch_size):
        yield [encoded[i] for i in order[start : start + batch_size]]


def pairwise_loss(last_log_odds: Any, questions: Sequence[str], outcomes: Sequence[bool | None]) -> Any:
    """Mean over the (right, wrong) solution pairs of one question of ``-log sigmoid(z_right - z_wrong)``
    (Bradley-Terry; ``z``: a solution's last-tag log-odds of "good"); 0 when the batch has no such pair."""
    import torch

    right, wrong = [], []
    for i, (qi, oi) in enumerate(zip(questions, outcomes)):
        for j, (qj, oj) in enumerate(zip(questions, outcomes)):
            if qi == qj and oi is True and oj is False:
                right.append(i)
                wrong.append(j)
    if not right:
        return last_log_odds.sum() * 0.0
    margin = last_log_odds[torch.tensor(right)] - last_log_odds[torch.tensor(wrong)]
    return -torch.nn.functional.logsigmoid(margin).mean()


def _select_trainable(model: Any, last_layers: int) -> list[Any]:
    """All parameters, or only those of the last ``last_layers`` decoder layers and the final norm."""
    if last_layers <= 0:
        return [p for p in model.parameters() if p.requires_grad]
    base = getattr(model, model.base_model_prefix)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError("trainable_layers needs a decoder with a .layers list (Llama, Qwen, Mistral, ...)")
    for p in model.parameters():
        p.requires_grad_(False)
    modules = list(layers[-last_layers:]) + ([base.norm] if hasattr(base, "norm") else [])
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def train(
    config: PRMTrainConfig, model: Any = None, tokenizer: Any = None, progress: bool = True
) -> dict[str, Any]:
    """Train and save the PRM; returns the metrics (also written to ``<out>/metrics.json``)."""
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    from rewards.prm import PRM_CONFIG_FILE, StepTagPRM, get_format
    from rewards.prm.formats import encode_steps, token_id
    from rewards.prm.step_tag import candidate_logits

    start_time = time.time()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    if model is None:
        from agents.engines import load_model

        model, tokenizer = load_model(config.model, dtype="float32")
    fmt = get_format(config.format)
    train_examples = _load_examples(config.data, config.data_format)
    if config.eval_data:
        eval_examples = _load_examples(config.eval_data, config.data_format)
    else:
        train_examples, eval_examples = _split(train_examples, config.eval_fraction, config.seed)
    if config.train_questions == "mixed":
        keep = mixed_questions(train_examples)
        if keep:
            train_examples = [ex for ex in train_examples if ex.question in keep]
        else:  # e.g. a policy that is always right or always wrong: nothing to contrast, so no filter
            warnings.warn(
                "no training question has both right and wrong solutions: training on all of them",
                stacklevel=2,
            )
    if config.max_train_examples:
        train_examples = train_examples[: config.max_train_examples]
    if not train_examples:
        raise ValueError("no labelled training examples")

    candidates = (token_id(tokenizer, fmt.good_token), token_id(tokenizer, fmt.bad_token))
    encoded = []
    for ex in train_examples:
        ids, positions = encode_steps(tokenizer, fmt, ex.question, ex.steps, config.max_length)
        kept = [(p, lab) for p, lab in zip(positions, ex.labels) if p >= 0 and lab is not None]
        if kept:
            targets = [float(lab) if config.labels == "soft" else float(lab > 0) for _, lab in kept]
            whole = len(kept) == len(
                ex.labels
            )  # the final step's tag survived truncation: it carries the outcome
            encoded.append((ids, [p for p, _ in kept], targets, ex.question, _outcome(ex) if whole else None))
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prm = StepTagPRM(model, tokenizer, fmt, batch_size=config.batch_size * 2, max_length=config.max_length)
    trainable = _select_trainable(model, config.trainable_layers)
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * math.ceil(len(encoded) / config.batch_size)
    warmup = max(1, int(config.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (total_steps - s) / max(1, total_steps - warmup)),
    )
    writer = SummaryWriter(config.logdir)
    history: list[dict[str, Any]] = []

    def log_eval(step: int, epoch: int) -> dict[str, float]:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            metrics = evaluate(prm, eval_examples)
        for key in ("auc", "accuracy", "loss", "pair_accuracy"):
            if not math.isnan(metrics[key]):
                writer.add_scalar(f"eval/{key}", metrics[key], step)
        history.append({"step": step, "epoch": epoch, **metrics})
        print(f"[eval] step {step} epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return metrics

    autocast_dtype = hardware_autocast_dtype(config.autocast, device)
    before = log_eval(0, 0) if config.eval_at == "epochs" else {}
    rng = random.Random(config.seed)
    step = 0
    bar = tqdm(total=total_steps, desc="train PRM", disable=not progress)
    for epoch in range(1, config.epochs + 1):
        model.train()
        for batch in _batches(encoded, config.batch_size, rng, by_question=config.pairwise_weight > 0):
            tick = time.time()
            width = max(len(e[0]) for e in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            rows, cols, targets, last_tags = [], [], [], []
            for r, (ids, positions, labels, _, _) in enumerate(batch):
                input_ids[r, : len(ids)] = torch.tensor(ids)
                attention_mask[r, : len(ids)] = 1
                rows += [r] * len(positions)
                cols += positions
                targets += labels
                last_tags.append(len(rows) - 1)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = candidate_logits(
                    model,
                    input_ids.to(device),
                    attention_mask.to(device),
                    torch.tensor(rows, device=device),
                    torch.tensor(cols, device=device),
                    candidates,
                )
            # Math-Shepherd PRM loss: cross-entropy over {good, bad} at step tags, target (y, 1 - y).
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            target = torch.tensor(targets, device=device)
            loss = -(target * log_probs[:, 0] + (1 - target) * log_probs[:, 1]).mean()
            if (
                config.pairwise_weight > 0
            ):  # + within-question Bradley-Terry on the solutions' last-tag log-odds
                log_odds = (log_probs[:, 0] - log_probs[:, 1])[torch.tensor(last_tags, device=device)]
                loss = loss + config.pairwise_weight * pairwise_loss(
                    log_odds, [e[3] for e in batch], [e[4] for e in batch]
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            writer.add_scalar("time/steps_per_second", 1.0 / max(1e-9, time.time() - tick), step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch)
        if config.eval_at == "epochs" or (config.eval_at == "end" and epoch == config.epochs):
            log_eval(step, epoch)
    bar.close()
    writer.close()
    model.eval()
    after = history[-1] if history else {}
    os.makedirs(config.out, exist_ok=True)
    model.save_pretrained(config.out)
    tokenizer.save_pretrained(config.out)
    with open(os.path.join(config.out, PRM_CONFIG_FILE), "w") as f:
        json.dump(
            {"kind": "step-tag", "format": fmt.name, "labels": config.labels, "trained_on": config.data}, f
        )
    result = {
        "config": asdict(config),
        "train_examples": len(encoded),
        "train_tags": sum(len(e[1]) for e in encoded),
        "eval_examples": len(eval_examples),
        "eval_before": before,
        "eval_after": after,
        "history": history,
        "optimizer_steps": step,
        "seconds": time.time() - start_time,
        "hardware": hardware_info(model_dtype=next(model.parameters()).dtype, autocast=autocast_dtype),
    }
    with open(os.path.join(config.out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def parse_args(argv: Sequence[str] | None = None) -> PRMTrainConfig:
    """The config from the command line: every field of ``PRMTrainConfig`` is a flag (``argv``: sys.argv[1:])."""
    config = tyro.cli(PRMTrainConfig, args=argv, description=__doc__)
    if not config.data:
        raise SystemExit("--data is required: one or more training files")
    return config


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    result = train(parse_args(argv))
    print(json.dumps({"eval_before": result["eval_before"], "eval_after": result["eval_after"]}, indent=2))
    return result


if __name__ == "__main__":
    main()
