"""Harness overhead: mtlbench's EW step vs a bare PyTorch training step, side by side.

Same model (the multidigits LeNet, or ``--model mlp``), same batch, same optimizer. Both loops
are timed in alternating blocks in one process; the printed ratio is the median over blocks of
(harness step time / bare step time). Run: ``python benchmarks/harness_overhead.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from mtlbench.harness.budget import Budget
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.registry import DATASETS, METHODS


def _time_block(step, batch, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step(batch)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--engine", default="loop")
    args = parser.parse_args()
    torch.manual_seed(0)
    dataset_cls = DATASETS.get("multidigits")
    dataset = dataset_cls(
        dataset_cls.Params(train_pairs=args.batch_size, val_pairs=1, test_pairs=1)
    )
    taskset = dataset_cls.taskset(dataset.params)
    batch = tuple(dataset.load().train.tensors)
    training = TrainingConfig(batch_size=args.batch_size)

    bare_model = dataset.build_model()
    bare_optimizer = torch.optim.Adam(bare_model.parameters(), lr=training.lr)
    weights = torch.full((len(taskset),), 1.0 / len(taskset))

    def bare_step(batch) -> None:
        bare_optimizer.zero_grad(set_to_none=True)
        losses = taskset.losses(bare_model(batch[0]), batch[1])
        (weights * losses).sum().backward()
        bare_optimizer.step()

    method_cls = METHODS.get("ew")
    method = method_cls(method_cls.Params(), dataset.build_model(), taskset, training)
    engine = get_engine(args.engine)(method.model, taskset, Budget("flops", 1e30), batch)

    def harness_step(batch) -> None:
        method.step(batch, engine)

    for step in (bare_step, harness_step):  # warm-up
        _time_block(step, batch, 5)
    ratios, bare_times, harness_times = [], [], []
    for _ in range(args.blocks):
        bare = _time_block(bare_step, batch, args.steps)
        harness = _time_block(harness_step, batch, args.steps)
        bare_times.append(bare)
        harness_times.append(harness)
        ratios.append(harness / bare)
    print(
        f"model: multidigits LeNet, batch {args.batch_size}, engine {args.engine}, "
        f"threads {torch.get_num_threads()}, {args.blocks} blocks x {args.steps} steps"
    )
    print(f"bare PyTorch step   median {1e3 * statistics.median(bare_times):.3f} ms")
    print(f"mtlbench EW step    median {1e3 * statistics.median(harness_times):.3f} ms")
    print(
        f"ratio harness/bare  median {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
