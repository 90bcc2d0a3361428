"""ResNet-18 at T = 40 (``ray_sharding.py --model resnet18``): where a sharded exact-MGDA step goes.

Two kinds of rows, on whatever devices exist (gloo on CPUs; NCCL when the driver has a GPU):

- **Phases** (the collective exchange of ``cluster/collective.py``, driven here directly, not
  through the engine): W workers, the driver as rank 0 and W − 1 Ray actors, each with a replica
  of the model. Per step each worker runs the forward (the actors' is the *replayed* forward),
  the VJPs of its share of the T tasks, written straight into the all-to-all's send buffer
  (``OutgoingRows``), then the exchange: a barrier (its wait for the slowest peer, reported
  apart), ``reshard_rows``, the partial Gram and ``all_reduce_gram``, the min-norm solve (rank
  0), ``broadcast_weights`` and Σ aₜgₜ's slice with ``gather_direction``. Every phase is timed
  on every rank (CUDA synchronised), median over steps. W = 1 is the single-device path (the
  exchange with one rank); W = 2 is driver + 1 actor.
- **Engine**: the whole step through the engine API (as ``ray_sharding.py`` times it) for
  ``batched`` in one process, and ``ray_sharded`` with each transport its ``TRANSPORTS`` lists
  (driver + 1 actor), plus EW's step (forward, one backward of the summed losses, SGD) for the
  ratio the issue judges by (exact MGDA under 6× EW).

Model: ``ResNet18Encoder`` of ``datasets/_models.py`` (the project's own, torchvision-free;
11.2M shared parameters at width 64, the H100 runs' setting), T binary heads
``StackedMLPHeads(T, D, 2)``. On a 2-core CPU keep it short: ``--side 16 --batch-size 4``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial
from itertools import pairwise

import ray
import torch
from _timing import median_seconds
from mtlbench.cluster.collective import (
    CollectiveMember,
    GroupAddress,
    GroupHost,
    OutgoingRows,
    ShardLayout,
    all_reduce_gram,
    broadcast_weights,
    expected_collective_bytes,
    gather_direction,
    reshard_rows,
)
from mtlbench.datasets._models import ResNet18Encoder
from mtlbench.harness.budget import Budget
from mtlbench.harness.gradients import Batch, GradientEngine, get_engine
from mtlbench.harness.model import MultiTaskModel, StackedMLPHeads
from mtlbench.harness.tasks import TaskSet, TaskSpec
from mtlbench.methods.min_norm import min_norm_weights
from torch import Tensor

PHASES = ("forward", "vjps", "wait", "reshard", "gram", "solve", "weights", "direction")


def build_model(tasks: int, side: int, width: int, seed: int = 0) -> MultiTaskModel:
    """ResNet-18 encoder (``width`` channels in its first stage) and T binary linear heads."""
    torch.manual_seed(seed)
    encoder = ResNet18Encoder(side, width)
    heads = StackedMLPHeads(tasks, encoder.representation_size, 2, hidden=None)
    return MultiTaskModel(encoder, heads, tasks)


def build_batch(batch_size: int, side: int, tasks: int, seed: int = 1) -> Batch:
    """x (B, 3, side, side) standard normal, binary targets (B, T) as floats."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, side, side, generator=generator)
    return x, torch.randint(0, 2, (batch_size, tasks), generator=generator).float()


def task_losses(model: MultiTaskModel, batch: Batch) -> Tensor:
    """(T,) cross-entropy of every binary head on the batch."""
    inputs, targets = batch
    logits = model(inputs)  # (B, T, 2)
    per_sample = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), targets.long(), reduction="none"
    )  # (B, T)
    return per_sample.mean(dim=0)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseWorker:
    """One worker of the phase-timed collective step: rank ``rank`` of W, tasks
    ``task_bounds[rank] … task_bounds[rank + 1]``, its own replica of the model on ``device``."""

    def __init__(self, args: dict, rank: int, layout: ShardLayout, device: str, threads: int):
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.rank, self.layout = rank, layout
        self.model = build_model(args["tasks"], args["side"], args["resnet_width"]).to(self.device)
        self.batch = tuple(
            part.to(self.device)
            for part in build_batch(args["batch_size"], args["side"], args["tasks"])
        )
        self.shared = list(self.model.shared_parameters())
        first = sum(layout.task_counts[:rank])
        self.tasks = range(first, first + layout.task_counts[rank])
        self.rows = OutgoingRows(layout, rank, self.device)  # the VJPs write the send buffer
        self.member: CollectiveMember | None = None

    def join(self, address: GroupAddress, store: object = None) -> None:
        self.member = CollectiveMember(address, self.rank, self.device, store=store)

    def step(self) -> dict[str, float]:
        """One exchange step; returns its phases' wall-clock seconds (see the module notes)."""
        assert self.member is not None, "join first"
        member, layout, marks = self.member, self.layout, [time.perf_counter()]

        def mark() -> None:
            synchronize(self.device)
            marks.append(time.perf_counter())

        losses = task_losses(self.model, self.batch)
        mark()
        for index, task in enumerate(self.tasks):
            grads = torch.autograd.grad(losses[task], self.shared, retain_graph=True)
            self.rows.write_row(index, list(grads))
        mark()
        barrier = torch.distributed.BarrierOptions()
        if self.device.type == "cuda":  # NCCL's barrier would otherwise guess the device
            barrier.device_ids = [torch.cuda.current_device()]
        member.backend.barrier(barrier).wait()
        mark()
        shard = reshard_rows(member, self.rows, layout)
        mark()
        gram = all_reduce_gram(member, shard @ shard.T)
        mark()
        if self.rank == 0:
            weights = min_norm_weights(gram).to(shard.dtype)
        else:
            weights = shard.new_empty(layout.num_tasks)
        mark()
        weights = broadcast_weights(member, weights)
        mark()
        gather_direction(member, weights @ shard, layout)
        mark()
        del losses
        member.traffic.next_step()
        return {phase: b - a for phase, (a, b) in zip(PHASES, pairwise(marks), strict=True)}

    def close(self) -> None:
        if self.member is not None:
            self.member.close()


def shared_parameter_count(args: argparse.Namespace) -> int:
    """P: the encoder's parameters at ``--side`` and ``--resnet-width``."""
    model = build_model(args.tasks, args.side, args.resnet_width)
    return sum(p.numel() for p in model.encoder.parameters())


def phase_rows(args: argparse.Namespace, workers: int) -> list[dict[str, float]]:
    """Median phase seconds of every rank over ``args.repeats`` steps (after one warm-up)."""
    layout = ShardLayout.even(args.tasks, shared_parameter_count(args), workers)
    host = GroupHost(workers, args.device)
    spec = vars(args)
    gpus = 1.0 / workers if args.device.startswith("cuda") else 0
    remote_worker = ray.remote(PhaseWorker).options(num_cpus=0.5, num_gpus=gpus)
    actors = [
        remote_worker.remote(spec, rank, layout, args.device, 1) for rank in range(1, workers)
    ]
    driver: PhaseWorker | None = None
    per_rank: list[list[dict[str, float]]] = [[] for _ in range(workers)]
    try:
        joins = [actor.join.remote(host.address()) for actor in actors]
        driver = PhaseWorker(spec, 0, layout, args.device, 1)
        driver.join(host.address(), host.store)
        ray.get(joins)
        for repeat in range(args.repeats + 1):
            calls = [actor.step.remote() for actor in actors]
            phases = [driver.step(), *ray.get(calls)]
            if repeat:  # the first is the warm-up
                for rank, timing in enumerate(phases):
                    per_rank[rank].append(timing)
    finally:
        if driver is not None:
            driver.close()
        for actor in actors:
            ray.kill(actor)
        host.close()
    return [
        {phase: statistics.median(t[phase] for t in timings) for phase in PHASES}
        for timings in per_rank
    ]


def mgda_step(engine: GradientEngine, optimizer: torch.optim.Optimizer, batch: Batch) -> Tensor:
    """One exact-MGDA step through the engine API; returns the step's Gram (T, T)."""
    optimizer.zero_grad(set_to_none=True)
    state = engine.forward(batch)
    gram = engine.shared_gram(state)
    weights = min_norm_weights(gram)
    direction = engine.shared_combination(state, weights)
    engine.apply_shared_direction(state, direction, torch.ones_like(weights))
    optimizer.step()
    return gram


def engine_rows(args: argparse.Namespace, transports: list[str]) -> dict[str, float]:
    """Median step seconds: EW (plain torch), ``batched`` MGDA in one process, and ``ray_sharded``
    MGDA with each transport (driver + 1 actor), each on a fresh copy of the same model."""
    device = torch.device(args.device)
    taskset = TaskSet([TaskSpec(f"t{t}", "classification", 2) for t in range(args.tasks)])
    batch = tuple(part.to(device) for part in build_batch(args.batch_size, args.side, args.tasks))
    model = build_model(args.tasks, args.side, args.resnet_width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def ew_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        task_losses(model, batch).sum().backward()
        optimizer.step()

    seconds = {"EW (forward, backward, SGD)": median_seconds(ew_step, args.repeats, device)}
    configs: list[tuple[str, str, dict[str, object]]] = [
        ("MGDA batched, one process", "batched", {"chunk_size": 1})
    ]
    gpus = 0.5 if device.type == "cuda" else 0.0  # one GPU: the actor shares the driver's
    for transport in transports:
        options = {"actors": 1, "driver_share": True, "transport": transport, "chunk_size": 1}
        options.update(cpus_per_actor=0.5, gpus_per_actor=gpus, threads_per_actor=1)
        configs.append((f"MGDA ray_sharded {transport}, driver + 1 actor", "ray_sharded", options))
    for label, name, options in configs:
        model = build_model(args.tasks, args.side, args.resnet_width).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        engine: GradientEngine | None = None
        try:
            engine = get_engine(name)(model, taskset, Budget("flops", 1e30), batch, **options)
            step = partial(mgda_step, engine, optimizer, batch)
            seconds[label] = median_seconds(step, args.repeats, device)
        except Exception as error:  # a transport this machine cannot run: say so, go on
            print(f"  {label}: failed ({type(error).__name__}: {str(error)[:200]})")
        finally:
            if engine is not None and hasattr(engine, "close"):
                engine.close()
    return seconds


def print_phases(args: argparse.Namespace, by_workers: dict[int, list[dict[str, float]]]) -> None:
    """Phase medians (ms) per W and rank, and the bytes each rank sends per step (formula)."""
    columns = [(w, r) for w, ranks in by_workers.items() for r in range(len(ranks))]
    header = "".join(f"{f'W={w} rank {r}':>14}" for w, r in columns)
    print(f"\n  collective step, phases (ms, median){'':<4}{header}")
    for phase in (*PHASES, "total"):
        cells = []
        for w, r in columns:
            timing = by_workers[w][r]
            value = sum(timing.values()) if phase == "total" else timing[phase]
            cells.append(f"{1e3 * value:14.1f}")
        print(f"  {phase:<40}{''.join(cells)}")
    params = shared_parameter_count(args)
    for workers in by_workers:
        layout = ShardLayout.even(args.tasks, params, workers)
        sent = expected_collective_bytes(
            args.tasks, params, layout.task_counts, layout.column_bounds, 4
        )
        text = "; ".join(
            f"rank {r}: " + (", ".join(f"{k} {v:,} B" for k, v in kinds.items() if v) or "none")
            for r, kinds in enumerate(sent)
        )
        print(f"  bytes sent per step, W={workers} (expected_collective_bytes): {text}")


def run(args: argparse.Namespace, transports: list[str]) -> None:
    """The ResNet-18 rows (see the module notes); ``transports``: the engine's, less ``auto``."""
    params = shared_parameter_count(args)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"ResNet-18 encoder (width {args.resnet_width}, P = {params:,} shared parameters), "
        f"{args.side}×{args.side} inputs, batch {args.batch_size}, T = {args.tasks} binary heads; "
        f"exact MGDA; device {args.device} ({name}), torch {torch.__version__}, Ray "
        f"{ray.__version__}; medians of {args.repeats} steps after 1 warm-up; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start"
    )
    by_workers = {}
    for workers in (1, 2):
        try:
            by_workers[workers] = phase_rows(args, workers)
        except Exception as error:  # e.g. NCCL refusing two ranks on one GPU: say so, go on
            print(f"  collective step W={workers}: failed ({type(error).__name__}: {error})")
    if by_workers:
        print_phases(args, by_workers)
    seconds = engine_rows(args, transports)
    ew = seconds["EW (forward, backward, SGD)"]
    print(f"\n  {'whole step through the engine API':<52}{'ms':>10}{'/ EW':>8}")
    for label, value in seconds.items():
        print(f"  {label:<52}{1e3 * value:10.1f}{value / ew:8.2f}")
    print(f"\n  load average {os.getloadavg()[0]:.1f} at the end (other processes share the cores)")
