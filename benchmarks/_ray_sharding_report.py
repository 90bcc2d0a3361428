"""``ray_sharding.py``'s configurations and report: step times, speedups and efficiencies against
the target and the host reference, bytes per step against the engine's formulas, the Gram check."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from mtlbench.harness.gradients import GradientEngine
from torch import Tensor

FLOAT_BYTES = 4
TARGET_EFFICIENCY = 0.85  # the target for speedup / K
# (gram, transport) pairs timed: both Grams over node-local shared memory (the engine's choice on
# one machine), and the parameter-shard Gram over Ray's object store (its choice across machines)
# "driver/…": the engine's default on the CPU, the driver computes a share of the tasks itself, so
# 2 workers are the driver and 1 actor, and 1 worker is the batched engine with 1 torch thread
# (the tuned single-process baseline); the others: actors only, 1 vs 2 actors
VARIANTS = {  # name: (gram, transport, prefetch, driver_share)
    "driver/parameter/shm": ("parameter", "shared_memory", True, True),
    "parameter/shm": ("parameter", "shared_memory", True, False),
    "driver/gather/shm": ("gather", "shared_memory", True, True),
    "gather/shm": ("gather", "shared_memory", True, False),
    "driver/parameter/store": ("parameter", "object_store", True, True),
    "parameter/store": ("parameter", "object_store", True, False),
    "parameter/shm/no-prefetch": ("parameter", "shared_memory", False, False),
}
DEFAULT_VARIANTS = ["driver/parameter/shm", "parameter/shm"]
Step = Callable[[], None]


@dataclass
class Config:
    """One timed configuration: an engine on its own model copy, and the torch threads the driver
    uses while it runs (1 for the Ray rows: the actors do the work)."""

    label: str
    engine_name: str
    driver_threads: int
    options: dict[str, object] = field(default_factory=dict)
    engine: GradientEngine | None = None
    step: Step | None = None
    first_gram: Tensor | None = None
    times: list[float] = field(default_factory=list)  # seconds per step, one per block


# ---- reporting -------------------------------------------------------------------------------
def block_ratios(numerator: Config, denominator: Config) -> list[float]:
    """Per block t(numerator) / t(denominator), both timed in the same block."""
    return [a / b for a, b in zip(numerator.times, denominator.times, strict=True)]


def median_ratio(numerator: Config, denominator: Config) -> float:
    """Median over blocks of t(numerator) / t(denominator)."""
    return statistics.median(block_ratios(numerator, denominator))


def spread(values: list[float]) -> str:
    """'min-max' of per-block values: a wide range means a noisy machine, not a result."""
    return f"{min(values):.2f}-{max(values):.2f}"


def expected_bytes(
    strategy: str,
    actors: int,
    tasks: int,
    shared: int,
    everything: int,
    batch_numbers: int,
    driver_share: bool,
) -> dict[str, float]:
    """Bytes per step by kind as the formulas of ``cluster/sharded.py`` state them (float32).

    shared: P; everything: P_all (parameters and buffers); batch_numbers: B·(D_in + T). With the
    driver's share, W = K + 1 workers, and the driver's T/W rows and P/W columns stay with it.
    """
    workers = actors + driver_share
    own = 1 / workers if driver_share else 0.0  # the driver's fraction of the rows and columns
    rng_bytes = torch.get_rng_state().numel()  # 5056 bytes of CPU generator state (uint8)
    common = {
        "parameters": actors * everything * FLOAT_BYTES,
        "batch": actors * batch_numbers * FLOAT_BYTES,
        "rng": actors * rng_bytes,
    }
    if "gather" in strategy:
        return {**common, "jacobian_rows": (1 - own) * tasks * shared * FLOAT_BYTES}
    per_strategy = {
        "reshard": (workers - 1) / workers * tasks * shared * FLOAT_BYTES,
        "gram_blocks": actors * tasks**2 * FLOAT_BYTES,
        "weights": actors * tasks * FLOAT_BYTES,
        "direction": (1 - own) * shared * FLOAT_BYTES,
    }
    return {**common, **{k: v for k, v in per_strategy.items() if v}}


def flop_ceiling(
    engine: GradientEngine, tasks: int, batch_size: int, driver_share: bool, workers: int = 2
) -> float:
    """Upper bound on the speedup t(1 worker) / t(2 workers) from FLOP counts alone (free wire,
    free Ray, no overlap of the driver's forward with the actors' work).

    Every worker runs the encoder forward (the driver its own, an actor a replay) and one
    per-task heads pass (forward + backward: the heads here have ``forward_per_task``); only
    the encoder backwards, one per task, are split. Actors only: the driver's forward F comes
    on top of the actors' replays R, in both configurations, so speedup <= (F + R + T·bwd) /
    (F + R + ceil(T/W)·bwd). With the driver's share, 1 worker is the batched engine in one
    process (F + T·bwd) and each of the 2 pays F once: (F + T·bwd) / (F + ceil(T/W)·bwd).
    """
    costs = engine.costs
    forward = costs.flops("encoder_forward", batch_size) + costs.flops("heads_forward", batch_size)
    worker = forward + costs.flops("heads_backward_input", batch_size)
    backward = costs.flops("encoder_backward", batch_size)
    largest_share = -(-tasks // workers)
    fixed = worker if driver_share else forward + worker
    return (fixed + tasks * backward) / (fixed + largest_share * backward)


Labels = list[tuple[str, str, str]]  # (variant, label of its 1-worker config, of its 2-worker one)


def shares(strategy: str) -> bool:
    """Whether the variant's driver computes a share of the tasks (see ``VARIANTS``)."""
    return VARIANTS[strategy][3]


def pair_label(strategy: str) -> str:
    """What 1 and 2 workers are in the variant."""
    if shares(strategy):
        return f"{strategy}: batched 1 thr / driver+1 actor"
    return f"{strategy}: 1 / 2 actors"


def print_step_times(configs: dict[str, Config]) -> None:
    """Median step time (ms) of every configuration, and its range over blocks."""
    print(f"\n  {'configuration':<36}{'step ms':>10}{'blocks min-max':>18}")
    for config in configs.values():
        ms = [1e3 * t for t in config.times]
        print(f"  {config.label:<36}{statistics.median(ms):10.1f}{spread(ms):>18}")


def print_speedups(
    configs: dict[str, Config], actor_labels: Labels, tasks: int, batch_size: int
) -> tuple[dict[str, float], float]:
    """Speedup 1 → 2 workers and efficiency (speedup / 2); returns the efficiency by strategy
    and the host reference's (``HalfProblem``).

    speedup: the median over blocks of t(1) / t(2) timed in the same block (the figure judged
    against the target); "of medians": median t(1) / median t(2), a second estimate whose gap
    to the first shows how much the machine's noise moves the answer.
    """
    header = f"{'speedup':>10}{'efficiency':>12}{'of medians':>12}{'blocks min-max':>18}"
    print(f"\n  {'1 vs 2 workers':<50}{header}")
    pairs = {strategy: (one, two) for strategy, one, two in actor_labels}
    pairs["batched"] = ("batched-1", "batched-2")
    pairs["host"] = ("batched-1", "halves")  # the host's reference, see ``HalfProblem``
    labels = {
        "batched": "batched: 1 / 2 torch threads",
        "host": "host reference: batched 1 thr / two halves",
    }
    efficiencies = {}
    for strategy, (one, two) in pairs.items():
        ratios = block_ratios(configs[one], configs[two])
        speedup = statistics.median(ratios)
        efficiencies[strategy] = speedup / 2
        label = labels.get(strategy) or pair_label(strategy)
        of_medians = statistics.median(configs[one].times) / statistics.median(configs[two].times)
        row = f"{speedup:10.2f}{speedup / 2:12.2f}{of_medians / 2:12.2f}{spread(ratios):>18}"
        print(f"  {label:<50}{row}")
    engine = configs["batched-1"].engine
    for driver_share in sorted({shares(strategy) for strategy, _, _ in actor_labels}):
        ceiling = flop_ceiling(engine, tasks, batch_size, driver_share)
        text = "ceiling from FLOPs, " + ("driver's share" if driver_share else "actors only")
        print(f"  {text:<50}{ceiling:10.2f}{ceiling / 2:12.2f}")
    del efficiencies["batched"]
    return efficiencies, efficiencies.pop("host")


def print_against_local(configs: dict[str, Config], actor_labels: Labels) -> None:
    """Time ratios local / Ray, same block: > 1 where the Ray configuration is faster."""
    print(f"\n  {'time ratio (> 1: the Ray row is faster)':<50}{'median':>8}{'blocks min-max':>18}")
    for strategy, one, two in actor_labels:
        rows = [("batched-2", two, f"batched 2 threads / {strategy} 2 workers")]
        if not shares(strategy):  # its 1-worker row is an actor, not the batched engine
            rows[:0] = [
                ("loop-1", one, f"loop 1 thread / {strategy} 1 actor"),
                ("batched-1", one, f"batched 1 thread / {strategy} 1 actor"),
            ]
        for local, ray_label, text in rows:
            ratios = block_ratios(configs[local], configs[ray_label])
            print(f"  {text:<50}{statistics.median(ratios):8.2f}{spread(ratios):>18}")


def print_verdicts(
    configs: dict[str, Config], actor_labels: Labels, efficiencies: dict[str, float], host: float
) -> None:
    """The answers in words: target met or not, and against the host reference (efficiency
    ``host``); sharding against torch threads."""
    print()
    for strategy, efficiency in efficiencies.items():
        verdict = "meets" if efficiency >= TARGET_EFFICIENCY else "does NOT meet"
        target = TARGET_EFFICIENCY
        print(
            f"  {strategy}: efficiency {efficiency:.3f} {verdict} the target {target} "
            f"({efficiency / host:.2f}x the host reference {host:.3f}: two processes with "
            "half the tasks each and no exchange)"
        )
    batched_2 = configs["batched-2"]
    best = max(actor_labels, key=lambda labels: median_ratio(batched_2, configs[labels[2]]))
    ratio = median_ratio(batched_2, configs[best[2]])
    winner = "sharding wins" if ratio > 1 else "simply giving torch both cores wins"
    print(
        f"  2 workers (best: {best[0]}) run at {ratio:.2f}x the speed of one process with 2 "
        f"torch threads: {winner} here.\n  Every worker runs the batched engine's VJPs on its "
        "tasks: 'batched 1 thread / … 1 actor' is the cost of Ray itself."
    )


def byte_check(measured: float, formula: float) -> str:
    """'ok' if equal; '≈' within 2% (the reshard formula is exact only when K divides T and P)."""
    if abs(measured - formula) <= 1e-9 * max(formula, 1.0):
        return "ok"
    return "≈ (uneven shards)" if abs(measured - formula) <= 0.02 * formula else "DIFFERS"


def print_bytes(
    configs: dict[str, Config], actor_labels: Labels, tasks: int, batch_numbers: int
) -> bool:
    """Measured bytes per step by kind beside the formulas; returns whether all of them agree."""
    all_agree = True
    for strategy, one, two in actor_labels:
        header = f"{'kind':<15}{'K':>3}{'measured B':>14}{'formula B':>14}  check"
        print(f"\n  {strategy:<24}{header}")
        for label in (two,) if shares(strategy) else (one, two):
            engine = configs[label].engine
            actors = engine.num_actors
            shared = engine.num_shared
            everything = sum(t.numel() for t in engine.model.state_dict().values())
            measured = engine.stats.bytes_per_step()
            formula = expected_bytes(
                strategy, actors, tasks, shared, everything, batch_numbers, shares(strategy)
            )
            for kind in sorted(set(measured) | set(formula)):
                got, want = measured.get(kind, 0.0), formula.get(kind, 0.0)
                check = byte_check(got, want)
                all_agree &= check != "DIFFERS"
                row = f"{kind:<15}{actors:>3}{got:14,.0f}{want:14,.0f}  {check}"
                print(f"  {'':<24}{row}")
            total, total_formula = sum(measured.values()), sum(formula.values())
            row = f"{'total':<15}{actors:>3}{total:14,.0f}{total_formula:14,.0f}"
            print(f"  {'':<24}{row}")
    return all_agree


def print_gram_check(configs: dict[str, Config]) -> None:
    """Largest relative difference of each config's first Gram from the batched engine's."""
    reference = configs["batched-1"].first_gram
    scale = reference.abs().max()
    grams = [c.first_gram for c in configs.values() if c.first_gram is not None]  # not halves'
    worst = max(float((gram - reference).abs().max() / scale) for gram in grams)
    print(f"\n  first-step Gram, max |G - G_batched| / max|G_batched| over all rows: {worst:.1e}")
