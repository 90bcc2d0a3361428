"""PML with BatchNorm: the front with shared running statistics vs per-α recalibration.

The ensemble keeps one set of BatchNorm running statistics per layer, updated by every α drawn
in training (as in the paper's code); the statistics seen at evaluation are therefore a mixture
over members. ``bn_recalibration_batches = k`` re-estimates them at each evaluated θ(α) on the
last k training batches. This script trains PML once on multidigits with a LeNet that has
BatchNorm after each convolution (the default multidigits model has none), under the suite's
budget, then scores the same trained ensemble both ways on the test split.

Run: ``python benchmarks/pml_batchnorm.py [--seeds 0 1] [--recalibration-batches 8]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from mtlbench.harness.budget import Budget, BudgetExhausted
from mtlbench.harness.config import load_suite
from mtlbench.harness.data import training_batches
from mtlbench.harness.evaluation import evaluate_model
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.metrics import hypervolume
from mtlbench.harness.model import MultiTaskModel, StackedMLPHeads
from mtlbench.harness.registry import DATASETS, METHODS
from mtlbench.harness.run_setup import seed_everything
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


def lenet_with_batchnorm(num_tasks: int = 2) -> MultiTaskModel:
    """The multidigits LeNet (20×20 inputs) with BatchNorm2d after both convolutions."""
    encoder = nn.Sequential(
        nn.Conv2d(1, 10, 5), nn.BatchNorm2d(10), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(10, 20, 5), nn.BatchNorm2d(20), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(80, 50), nn.ReLU(),
    )  # fmt: skip
    return MultiTaskModel(encoder, StackedMLPHeads(num_tasks, 50, 10, hidden=50), num_tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(ROOT / "suites" / "quickstart.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--recalibration-batches", type=int, default=8)
    args = parser.parse_args()
    suite = load_suite(args.suite)
    dataset_cls = DATASETS.get("multidigits")
    dataset = dataset_cls(dataset_cls.Params())
    splits = dataset.load()
    taskset = dataset_cls.taskset(dataset.params)
    pml_cls = METHODS.get("pml")
    device = torch.device("cpu")
    print(
        f"budget {suite.budget.limit:.3g} {suite.budget.kind}; "
        f"recalibration on the last {args.recalibration_batches} batches"
    )
    for seed in args.seeds:
        seed_everything(seed)
        params = pml_cls.Params(bn_recalibration_batches=args.recalibration_batches)
        method = pml_cls(params, lenet_with_batchnorm(), taskset, suite.training)
        batches = training_batches(splits.train, suite.training.batch_size, seed, device)
        first = next(batches)
        budget = Budget(suite.budget.kind, suite.budget.limit)
        engine = get_engine("loop")(method.model, taskset, budget, first)
        batch, steps = first, 0
        while True:
            try:
                method.step(batch, engine)
            except BudgetExhausted:
                break
            steps += 1
            batch = next(batches)
        points = method.evaluation_points()
        recalibrated_views = [s.model for s in method.solutions()]
        shared_views = [method.model.at(point) for point in points]
        fronts = {}
        for name, views in (
            ("shared statistics", shared_views),
            ("recalibrated per α", recalibrated_views),
        ):
            fronts[name] = np.array(
                [evaluate_model(v, taskset, splits.test, device)[2] for v in views]
            )
        print(f"seed {seed}: {steps} steps")
        for name, front in fronts.items():
            value = hypervolume(front, taskset.hv_reference).value
            ends = "  ".join(
                f"α={alpha}: {front[row][0]:.3f},{front[row][1]:.3f}"
                for alpha, row in (("(1,0)", -1), ("(.5,.5)", 5), ("(0,1)", 0))
            )
            print(f"  {name:>20}: test hypervolume {value:.4f} | errors {ends}")


if __name__ == "__main__":
    main()
