"""The ``analytic`` dataset: objectives and fronts against pymoo, the closed-form fronts and
hypervolumes, the ``objective`` task kind, and the parameter checks of a suite.

Oracles: pymoo's ZDT1/ZDT2/DTLZ2 (objectives and Pareto fronts), P1's independent ZDT2-variant
(``tests/_zdt2.py``), numpy for the quadratics, scipy quadrature for the 2-objective
hypervolumes, moocore for non-dominance.
"""

from __future__ import annotations

import math

import moocore
import numpy as np
import pytest
import torch
from _zdt2 import zdt2_objectives
from mtlbench.datasets.analytic import AnalyticParams, problem_of
from mtlbench.harness.config import ConfigError, parse_suite
from mtlbench.harness.evaluation import evaluate_model
from mtlbench.harness.metrics import hypervolume
from mtlbench.harness.registry import DATASETS, METHODS
from scipy.integrate import quad
from scipy.spatial import cKDTree

ANALYTIC = DATASETS.get("analytic")
PROBLEMS = [
    {"problem": "zdt2_ma2020"},
    {"problem": "zdt1"},
    {"problem": "zdt2"},
    {"problem": "dtlz2"},
    {"problem": "quadratic"},
    {"problem": "quadratic", "num_objectives": 3},
]
# stated in datasets/_analytic_problems.py: how far every front point may lie from the sample
COVERING_RADIUS = {"zdt1": 3.7e-5, "zdt2": 3.7e-5, "dtlz2": 4.7e-3, "quadratic": 4.1e-5}


def _label(params: dict) -> str:
    return "-".join(str(v) for v in params.values())


def _model(params: dict, seed: int = 0):
    torch.manual_seed(seed)
    dataset = ANALYTIC(AnalyticParams(**params))
    return dataset, dataset.build_model()


@pytest.mark.parametrize("name", ["zdt1", "zdt2", "dtlz2"])
def test_objectives_match_pymoo_on_the_box(name: str) -> None:
    """The heads on z ∈ [0, 1]^n, and the whole model at θ with z = sin²θ, equal pymoo."""
    from pymoo.problems import get_problem

    pymoo_problem = get_problem(name, n_var=12, **({"n_obj": 3} if name == "dtlz2" else {}))
    box = np.random.default_rng(0).random((64, 12))
    problem = problem_of(AnalyticParams(problem=name, num_variables=12))
    ours = problem.objectives(torch.from_numpy(box)).numpy()
    np.testing.assert_allclose(ours, pymoo_problem.evaluate(box), rtol=1e-12, atol=1e-12)

    _, model = _model({"problem": name, "num_variables": 12})
    theta = model.get_parameter("encoder.theta").detach().numpy()
    outputs = model(torch.zeros(1, 1, dtype=torch.float64))
    assert outputs.dtype == torch.float64 and outputs.shape == (1, problem.num_objectives, 1)
    expected = pymoo_problem.evaluate(np.sin(theta)[None] ** 2)
    np.testing.assert_allclose(outputs[:, :, 0].detach().numpy(), expected, rtol=1e-12)


def test_ma2020_variant_matches_the_independent_implementation() -> None:
    _, model = _model({"problem": "zdt2_ma2020"})
    for seed in range(5):
        theta = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            model.get_parameter("encoder.theta").copy_(theta)
        outputs = model(torch.zeros(2, 1, dtype=torch.float64))[:, :, 0]
        torch.testing.assert_close(outputs[0], zdt2_objectives(theta), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(outputs[1], outputs[0])


def test_quadratic_objectives_are_squared_distances_to_the_anchors() -> None:
    _, model = _model({"problem": "quadratic", "num_objectives": 3, "num_variables": 5})
    theta = model.get_parameter("encoder.theta").detach().numpy()
    anchors = np.zeros((3, 5))
    anchors[[0, 1, 2], [0, 1, 2]] = 1 / math.sqrt(2)
    expected = ((theta[None] - anchors) ** 2).sum(axis=1)
    outputs = model(torch.zeros(1, 1, dtype=torch.float64))[0, :, 0].detach().numpy()
    np.testing.assert_allclose(outputs, expected, rtol=1e-13)


def _on_the_front_residual(params: dict, front: np.ndarray) -> np.ndarray:
    """How far each sample point is from satisfying the front's own equation."""
    first = front[:, 0]
    if params["problem"] == "zdt1":
        return front[:, 1] - (1 - np.sqrt(first))
    if params["problem"] in ("zdt2", "zdt2_ma2020"):
        return front[:, 1] - (1 - first**2)
    if params["problem"] == "dtlz2":
        return np.linalg.norm(front, axis=1) - 1
    if params.get("num_objectives", 2) == 2:
        return np.sqrt(front[:, 0]) + np.sqrt(front[:, 1]) - 1
    # f_t = ½||λ − e_t||² for a λ of the simplex: recover λ and check it
    shift = (1 + front.sum(axis=1)) / 3
    weights = shift[:, None] - front
    assert weights.min() > -1e-12
    return (weights**2).sum(axis=1) + 1 - 2 * shift


@pytest.mark.parametrize("params", PROBLEMS, ids=_label)
def test_true_front_is_a_dense_non_dominated_sample_of_the_front(params: dict) -> None:
    front = ANALYTIC.true_front(AnalyticParams(**params))
    taskset = ANALYTIC.taskset(AnalyticParams(**params))
    assert front.dtype == np.float64 and front.shape[1] == len(taskset) and len(front) > 20_000
    assert np.abs(_on_the_front_residual(params, front)).max() < 1e-9
    assert front.min() >= 0 and front.max() <= 1 + 1e-12
    assert moocore.is_nondominated(front).all()
    assert taskset.hv_reference == [1.1] * len(taskset)


@pytest.mark.parametrize("name", ["zdt1", "zdt2", "dtlz2"])
def test_sample_covers_pymoos_front_within_the_stated_radius(name: str) -> None:
    from pymoo.problems import get_problem
    from pymoo.util.ref_dirs import get_reference_directions

    if name == "dtlz2":
        directions = get_reference_directions("das-dennis", 3, n_partitions=97)
        reference_front = get_problem(name, n_obj=3).pareto_front(directions)
    else:
        reference_front = get_problem(name).pareto_front(n_pareto_points=5000)
    sample = ANALYTIC.true_front(AnalyticParams(problem=name))
    distances, _ = cKDTree(sample).query(reference_front)
    assert distances.max() <= COVERING_RADIUS[name]


@pytest.mark.parametrize(
    "params, area_under_front, stated_shortfall",
    [
        ({"problem": "zdt1"}, lambda f: 1 - math.sqrt(f), 2.3e-5),
        ({"problem": "zdt2"}, lambda f: 1 - f * f, 2.3e-5),
        ({"problem": "zdt2_ma2020"}, lambda f: 1 - f * f, 2.3e-5),
        ({"problem": "quadratic"}, lambda f: (1 - math.sqrt(f)) ** 2, 1.8e-5),
        ({"problem": "dtlz2"}, None, 2.6e-3),
    ],
    ids=lambda value: _label(value) if isinstance(value, dict) else "",
)
def test_sample_hypervolume_is_within_the_stated_error(
    params, area_under_front, stated_shortfall
) -> None:
    problem = problem_of(AnalyticParams(**params))
    if area_under_front is None:  # the box minus the unit ball's positive octant
        independent = 1.1**3 - (4 / 3 * math.pi) / 8
    else:  # [0, 1] × [0, 1.1] above the curve, plus the strip (1, 1.1] × [0, 1.1]
        independent = 1.1 - quad(area_under_front, 0, 1, epsabs=1e-13)[0] + 0.1 * 1.1
    assert problem.true_hypervolume() == pytest.approx(independent, rel=1e-12)
    sampled = hypervolume(problem.front(), list(problem.reference)).value
    shortfall = independent - sampled
    assert 0 < shortfall <= stated_shortfall * 1.05


def test_objective_task_kind_records_the_objective_itself() -> None:
    """Loss, metric and objective of an ``objective`` task are the model's output; evaluating a
    split (as the trainer does) records the problem's objective values, in float64."""
    params = {"problem": "quadratic", "num_objectives": 3}
    dataset, model = _model(params)
    taskset = ANALYTIC.taskset(dataset.params)
    assert [t.kind for t in taskset] == ["objective"] * 3
    assert all(not t.higher_is_better and t.objective_name == "objective" for t in taskset)
    splits = dataset.load()
    inputs, targets = splits.train.tensors
    assert inputs.dtype == targets.dtype == torch.float64 and len(inputs) == 1
    outputs = model(inputs)
    expected = outputs[0, :, 0].detach()
    torch.testing.assert_close(taskset.losses(outputs, targets).detach(), expected)
    losses, metrics, objectives = evaluate_model(model, taskset, splits.test, torch.device("cpu"))
    assert losses == metrics == objectives == pytest.approx(expected.tolist(), rel=1e-15)


def test_learning_datasets_have_no_true_front() -> None:
    synthetic = DATASETS.get("synthetic")
    assert synthetic.true_front(synthetic.Params()) is None


@pytest.mark.parametrize(
    "params, field",
    [
        ({"problem": "zdt2_ma2020", "num_variables": 5}, "num_variables"),
        ({"problem": "zdt1", "num_variables": 1}, "num_variables"),
        ({"problem": "dtlz2", "num_objectives": 2}, "num_objectives"),
        ({"problem": "quadratic", "num_objectives": 3, "num_variables": 2}, "num_variables"),
        ({"problem": "quadratic", "num_objectives": 4}, "num_objectives"),
        ({"problem": "zdt3"}, "problem"),
    ],
)
def test_bad_parameters_are_one_config_line_naming_the_field(params: dict, field: str) -> None:
    suite = {
        "name": "bad",
        "methods": [{"name": "ew"}],
        "datasets": [{"name": "analytic", "params": params}],
        "budget": {"flops": 1e6},
    }
    with pytest.raises(ConfigError) as caught:
        parse_suite(suite, "suite.yaml")
    message = str(caught.value)
    assert "\n" not in message and "datasets[0].params" in message and field in message


def test_shipped_suite_runs_every_method_on_convex_and_non_convex_fronts() -> None:
    from pathlib import Path

    from mtlbench.harness.config import load_suite
    from mtlbench.harness.suite import expand_suite

    suite = load_suite(Path(__file__).parent.parent / "suites" / "analytic.yaml")
    methods = {entry.name for entry in suite.methods}
    assert methods == {name for name in METHODS.names() if not name.startswith(("test_", "_"))}
    problems = [problem_of(AnalyticParams(**entry.params)) for entry in suite.datasets]
    assert {p.num_objectives for p in problems} == {2, 3}
    assert {"zdt2_ma2020", "zdt1", "dtlz2", "quadratic"} <= {p.name for p in problems}
    assert suite.budget.kind == "flops" and suite.training.batch_size == 1
    assert all(spec.dataset == "analytic" for spec in expand_suite(suite))
