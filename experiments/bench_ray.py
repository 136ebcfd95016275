"""RayEngine against the in-process engine: search and GRPO rollouts, tokens/s and problems/s, in one run.

The same beam-search problems and the same GRPO rollout problems go through the in-process HFEngine (``--threads``
threads in this process) and through RayEngines of 1 and 2 actors (``--threads`` each); targets: at most 10 %
overhead for 1 actor, at least 1.8x with 2. It also times the weight broadcast (``update_weights``: one
``ray.put`` + every actor loads) and one GRPO update on the largest RayEngine (rollout, optimisation, broadcast),
the inputs of the scaling model in docs/distributed.md. A table on stdout, JSON in ``--out`` (with the CPU
capability and dtypes), and a second table of where each workload's wall time went: in remote calls (RayEngine),
the driver's own CPU, each actor's busy and CPU seconds, and the whole machine's CPU (on a shared machine the
actors compete with the driver, Ray's own processes and everything else).

    python -m experiments.bench_ray                                   # local Ray instance, 1 and 2 actors
    python -m experiments.bench_ray --ray 127.0.0.1:6379 --actors 2   # an existing cluster, by address
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tyro

from agents.engines.prompting import TokenizerPrompts

__all__ = ["BenchRayConfig", "main", "project_scaling"]


@dataclass
class BenchRayConfig:
    """Throughput of search and GRPO rollouts: in-process engine vs RayEngine with 1 and 2 actors."""

    model: str = "smollm2-135m-instruct"
    """Policy: name, HF id or local folder (loaded once here; the actors get it through the object store)."""
    dtype: str = "auto"
    """Model dtype: auto (bf16 where the CPU runs it natively, else fp32), bfloat16, float32."""
    env: str = "openr/Arithmetic-v0"
    """Registered env id."""
    env_kwargs: str = '{"level": 1}'
    """JSON keyword arguments for gym.make."""
    threads: int = 1
    """Torch threads of the in-process engine and of each actor."""
    actors: tuple[int, ...] = (1, 2)
    """RayEngine sizes to measure."""
    in_process: bool = True
    """Also measure the in-process HFEngine (the baseline of the ratios)."""
    ray: str | None = None
    """Ray cluster address (e.g. 127.0.0.1:6379 or auto); default: start a local instance with
    max(actors) x threads CPUs, bound to 127.0.0.1."""
    search_problems: int = 4
    """Problems for beam search (all searched together)."""
    beam_width: int = 2
    """Beam search: trajectories kept per problem."""
    num_expansions: int = 2
    """Beam search: steps sampled per beam."""
    rollout_problems: int = 4
    """GRPO rollouts: problems per update."""
    group_size: int = 4
    """GRPO rollouts: samples per problem."""
    max_steps: int = 2
    """Reasoning steps per episode."""
    max_new_tokens: int = 32
    """Tokens per step."""
    temperature: float = 0.7
    """Sampling temperature."""
    repeats: int = 1
    """Timed runs of each workload per engine; the median run is reported (all runs' seconds are in the JSON)."""
    broadcasts: int = 3
    """Weight broadcasts timed per RayEngine (the median is reported)."""
    grpo_update: bool = True
    """Time one full GRPO update (rollout + optimisation + broadcast) on the largest RayEngine."""
    split_check: int = 0
    """If > 0: also run the rollouts in this process through a ``SplitEngine`` of that many parts (each call routed
    and seeded as a RayEngine of that many actors would, each part on its own engine, one after the other): what
    splitting costs without Ray or contention, and the speed-up ceiling (the sum over calls of the slowest part)."""
    seed: int = 0
    """Problems and sampling."""
    out: str = "runs/bench_ray/results.json"
    """Where the JSON goes."""


def _search(engine: Any, config: BenchRayConfig, env: Any, problems: list[dict]) -> dict[str, float]:
    import agents
    from agents.search.beam_search import BeamSearchConfig

    agent = agents.BeamSearch(
        engine,
        env,
        BeamSearchConfig(
            beam_width=config.beam_width,
            num_expansions=config.num_expansions,
            max_steps=config.max_steps,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            batch_problems=len(problems),
            seed=config.seed,
        ),
    )
    return _timed(engine, lambda: agent.solve_many(env, problems), len(problems))


def _grpo(engine: Any, config: BenchRayConfig) -> Any:
    from agents.rl.grpo import GRPO, GRPOConfig

    grpo_config = GRPOConfig(
        prompts_per_update=config.rollout_problems,
        group_size=config.group_size,
        max_steps=config.max_steps,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        autocast="off",
        verbose=0,
        seed=config.seed,
    )
    return GRPO(engine, config.env, grpo_config, env_kwargs=json.loads(config.env_kwargs))


def _rollouts(engine: Any, config: BenchRayConfig) -> dict[str, float]:
    agent = _grpo(engine, config)
    return _timed(
        engine, lambda: agent.collect(config.rollout_problems, config.group_size), config.rollout_problems
    )


def machine_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all cores, every process), from /proc/stat; None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _actor_counters(engine: Any) -> list[dict[str, float]] | None:
    status = getattr(engine, "actor_status", None)
    if not callable(status):
        return None
    return [{"busy": s["busy_seconds"], "cpu": s["cpu_seconds"]} if s else {} for s in status()]


def _timed(engine: Any, work: Any, problems: int) -> dict[str, Any]:
    """Throughput of ``work`` and where its time went: the driver's CPU, the time spent in remote calls, each
    actor's busy and CPU seconds, and the machine's CPU (the actors, the driver, Ray's own processes and
    anything else running)."""
    reset = getattr(engine, "reset_prefix_cache", None)
    if callable(reset):
        reset()
    before = engine.stats.snapshot()
    actors_before = _actor_counters(engine)
    remote_before = getattr(engine, "remote_seconds", None)
    machine_before = machine_cpu_seconds()
    driver_before = time.process_time()
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    driver = time.process_time() - driver_before
    machine_after = machine_cpu_seconds()
    tokens = engine.stats.generated_tokens - before["generated_tokens"]
    out: dict[str, Any] = {
        "seconds": seconds,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "problems_per_s": problems / seconds,
        "engine_calls": engine.stats.calls - before["calls"],
        "driver_cpu_seconds": driver,
        "machine_cpu_seconds": None if machine_before is None else machine_after - machine_before,
    }
    if remote_before is not None:
        out["remote_seconds"] = engine.remote_seconds - remote_before
    if actors_before is not None:
        after = _actor_counters(engine) or []
        for key in ("busy", "cpu"):
            out[f"actor_{key}_seconds"] = [
                a[key] - b[key] if a and b else None for a, b in zip(after, actors_before)
            ]
    return out


def _median_run(runs: list[dict[str, float]]) -> dict[str, Any]:
    """The run of median duration, with every run's seconds (noise on a shared machine shows there)."""
    ordered = sorted(runs, key=lambda run: run["seconds"])
    return {**ordered[len(ordered) // 2], "all_seconds": [run["seconds"] for run in runs]}


def _measure(
    name: str, engine: Any, config: BenchRayConfig, env: Any, problems: list[dict]
) -> dict[str, Any]:
    engine.generate(["Warm-up: 1 + 1 ="], max_new_tokens=4, temperature=0)  # lazy initialisation, not timed
    row: dict[str, Any] = {"engine": name}
    row["search"] = _median_run([_search(engine, config, env, problems) for _ in range(config.repeats)])
    row["rollouts"] = _median_run([_rollouts(engine, config) for _ in range(config.repeats)])
    print(
        f"{name:>12}: search {row['search']['tokens_per_s']:.1f} tok/s, "
        f"rollouts {row['rollouts']['tokens_per_s']:.1f} tok/s",
        flush=True,
    )
    return row


class SplitEngine(TokenizerPrompts):
    """Each ``generate`` call split as a RayEngine of ``num_actors`` actors splits it (its ``PrefixRouter``, its
    per-piece seeds, ``EngineActor.generate``), each actor's part run by an in-process ``EngineActor`` (its own
    HFEngine and prefix cache) one after the other, and timed: the parts' seconds add up to the work the actors
    share, each call's slowest part is what it would take on idle cores. Same samples as the RayEngine (tested).
    """

    def __init__(self, model: Any, tokenizer: Any, num_actors: int, threads: int = 1, seed: int = 0) -> None:
        import random

        import torch

        from agents.engines.base import GenerationStats
        from agents.engines.prompting import DEFAULT_STEP_DELIMITER
        from agents.engines.ray_engine import EngineActor
        from agents.engines.routing import PrefixRouter

        with torch.random.fork_rng():  # EngineActor seeds its process's RNGs: keep this process's as they are
            state = random.getstate()
            self.actors = [
                EngineActor(f"part-{i}", "hf", model, tokenizer, threads=threads, seed=seed + i)
                for i in range(num_actors)
            ]
            random.setstate(state)
        self._tokenizer = tokenizer
        self.model = model
        self.step_delimiter = DEFAULT_STEP_DELIMITER
        self.router = PrefixRouter(num_actors)
        self.stats = GenerationStats()
        self._rng = random.Random(seed)
        self.part_seconds: list[list[float]] = []
        """Per call, each actor's seconds (0 for an actor that got nothing)."""

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def generate(
        self, prompts: Any, *, n: int = 1, seed: int | None = None, **options: Any
    ) -> list[list[Any]]:
        from agents.engines.base import check_generate_args
        from agents.engines.ray_engine import _mixed_seed

        options = {"max_new_tokens": 256, "temperature": 1.0, "top_p": 1.0, "stop": None, **options}
        options["stop"] = check_generate_args(
            prompts, n, options["max_new_tokens"], options["temperature"], options["top_p"], options["stop"]
        )
        texts = [self.render(p) for p in prompts]
        encoded = [self.encode(text) for text in texts]
        base_seed = seed if seed is not None else self._rng.randrange(2**31)
        live = list(range(len(self.actors)))
        pieces = self.router.route(encoded, [n] * len(texts), live, [0.0] * len(live))
        by_actor: dict[int, list[Any]] = {}
        for piece in pieces:
            by_actor.setdefault(piece.actor, []).append(piece)
        parts: list[list[tuple[int, list[Any]]]] = [[] for _ in texts]
        seconds = [0.0] * len(live)
        for actor, own in by_actor.items():
            started = time.perf_counter()
            outputs = self.actors[actor].generate(
                None,
                [(texts[p.prompt], p.samples) for p in own],
                options,
                _mixed_seed(base_seed, own[0].prompt, own[0].first),
            )
            seconds[actor] = time.perf_counter() - started
            for piece, completions in zip(own, outputs):
                parts[piece.prompt].append((piece.first, completions))
                for completion in completions:
                    self.router.observe(actor, encoded[piece.prompt] + list(completion.token_ids))
        self.part_seconds.append(seconds)
        groups = [[c for _, cs in sorted(own, key=lambda x: x[0]) for c in cs] for own in parts]
        self.stats.record(groups)
        return groups


def _split_check(
    model: Any, tokenizer: Any, config: BenchRayConfig, in_process: dict | None
) -> dict[str, Any]:
    engine = SplitEngine(model, tokenizer, config.split_check, config.threads, config.seed)
    run = _rollouts(engine, config)
    calls = engine.part_seconds
    out = {
        "parts": config.split_check,
        "rollouts": run,
        "part_seconds": calls,
        "sum_of_parts_seconds": sum(map(sum, calls)),
        "slowest_parts_seconds": sum(map(max, calls)),
    }
    if in_process:
        out["ceiling_vs_in_process"] = in_process["rollouts"]["seconds"] / out["slowest_parts_seconds"]
    return out


def _broadcast(engine: Any, model: Any, times: int) -> float:
    seconds = []
    for _ in range(times):
        engine.update_weights(model)
        seconds.append(engine.last_broadcast_seconds)
    return statistics.median(seconds)


def _grpo_update(engine: Any, config: BenchRayConfig) -> dict[str, float]:
    agent = _grpo(engine, config)
    agent.model.train()
    started = time.perf_counter()
    agent.update()
    total = time.perf_counter() - started
    rollout = agent.last_rollout_stats["time/rollout_seconds"]
    broadcast = engine.last_broadcast_seconds or 0.0
    return {
        "total_seconds": total,
        "rollout_seconds": rollout,
        "broadcast_seconds": broadcast,
        "optimise_seconds": total - rollout - broadcast,
    }


SCALES = (8, 64, 512)


def project_scaling(result: dict[str, Any], scales: tuple[int, ...] = SCALES) -> dict[str, Any]:
    """Expected speed-up with N generation actors, from this run's measurements (docs/distributed.md).

    Synchronous RL (generate, then train, then broadcast): an update takes ``G / (N e) + B(N) + U`` with ``G`` the
    rollout time on 1 actor, ``e`` the measured 2-actor efficiency, ``U`` the optimisation time and ``B(N)`` the
    broadcast, extrapolated linearly from the 1- and 2-actor broadcasts (pessimistic: as if the actors loaded one
    after another; ``..._parallel_broadcast`` keeps it at the 1-actor time, as when each actor loads on its own
    node).
    Search has no update: ``N e``. The ceiling of RL is ``(G + U) / U`` once ``G / N`` is small.
    """
    rows = {row["engine"]: row for row in result["rows"]}
    one, two = rows.get("1 actor"), rows.get("2 actors")
    update = result.get("grpo_update")
    if not (one and two and update):
        return {}
    efficiency = {
        key: two[key]["tokens_per_s"] / (2 * one[key]["tokens_per_s"]) for key in ("search", "rollouts")
    }
    rollout_1 = update["rollout_seconds"] * 2 * efficiency["rollouts"]  # the update ran on 2 actors
    optimise = update["optimise_seconds"]
    per_actor = two["broadcast_seconds"] - one["broadcast_seconds"]
    broadcast = [one["broadcast_seconds"] + max(per_actor, 0.0) * (n - 1) for n in (1, *scales)]
    base = rollout_1 + broadcast[0] + optimise
    out: dict[str, Any] = {
        "inputs": {
            "rollout_seconds_1_actor": rollout_1,
            "optimise_seconds": optimise,
            "broadcast_seconds_1_actor": one["broadcast_seconds"],
            "broadcast_seconds_per_extra_actor": per_actor,
            "efficiency_2_actors": efficiency,
        },
        "rl_ceiling": (rollout_1 + optimise) / optimise if optimise > 0 else None,
    }
    e = efficiency["rollouts"]
    for n, b in zip(scales, broadcast[1:]):
        out[str(n)] = {
            "rl_speedup": base / (rollout_1 / (n * e) + b + optimise),
            "rl_speedup_parallel_broadcast": base / (rollout_1 / (n * e) + broadcast[0] + optimise),
            "search_speedup": n * efficiency["search"],
            "broadcast_seconds": b,
        }
    return out


def _table(rows: list[dict[str, Any]], base: dict[str, Any] | None) -> str:
    lines = [
        "| engine | search tok/s | search problems/s | rollout tok/s | rollout problems/s | search vs in-process "
        "| rollouts vs in-process | broadcast s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratios = []
        for key in ("search", "rollouts"):
            ratios.append(f"{row[key]['tokens_per_s'] / base[key]['tokens_per_s']:.2f}x" if base else "-")
        broadcast = row.get("broadcast_seconds")
        lines.append(
            f"| {row['engine']} | {row['search']['tokens_per_s']:.1f} | {row['search']['problems_per_s']:.3f} | "
            f"{row['rollouts']['tokens_per_s']:.1f} | {row['rollouts']['problems_per_s']:.3f} | {ratios[0]} | "
            f"{ratios[1]} | {'-' if broadcast is None else f'{broadcast:.2f}'} |"
        )
    return "\n".join(lines)


def _time_table(rows: list[dict[str, Any]]) -> str:
    """Where each workload's wall time went (seconds; actor values per actor)."""
    lines = [
        "| engine | workload | wall s | in remote calls s | driver CPU s | actors busy s | actors CPU s "
        "| machine CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, list):
            return " / ".join(fmt(v) for v in value)
        return f"{value:.1f}"

    for row in rows:
        for key in ("search", "rollouts"):
            run = row[key]
            lines.append(
                f"| {row['engine']} | {key} | {fmt(run['seconds'])} | {fmt(run.get('remote_seconds'))} | "
                f"{fmt(run['driver_cpu_seconds'])} | {fmt(run.get('actor_busy_seconds'))} | "
                f"{fmt(run.get('actor_cpu_seconds'))} | {fmt(run.get('machine_cpu_seconds'))} |"
            )
    return "\n".join(lines)


def main(config: BenchRayConfig) -> dict[str, Any]:
    import gymnasium as gym
    import torch

    import reasoning_gym  # noqa: F401 - registers the envs
    from agents.engines import HFEngine, RayEngine, load_model
    from agents.engines.hardware import hardware_info
    from agents.engines.ray_engine import connect
    from experiments.benchmark import draw_problems

    torch.set_num_threads(config.threads)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance needs no token
    model, tokenizer = load_model(config.model, dtype=config.dtype)
    env = gym.make(config.env, **json.loads(config.env_kwargs))
    problems = draw_problems(env, config.search_problems, config.seed)
    rows: list[dict[str, Any]] = []
    base = None
    local = HFEngine(model, tokenizer, num_threads=config.threads)
    # Not timed: first-use costs of this process (judger, env, agents' imports) would go to whichever runs first.
    warm = dataclasses.replace(config, rollout_problems=1, group_size=2, max_new_tokens=4)
    _search(local, warm, env, problems[:1])
    _rollouts(local, warm)
    if config.in_process:
        base = _measure("in-process", local, config, env, problems)
        rows.append(base)
    split = _split_check(model, tokenizer, config, base) if config.split_check > 0 else None
    if split:
        print(
            f"rollouts split over {split['parts']} parts in this process: {split['rollouts']['seconds']:.1f} s in "
            f"all, parts {split['sum_of_parts_seconds']:.1f} s, slowest part of each call summed "
            f"{split['slowest_parts_seconds']:.1f} s"
            + (f" (ceiling {split['ceiling_vs_in_process']:.2f}x in-process)" if base else ""),
            flush=True,
        )
    ray = None
    if config.actors:
        ray = connect(
            config.ray, num_cpus=max(config.actors) * config.threads if config.ray is None else None
        )
    update = None
    for count in config.actors:
        with RayEngine(model, tokenizer, num_actors=count, threads_per_actor=config.threads) as engine:
            row = _measure(f"{count} actor{'s' * (count > 1)}", engine, config, env, problems)
            row["broadcast_seconds"] = _broadcast(engine, model, config.broadcasts)
            row["actors"] = [{k: v for k, v in info.items() if k != "name"} for info in engine.actor_info]
            if config.grpo_update and count == max(config.actors):
                update = _grpo_update(engine, config)
            rows.append(row)
    nodes = [node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")] if ray else []
    if ray is not None and config.ray is None:
        ray.shutdown()  # the private local instance started above
    table = _table(rows, base)
    print(table)
    time_table = _time_table(rows)
    print(time_table)
    if update:
        print("GRPO update on the largest RayEngine: " + ", ".join(f"{k} {v:.2f}" for k, v in update.items()))
    result = {
        "config": asdict(config),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "ray_nodes": nodes,
        "rows": rows,
        "grpo_update": update,
        "split_check": split,
        "parameters": sum(p.numel() for p in model.parameters()),
        "hardware": hardware_info(model_dtype=next(model.parameters()).dtype),
        "load_average": os.getloadavg(),
        "table": table,
        "time_table": time_table,
    }
    result["scaling"] = project_scaling(result)
    for n in SCALES:
        if str(n) in result["scaling"]:
            p = result["scaling"][str(n)]
            print(
                f"projected with {n} actors: GRPO update {p['rl_speedup']:.2f}x "
                f"({p['rl_speedup_parallel_broadcast']:.2f}x with a parallel broadcast), search {p['search_speedup']:.1f}x"
            )
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main(tyro.cli(BenchRayConfig, description=__doc__))
