"""Every method on the ``analytic`` problems: parameter-free heads, every local engine, and the
single-solution methods' end points against fronts computed here, independently.

Oracles: central finite differences (the engines' per-task gradients), scipy minimisation over
the front's own parameterisation (distance to the front: the image of the anchors' convex hull
for ``quadratic``, the curve f2 = 1 − √f1 for ``zdt1``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _analytic_runs import analytic_run
from mtlbench.harness.budget import Budget
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.registry import DATASETS, METHODS
from scipy.optimize import minimize, minimize_scalar

ANALYTIC = DATASETS.get("analytic")
METHOD_NAMES = [name for name in METHODS.names() if not name.startswith(("test_", "_"))]


@pytest.fixture(autouse=True)
def one_thread():
    """Float64 products of a few numbers are ~1000× slower on 2 busy BLAS threads than on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_trains_with_parameter_free_heads(method: str) -> None:
    """Three steps on the ZDT2 variant, whose heads have no parameters: the run completes, its
    objectives are finite, no heads-parameter pass is made or charged, and the element-wise
    rule gives the budget a positive spend."""
    result = analytic_run(method, {"problem": "zdt2_ma2020"}, steps=3)
    assert result.status == "completed", result.error
    assert result.steps == 3 and result.solutions
    objectives = np.array([s.test_objectives for s in result.solutions])
    assert objectives.shape[1] == 2 and np.isfinite(objectives).all()
    assert "flops_heads_backward_params" not in result.budget
    assert result.budget["budget_spent_flops"] > 0


def _objectives_of(model: torch.nn.Module, theta: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        model.get_parameter("encoder.theta").copy_(theta)
        return model(torch.zeros(1, 1, dtype=torch.float64))[0, :, 0].clone()


def _finite_difference_jacobian(model: torch.nn.Module, step: float = 1e-6) -> torch.Tensor:
    """(T, n) dF/dθ by central differences (float64), θ restored afterwards."""
    theta = model.get_parameter("encoder.theta").detach().clone()
    columns = []
    for index in range(len(theta)):
        shift = torch.zeros_like(theta)
        shift[index] = step
        upper = _objectives_of(model, theta + shift)
        lower = _objectives_of(model, theta - shift)
        columns.append((upper - lower) / (2 * step))
    _objectives_of(model, theta)
    return torch.stack(columns, dim=1)


@pytest.mark.parametrize("engine_name", ["loop", "batched", "representation"])
@pytest.mark.parametrize("problem", ["zdt2_ma2020", "dtlz2"])
def test_engines_give_the_finite_difference_gradients_with_parameter_free_heads(
    engine_name: str, problem: str
) -> None:
    torch.manual_seed(0)
    dataset = ANALYTIC(ANALYTIC.Params(problem=problem, num_variables=3))
    model, taskset = dataset.build_model(), ANALYTIC.taskset(dataset.params)
    batch = dataset.load().train.tensors
    expected = _finite_difference_jacobian(model)
    engine = get_engine(engine_name)(model, taskset, Budget("flops", 1e30), batch)
    state = engine.forward(batch)
    if engine_name != "representation":
        torch.testing.assert_close(engine.shared_jacobian(state), expected, rtol=1e-7, atol=1e-8)
    weights = torch.tensor([0.3] + [0.7 / (len(taskset) - 1)] * (len(taskset) - 1))
    model.zero_grad(set_to_none=True)
    engine.backward(engine.forward(batch), weights)
    combined = weights.double() @ expected
    torch.testing.assert_close(
        model.get_parameter("encoder.theta").grad, combined, rtol=1e-7, atol=1e-8
    )


def _distance_to_quadratic_front(point: np.ndarray) -> float:
    """min over the simplex λ of ||f(λ) − point||, f_t(λ) = ½||λ − e_t||² (the image of the
    anchors' hull), by SLSQP from the best of a grid of starts."""
    tasks = len(point)

    def gap(weights: np.ndarray) -> float:
        values = 0.5 * ((weights[None, :] - np.eye(tasks)) ** 2).sum(axis=1)
        return float(np.linalg.norm(values - point))

    grid = [np.array(w) / 20 for w in np.ndindex(*(21,) * tasks) if sum(w) == 20]
    start = min(grid, key=gap)
    solution = minimize(
        gap,
        start,
        method="SLSQP",
        bounds=[(0, 1)] * tasks,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return min(gap(start), float(solution.fun))


def _distance_to_zdt1_front(point: np.ndarray) -> float:
    """min over r = √f1 ∈ [0, 1] of ||(r², 1 − r) − point||, grid then bounded Brent."""

    def gap(root: float) -> float:
        return math.hypot(root * root - point[0], 1 - root - point[1])

    grid = np.linspace(0, 1, 10_001)
    best = grid[int(np.argmin([gap(r) for r in grid]))]
    refined = minimize_scalar(gap, bounds=(max(best - 1e-4, 0), min(best + 1e-4, 1)))
    return min(gap(best), float(refined.fun))


CONVEX_CASES = [
    ({"problem": "quadratic"}, _distance_to_quadratic_front, 60, 0.25),
    ({"problem": "quadratic", "num_objectives": 3}, _distance_to_quadratic_front, 60, 0.25),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    "method, method_params",
    [("ew", {"preference": [0.2, 0.5, 0.3]}), ("mgda", {}), ("mgda_ub", {}), ("marigold", {})],
    ids=["ew-preference", "mgda", "mgda_ub", "marigold"],
)
@pytest.mark.parametrize("case", CONVEX_CASES, ids=["quadratic-2", "quadratic-3"])
def test_single_solution_methods_land_on_the_convex_quadratic_fronts(
    case, method: str, method_params: dict, seed: int
) -> None:
    dataset_params, distance_to_front, steps, lr = case
    tasks = dataset_params.get("num_objectives", 2)
    if "preference" in method_params:
        method_params = {"preference": method_params["preference"][:tasks]}
    result = analytic_run(method, dataset_params, steps, method_params, seed=seed, lr=lr)
    assert result.status == "completed", result.error
    (solution,) = result.solutions
    assert distance_to_front(np.array(solution.test_objectives)) <= 1e-3


def test_equal_weighting_with_a_preference_lands_on_the_zdt1_front() -> None:
    """The weighted sum ½ f1 + ½ f2 on ZDT1's convex front: the tangent point f1 = ¼."""
    result = analytic_run("ew", {"problem": "zdt1"}, steps=200, seed=0, lr=0.5)
    (solution,) = result.solutions
    objectives = np.array(solution.test_objectives)
    assert _distance_to_zdt1_front(objectives) <= 1e-3
    assert objectives[0] == pytest.approx(0.25, abs=1e-3)


@pytest.mark.parametrize("problem", ["zdt1", "zdt2"])
def test_mgda_stops_at_a_weakly_pareto_optimal_point_on_zdt(problem: str) -> None:
    """MGDA decreases every objective at every step, so f1 = z1 only falls; on the face z1 = 0
    (θ1 = 0) ∇f1 vanishes, the min-norm direction is 0 and MGDA stops, with g > 1: a weakly
    Pareto-optimal point (nothing has a smaller f1) far from the front (docs/analytic.md)."""
    result = analytic_run("mgda", {"problem": problem}, steps=300, seed=0, lr=0.1)
    assert result.status == "completed", result.error
    (solution,) = result.solutions
    first, second = solution.test_objectives
    assert first < 1e-4 and second > 1.5
    assert result.history[-1]["direction_norm"] < 1e-2
