"""DeepSpeed engine overhead: one method's step through ``deepspeed`` vs ``loop``, per ZeRO stage.

Same model (the ``synthetic`` MLP sized by ``--shared-parameters``), same batch, same method and
optimizer. For each stage the two engines are timed in alternating blocks in one process; the
printed ratio is the median over blocks of (deepspeed step time / loop step time).
Run: ``python benchmarks/deepspeed_overhead.py --method ew --stages 0 1 2 3``.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from _timing import seconds_per_call
from mtlbench.cluster.deepspeed_engine import prepare_environment
from mtlbench.harness.budget import Budget
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.registry import DATASETS, METHODS


def _block(method, engine, batch, steps: int) -> float:
    return seconds_per_call(lambda: method.step(batch, engine), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="ew")
    parser.add_argument("--shared-parameters", type=float, default=1e6)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    args = parser.parse_args()
    prepare_environment(torch.device("cpu"))
    from mtlbench.datasets.synthetic import width_for_shared_parameters

    dataset_cls = DATASETS.get("synthetic")
    width = width_for_shared_parameters(args.shared_parameters, 64, 3)
    dataset = dataset_cls(
        dataset_cls.Params(num_tasks=args.tasks, width=width, train_samples=args.batch_size)
    )
    taskset = dataset_cls.taskset(dataset.params)
    batch = tuple(dataset.load().train.tensors)
    training = TrainingConfig(batch_size=args.batch_size)
    method_cls = METHODS.get(args.method)
    torch.manual_seed(0)
    model = dataset.build_model()
    shared = sum(p.numel() for p in model.shared_parameters())
    print(
        f"method {args.method}, synthetic MLP width {width} ({shared:,} shared parameters), "
        f"T={args.tasks}, batch {args.batch_size}, threads {torch.get_num_threads()}, "
        f"{args.blocks} blocks x {args.steps} steps"
    )
    for stage in args.stages:
        runs = {}
        for name, options in (("loop", {}), ("deepspeed", {"zero_stage": stage})):
            method = method_cls(method_cls.Params(), copy.deepcopy(model), taskset, training)
            engine = get_engine(name)(
                method.model, taskset, Budget("flops", 1e30), batch, **options
            )
            method.optimizer = engine.wrap_optimizer(method.optimizer)
            _block(method, engine, batch, 2)  # warm-up
            runs[name] = (method, engine)
        ratios, times = [], {"loop": [], "deepspeed": []}
        for _ in range(args.blocks):
            for name in ("loop", "deepspeed"):
                times[name].append(_block(*runs[name], batch, args.steps))
            ratios.append(times["deepspeed"][-1] / times["loop"][-1])
        print(
            f"ZeRO-{stage}: loop {1e3 * statistics.median(times['loop']):.2f} ms, deepspeed "
            f"{1e3 * statistics.median(times['deepspeed']):.2f} ms, "
            f"ratio median {statistics.median(ratios):.3f} "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
