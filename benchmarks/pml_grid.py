"""PML's evaluation grid: what one evaluation of every α point costs, per dataset.

Evaluation is not charged to the budget, so a dense grid costs evaluation time only: every point
of the grid is one model evaluated on val and test, at each anytime point (``eval_every``) and at
the end. This script times ``harness.evaluation.evaluate_solutions`` (val + test, as the trainer
runs it) for a PML ensemble built on each dataset's default model (the weights do not change the
time), with the default grid and with the old 10-division one, and prints seconds per point and
per evaluation.

Run: ``python benchmarks/pml_grid.py [--repeats 3]``. The datasets are the embedded ones
(no download): multidigits as the quickstart loads it, synthetic with 3 tasks, analytic zdt1.
"""

from __future__ import annotations

import argparse
import time

import torch
from mtlbench.harness.evaluation import evaluate_solutions
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.registry import DATASETS, METHODS
from mtlbench.harness.run_setup import seed_everything

CASES: list[tuple[str, dict]] = [
    ("multidigits", {}),
    ("synthetic", {"num_tasks": 3}),
    ("analytic", {"problem": "zdt1"}),
]


def time_grid(name: str, params: dict, pml_params: dict, repeats: int) -> tuple[int, float]:
    """(number of points, best wall seconds of one val + test evaluation of all of them)."""
    dataset_cls = DATASETS.get(name)
    dataset = dataset_cls(dataset_cls.Params.model_validate(params))
    splits = dataset.load()
    taskset = dataset_cls.taskset(dataset.params)
    seed_everything(0)
    pml_cls = METHODS.get("pml")
    method = pml_cls(
        pml_cls.Params.model_validate(pml_params), dataset.build_model(), taskset, TrainingConfig()
    )
    device = torch.device("cpu")
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        results = evaluate_solutions(method, taskset, splits, device)
        best = min(best, time.perf_counter() - started)
    return len(results), best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"CPU, {torch.get_num_threads()} threads; best of {args.repeats}")
    for name, params in CASES:
        for label, pml_params in (
            ("default grid", {}),
            ("old grid (k=10)", {"grid_divisions": 10}),
        ):
            points, seconds = time_grid(name, params, pml_params, args.repeats)
            print(
                f"{name} {params or ''}: {label}: {points} points, {seconds:.2f} s per evaluation "
                f"(val + test), {1e3 * seconds / points:.1f} ms per point"
            )


if __name__ == "__main__":
    main()
