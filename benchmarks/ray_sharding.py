"""Speedup and parallel efficiency of engine ``ray_sharded``, 1 vs 2 actors; its bytes per step.

What is measured: the wall-clock time of one exact-MGDA step (forward, per-task Jacobian, Gram
T×T, min-norm weights, Σ aₜgₜ, heads backward, SGD step) driven through the engine API, as
``tests/test_ray_sharded.py`` drives it, on a local Ray of 2 CPUs (``start_local(num_cpus=2)``, an
object store of ``--object-store-mb``, see "Object store" below):

- ``ray_sharded`` on 2 workers, one torch thread each, in the variants of ``--variants``:
  ``driver/parameter/shm``, the engine's default on one CPU machine (the driver computes half
  the tasks itself and 1 actor the other half; J exchanged by parameter columns through
  node-local shared memory, partial Grams summed on the driver, next step prefetched), timed
  against 1 worker = the tuned ``batched`` engine in one process (below): the strictest
  comparison, against the fastest single process there is. ``parameter/shm``: the same with
  actors only, 1 vs 2 actors (its 1-actor row carries Ray's costs too). On request:
  ``driver/gather/shm`` and ``gather/shm`` (every row to the driver: the task-sharded exchange
  the issue asks to compare), ``driver/parameter/store`` and ``parameter/store`` (through Ray's
  object store, the engine's choice when actors span machines), ``parameter/shm/no-prefetch``.
  speedup = t(1 worker) / t(2 workers), parallel efficiency = speedup / 2; the target is
  efficiency >= 0.85.
- in this one process: the ``batched`` engine (batched VJPs, the very computation each worker
  runs on its share of the tasks) with 1 and 2 torch threads, tuned as the workers are (see
  "Baseline"): does sharding over two processes beat simply giving torch both cores? The plain
  ``batched`` engine (a fresh J every step, one chunk of T), and the ``loop`` engine with 1 torch
  thread (T separate backwards), for reference.

Baseline: a baseline slower than it need be flatters every ratio taken against it, so the
single-process rows get what the workers get. (1) J reused: the workers write their rows into
the shared arena, whose pages stay mapped, while ``batched`` allocates a fresh (T, P) J every
step (64 MB here), every page of which the kernel zeroes (``ReusedJacobianBatched``). (2) The
chunk (tasks per VJP) measured best: one task per VJP, which the engines now run as a plain VJP
(vmap's batching costs ≈ 3% per row there). Interleaved on the CI machine, one process with all
16 tasks took 191 / 195 / 200 / 212 ms per step in chunks of 1 / 2 / 4 / 8 (``--chunk-one 1``);
two processes with 8 tasks each, running at once, 121 ms in chunks of 1 against 126 in chunks
of 2 (``--chunk-two 1``: the 2-worker rows, the 2-thread row and the host reference). Small
chunks win because each chunk's per-layer gradients (2.4 MB per task for the 768 × 768 layer)
stay in cache, the more so when two processes share the L3. Before the tuning of 2026-11-23's
third session, the 1-actor row paid the page zeroing of its 38 MB per-chunk gradients (above
glibc's 32 MB mmap threshold) that the 2-actor row's 19 MB chunks did not: the efficiencies this
script printed before then (0.76-0.87 for ``parameter/shm``) were flattered by it; before the
fourth session, the baseline ran chunks of 4 (≈ 4% slower than now).

Host reference (``two halves at once``, see ``HalfProblem``): two processes, the driver and an
actor, each run the baseline's whole step on half the tasks, at once, with nothing exchanged.
Their efficiency is what this host leaves of two cores for this work before the engine moves a
byte; "x the host reference" in the verdicts is the engine's efficiency over it.

How: every configuration trains its own copy of the same initial model on the same batch; after a
warm-up, the configurations are timed in interleaved blocks of ``--steps`` steps (the order is
reversed every other block, and each block starts with ``--untimed`` untimed steps: it follows
another configuration, with cold caches and idle actors), and each printed figure is the median
over ``--blocks`` blocks of the per-block value (step time, or a ratio of two step times taken in
the same block). The driver runs
one torch thread while the actors are timed. The first step's Gram of every configuration is
compared with the ``batched`` engine's, so all rows time the same computation.

Bytes: ``engine.stats.bytes_per_step()`` by kind (logical bytes one process writes and another
reads, through shared memory or the object store alike; mean over the run's steps), beside the
formulas of ``cluster/sharded.py`` (float32; P shared parameters, P_all all parameters and
buffers, B samples, D_in input features, T tasks)::

    both       parameters K·P_all·4, batch K·B·(D_in + T)·4, rng K·5056
    gather     jacobian_rows T·P·4
    parameter  reshard (K−1)/K·T·P·4, gram_blocks K·T²·4, weights K·T·4, direction P·4

Model: MLP encoder D_in → H → H → D (ReLU; default 256 → 768 → 768 → 256, ≈ 1.0M shared
parameters, so the T encoder backwards dominate the step), T binary heads Linear(D, 2), batch 256;
T = 16 by default (the issue asks T >= 8): every actor replays the forward and every step pays
the same Ray round trips whatever T, so at T = 8 the FLOP ceiling alone (0.89) leaves 4% for all
of Ray's costs, at T = 16 (0.94) 9%. ``--tasks 8`` gives the minimum the issue allows.

Object store (every byte of the ``parameter/store`` rows; the batch of every row): on this VM a
page touched for the first time is dear (writing 16 MB to fresh /dev/shm pages takes ≈ 18 ms, to
pages already mapped ≈ 2.3 ms; the shared-memory arena is written in place, so its pages are
touched once per run). With Ray's default store (30% of RAM, 7.5 GB here) each
object lands on fresh pages until the run has put that much (hundreds of steps), so a short
benchmark times that transient: ≈ 1 ms per MB put, 12-14 ms for one 16 MB block against 4 ms
once pages are reused. The default ``--object-store-mb 512`` (ample: a step holds < 100 MB)
reaches the steady state of a long run within the warm-up; ``--object-store-mb 0`` keeps Ray's
default, for the transient. End to end the difference is within this machine's run-to-run noise
(T = 8, 2026-11-23, before the shared-memory transport, when every row used the store:
efficiency 0.70 / 0.71 with 512 MB, 0.67 / 0.65 with the default store).

Run: ``python benchmarks/ray_sharding.py`` (≈ 4 min on 2 idle cores at T = 16, 2 min at
``--tasks 8``; ``--blocks``, ``--steps``, ``--hidden``, ``--batch-size``, ``--object-store-mb``,
``--variants``), or ``--quick`` for a ≈ 30 s smoke run (smaller model, 3 blocks × 2 steps) whose
timings mean little. Timings are only meaningful on an otherwise idle machine: the "blocks
min-max" columns show how noisy the run was, and "of medians" (median t(1) / median t(2)) is a
second estimate of the efficiency.

The measurements of 2026-11-23 (ten runs, T = 16; T = 8; batch 1024; bytes per step) are in
``benchmarks/measured/cpu-2026-11-23/ray_sharding_t16_runs.md`` (summary: ``ray_sharding_t16.md``).
``--model resnet18`` times the ResNet-18 setting instead (``_ray_sharding_resnet.py``: the
per-step split into forward, VJPs, exchange and solve over ``cluster/collective.py``, and every
transport of the engine against EW; ``--side``, ``--resnet-width``, ``--repeats``, ``--device``).
The MLP problem and its baselines are in ``_ray_sharding_baseline.py``, the configurations and
the report in ``_ray_sharding_report.py``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import ray
import torch
from _ray_sharding_baseline import (
    HalfProblem,
    ReusedJacobianBatched,
    build_batch,
    build_model,
    make_taskset,
)
from _ray_sharding_report import (
    DEFAULT_VARIANTS,
    VARIANTS,
    Config,
    Labels,
    print_against_local,
    print_bytes,
    print_gram_check,
    print_speedups,
    print_step_times,
    print_verdicts,
)
from _ray_sharding_resnet import mgda_step
from _ray_sharding_resnet import run as run_resnet_rows
from _timing import seconds_per_call
from mtlbench.cluster._ray_setup import start_local
from mtlbench.cluster.sharded import TRANSPORTS
from mtlbench.harness.budget import Budget
from mtlbench.harness.gradients import (
    Batch,
    get_engine,
)
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet

RAY_CPUS = 2
# Every ray_sharded engine keeps its actors for the whole run, so that its configurations can be
# timed in interleaved blocks: 1 + 2 actors per actors-only variant, 1 per driver's-share variant,
# and the host reference's 1, more than 2 whole logical CPUs. Ray's CPU count is a reservation,
# not a pinning: only one configuration runs at a time, so at most 2 actor processes (one torch
# thread each) compute at once. Each actor therefore reserves RAY_CPUS / (actors in the run)
# (``cpus_per_actor``) and runs exactly one torch thread.
THREADS_PER_ACTOR = 1


HalfActor = ray.remote(HalfProblem)


def prepare_halves(config: Config, args: argparse.Namespace, warmup: int, cpus: float) -> None:
    """The ``halves`` configuration: each step, the actor's half starts, the driver's half runs,
    the driver waits for the actor's (one Ray call per step, as the engine's one-call step).
    cpus: the actor's CPU reservation (see ``cpus_per_actor``)."""
    sizes = (args.inputs, args.hidden, args.width, args.tasks, args.batch_size, args.chunk_two)
    local = HalfProblem(*sizes)
    actor = HalfActor.options(num_cpus=cpus).remote(*sizes)

    def both() -> None:
        remote = actor.step.remote()
        local.step()
        ray.get(remote)

    config.step = both
    for _ in range(max(warmup, 1)):
        both()


# ---- one configuration -----------------------------------------------------------------------
def prepare(
    config: Config, initial: MultiTaskModel, taskset: TaskSet, batch: Batch, warmup: int
) -> None:
    """Build the engine (starting its actors), run ``warmup`` steps, keep the first step's Gram."""
    model = copy.deepcopy(initial)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    config.engine = get_engine(config.engine_name)(
        model, taskset, Budget("flops", 1e30), batch, **config.options
    )
    config.step = lambda: mgda_step(config.engine, optimizer, batch)
    torch.set_num_threads(config.driver_threads)
    config.first_gram = mgda_step(config.engine, optimizer, batch).detach().clone()
    for _ in range(max(warmup - 1, 0)):
        config.step()
    torch.set_num_threads(1)


def time_block(config: Config, steps: int, untimed: int) -> float:
    """Mean wall-clock seconds per step over ``steps`` steps, with the config's driver threads,
    after ``untimed`` steps: the block starts where another configuration just ran, with cold
    caches and idle actors, which a training run meets once, not every few steps.

    The Ray rows keep the driver at one torch thread: idle OpenMP workers of the driver spin for
    a while after each parallel region and would steal cycles from the two actor processes.
    """
    torch.set_num_threads(config.driver_threads)
    for _ in range(untimed):
        config.step()
    seconds = seconds_per_call(config.step, steps)
    torch.set_num_threads(1)
    return seconds


def run_blocks(configs: list[Config], blocks: int, steps: int, untimed: int) -> None:
    """Interleaved timing: every block times each config once; order reversed every other block."""
    for block in range(blocks):
        order = configs if block % 2 == 0 else configs[::-1]
        for config in order:
            config.times.append(time_block(config, steps, untimed))


# ---- main ------------------------------------------------------------------------------------
def cpus_per_actor(variants: list[str]) -> float:
    """Each actor's CPU reservation, so that every actor of the run fits in RAY_CPUS: the
    variants' actors (1 with the driver's share, else 1 + 2) and the host reference's one."""
    actors = sum(1 if VARIANTS[strategy][3] else 3 for strategy in variants) + 1
    return RAY_CPUS / actors


def make_configs(
    tasks: int, variants: list[str], chunk_one: int, chunk_two: int
) -> tuple[dict[str, Config], Labels]:
    """Per variant, its Ray configurations (1 and 2 actors; or, with the driver's share, the
    driver and 1 actor, its 1-worker counterpart being ``batched-1``), and four local ones.

    chunk_one / chunk_two: tasks per batched VJP where one process computes all T tasks / where
    two processes (or two torch threads) share the work (see ``--chunk-one``).
    """
    configs: dict[str, Config] = {}
    actor_labels = []
    for strategy in variants:
        gram, transport, prefetch, driver_share = VARIANTS[strategy]
        labels = ["batched-1"] if driver_share else []
        for actors in (1,) if driver_share else (1, 2):
            label = f"ray-{strategy}-{actors}"
            options = {
                "actors": actors,
                "gram": gram,
                "transport": transport,
                "prefetch": prefetch,
                "driver_share": driver_share,
                "cpus_per_actor": cpus_per_actor(variants),
                "threads_per_actor": THREADS_PER_ACTOR,
                "chunk_size": chunk_one if actors + driver_share == 1 else chunk_two,
            }
            name = f"ray_sharded {strategy} K={actors}"
            configs[label] = Config(name, "ray_sharded", 1, options)
            labels.append(label)
        actor_labels.append((strategy, *labels))
    configs["loop-1"] = Config("loop, 1 torch thread", "loop", 1)
    configs["batched-fresh-1"] = Config(
        "batched (fresh J), 1 thread", "batched", 1, {"chunk_size": tasks}
    )
    # the tuned baseline: J reused, the chunk size measured best
    for threads, chunk in ((1, chunk_one), (2, chunk_two)):
        configs[f"batched-{threads}"] = Config(
            f"batched, {threads} torch thread(s)",
            ReusedJacobianBatched.name,
            threads,
            {"chunk_size": chunk},
        )
    return configs, actor_labels


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=16, help="T (>= 2; the issue asks T >= 8)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--inputs", type=int, default=256, help="input features D_in")
    parser.add_argument("--hidden", type=int, default=768, help="width of the two hidden layers")
    parser.add_argument("--width", type=int, default=256, help="representation width D")
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration")
    parser.add_argument(
        "--untimed", type=int, default=1, help="untimed steps at the start of every block"
    )
    parser.add_argument(
        "--object-store-mb",
        type=int,
        default=512,
        help="Ray object store size (0: Ray's default); see 'Object store' in the module notes",
    )
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated subset of {', '.join(VARIANTS)} (every variant's actors stay up "
        "for the whole run, and idle actors still wake up: fewer variants, less noise)",
    )
    parser.add_argument(
        "--chunk-one",
        type=int,
        default=1,
        help="tasks per batched VJP in a process that computes all T tasks (see 'Baseline')",
    )
    parser.add_argument(
        "--chunk-two",
        type=int,
        default=1,
        help="tasks per batched VJP where two workers or two torch threads share the work",
    )
    parser.add_argument("--quick", action="store_true", help="≈ 30 s smoke run (smaller, fewer)")
    resnet = parser.add_argument_group("--model resnet18 (see benchmarks/_ray_sharding_resnet.py)")
    resnet.add_argument(
        "--model", choices=["mlp", "resnet18"], default="mlp", help="mlp: the rows above"
    )
    resnet.add_argument("--side", type=int, default=64, help="input images side × side")
    resnet.add_argument("--resnet-width", type=int, default=64, help="first stage's channels")
    resnet.add_argument("--repeats", type=int, default=5, help="timed steps (median)")
    resnet.add_argument(
        "--device", default=None, help="cuda when one exists, else cpu (the workers' device)"
    )
    args = parser.parse_args()
    if args.tasks < 2:
        parser.error("--tasks must be >= 2 (K = 2 actors need 2 tasks)")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown or not args.variants:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if args.quick:
        args.hidden, args.batch_size = min(args.hidden, 384), min(args.batch_size, 128)
        args.blocks, args.steps, args.warmup, args.untimed = 3, 2, 1, 0
    return args


def run_resnet(args: argparse.Namespace) -> None:
    """``--model resnet18``: the phase split and the transports' step times (module
    ``_ray_sharding_resnet``), on a local Ray of this machine's CPUs (and GPUs)."""
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print("$ python benchmarks/ray_sharding.py " + " ".join(sys.argv[1:]))
    torch.set_num_threads(1)
    start_local(num_cpus=RAY_CPUS, logging_level="WARNING")
    try:
        run_resnet_rows(args, [name for name in TRANSPORTS if name != "auto"])
    finally:
        ray.shutdown()


def main() -> None:
    args = parse_args()
    if args.model == "resnet18":
        run_resnet(args)
        return
    # The driver stays at one torch thread except while a local 2-thread row is timed: the actor
    # rows need both cores for the two actor processes, and an idle multi-threaded driver (OpenMP
    # workers spinning after each parallel region) would steal cycles from them.
    torch.set_num_threads(1)
    store = args.object_store_mb * 2**20 or None
    start_local(num_cpus=RAY_CPUS, logging_level="WARNING", object_store_memory=store)
    try:
        taskset = make_taskset(args.tasks)
        initial = build_model(args.inputs, args.hidden, args.width, args.tasks)
        batch = build_batch(args.batch_size, args.inputs, args.tasks)
        shared = sum(p.numel() for p in initial.shared_parameters())
        print(
            f"MLP {args.inputs} → {args.hidden} → {args.hidden} → {args.width}, "
            f"P = {shared:,} shared parameters, T = {args.tasks} binary heads, "
            f"batch {args.batch_size}; exact MGDA step; "
            f"Ray {ray.__version__} with {RAY_CPUS} CPUs on a {os.cpu_count()}-core machine, "
            f"object store {args.object_store_mb or 'default'} MB; "
            f"torch {torch.__version__}; median of {args.blocks} blocks × {args.steps} steps"
        )
        configs, actor_labels = make_configs(
            args.tasks, args.variants, args.chunk_one, args.chunk_two
        )
        for config in configs.values():
            prepare(config, initial, taskset, batch, args.warmup)
        configs["halves"] = Config("two halves at once, no exchange", "halves", 1)
        prepare_halves(configs["halves"], args, args.warmup, cpus_per_actor(args.variants))
        run_blocks(list(configs.values()), args.blocks, args.steps, args.untimed)
        print_step_times(configs)
        efficiencies, host = print_speedups(configs, actor_labels, args.tasks, args.batch_size)
        print_against_local(configs, actor_labels)
        print_verdicts(configs, actor_labels, efficiencies, host)
        print_gram_check(configs)
        batch_numbers = args.batch_size * (args.inputs + args.tasks)
        agree = print_bytes(configs, actor_labels, args.tasks, batch_numbers)
        print(f"\n  bytes per step {'agree with' if agree else 'DIFFER from'} the formulas")
        for config in configs.values():
            if hasattr(config.engine, "close"):
                config.engine.close()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
