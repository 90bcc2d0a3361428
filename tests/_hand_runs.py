"""Runs built by hand (no training) for the selection and leaderboard tests.

Two tasks ``left`` and ``right`` scored by accuracy (objective: error = 1 - accuracy), with
single-task baselines whose numbers make the validation choice differ from the test choice.
"""

import numpy as np
from mtlbench.harness.evaluation import SolutionResult
from mtlbench.harness.metrics import hypervolume
from mtlbench.harness.runner import result_rows
from mtlbench.harness.suite import RunSpec
from mtlbench.harness.trainer import RunResult

TASKS = ["left", "right"]
# baseline accuracies (val = test): left 0.9, right 0.3
BASELINE = [0.9, 0.3]
# A is best on test, B is best on validation:
#   A val (0.95, 0.30): Δm = -100/2 * (0.05/0.9)              = -2.778 ; mean val error 0.375
#   B val (0.90, 0.33): Δm = -100/2 * (0.03/0.3)              = -5.000 ; mean val error 0.385
#   A test (0.95, 0.36): Δm = -100/2 * (0.05/0.9 + 0.06/0.3)  = -12.778
#   B test (0.85, 0.30): Δm = +100/2 * (0.05/0.9)             = +2.778
SOLUTIONS = {"A": ([0.95, 0.30], [0.95, 0.36]), "B": ([0.90, 0.33], [0.85, 0.30])}


def spec(
    method: str, seed: int = 0, params: dict | None = None, dataset: str = "multidigits"
) -> RunSpec:
    return RunSpec(
        suite="hand",
        method=method,
        method_label=method,
        method_params=params or {},
        engine="loop",
        engine_options={},
        dataset=dataset,
        dataset_params={},
        seed=seed,
        budget_kind="flops",
        budget_limit=1e9,
        training={},
        scoring="final",
        device="cpu",
    )


def solution(index: int, label: str, val: list[float], test: list[float]) -> SolutionResult:
    def errors(metrics: list[float]) -> list[float]:
        return [1 - m for m in metrics]

    return SolutionResult(
        index, label, None, [0.0, 0.0], val, errors(val), [0.0, 0.0], test, errors(test)
    )


def result(run_spec: RunSpec, solutions: list[SolutionResult]) -> RunResult:
    """A completed run; its hypervolume is that of its solutions' test objectives."""
    objectives = np.array([s.test_objectives for s in solutions])
    return RunResult(
        run_spec,
        status="completed",
        stop_reason="budget",
        solutions=solutions,
        hypervolume=hypervolume(objectives, [1.0, 1.0]),
        hv_reference=[1.0, 1.0],
        task_names=TASKS,
        higher_is_better=[True, True],
        budget={"budget_spent": 1e9, "budget_spent_flops": 1e9},
        steps=10,
        wall_seconds=1.0,
    )


OFF_TASK_ACCURACY = 0.02  # a single-task run's accuracy on the task it does not train


def baseline_rows(
    seed: int = 0, metrics: list[float] = BASELINE, dataset: str = "multidigits"
) -> list[dict]:
    """The rows of the two single-task runs of ``seed`` (task t's own accuracy: metrics[t])."""
    rows = []
    for task in range(2):
        own = [metrics[t] if t == task else OFF_TASK_ACCURACY for t in range(2)]
        run_spec = spec("single_task", seed, {"task": task}, dataset)
        rows += result_rows(result(run_spec, [solution(0, "model", own, own)]), "", [])
    return rows


def two_solution_run(seed: int = 0, method: str = "ew", dataset: str = "multidigits") -> RunResult:
    """Solutions A (best on test) and B (best on validation)."""
    solutions = [solution(i, label, *SOLUTIONS[label]) for i, label in enumerate("AB")]
    return result(spec(method, seed, dataset=dataset), solutions)


def one_solution_run(
    accuracies: list[float], seed: int = 0, method: str = "ew", dataset: str = "multidigits"
) -> RunResult:
    """One solution with these accuracies on val and test."""
    return result(
        spec(method, seed, dataset=dataset), [solution(0, "model", accuracies, accuracies)]
    )
