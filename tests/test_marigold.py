"""MARIGOLD (reconstruction): its weights reach MGDA's min-norm weights, its cost is T-free.

The quadratic problem: a linear encoder z = W x (the shared parameters W) and T linear
regression heads with squared error, so every task loss is a quadratic in W and the Gram matrix
of the task gradients is exact from the engine's Jacobian. The oracle for MGDA's weights is
quadprog on that Gram (min w^T M w on the simplex), checked by its KKT conditions.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _method_checks import check_method_properties, train_tiny
from mtlbench.harness.budget import Budget
from mtlbench.harness.gradients import GradientEngine, get_engine
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.model import MultiTaskModel, StackedMLPHeads
from mtlbench.harness.tasks import TaskSet, TaskSpec
from mtlbench.methods.marigold import Marigold, MarigoldParams, UpperLevel, tangent_directions
from mtlbench.methods.min_norm import min_norm_weights, two_vector_weight
from qpsolvers import solve_qp
from torch import nn

INPUTS, REPRESENTATION, SAMPLES = 6, 4, 48


def quadratic_problem(num_tasks: int, seed: int = 0, dtype: torch.dtype = torch.float32):
    """(model, taskset, batch): T squared-error regressions on a shared linear map (P = 24)."""
    torch.manual_seed(seed)
    encoder = nn.Linear(INPUTS, REPRESENTATION, bias=False)
    heads = StackedMLPHeads(num_tasks, REPRESENTATION, 1, hidden=None)
    model = MultiTaskModel(encoder, heads, num_tasks)
    taskset = TaskSet(
        [TaskSpec(f"y{t}", "regression", 1, regression_loss="mse") for t in range(num_tasks)]
    )
    inputs = torch.randn(SAMPLES, INPUTS)
    targets = inputs @ torch.randn(INPUTS, num_tasks) + 0.3 * torch.randn(SAMPLES, num_tasks)
    return model.to(dtype), taskset, (inputs.to(dtype), targets.to(dtype))


def exact_gram(engine: GradientEngine, batch) -> torch.Tensor:
    """M = J J^T (T, T) float64 from the per-task Jacobian, on a fresh state (nothing cached)."""
    jacobian = engine.shared_jacobian(engine.forward(batch)).double()
    return jacobian @ jacobian.T


def qp_min_norm_weights(gram: torch.Tensor) -> torch.Tensor:
    """argmin w^T M w on the simplex by quadprog (M scaled to unit trace for conditioning)."""
    size = gram.shape[0]
    scaled = (gram / gram.trace()).numpy()
    solution = solve_qp(
        2 * scaled + 1e-12 * np.eye(size),
        np.zeros(size),
        -np.eye(size),
        np.zeros(size),
        np.ones((1, size)),
        np.ones(1),
        solver="quadprog",
    )
    return torch.from_numpy(solution)


def make_method(model, taskset, seed: int = 0, training: TrainingConfig | None = None, **params):
    torch.manual_seed(seed)
    return Marigold(MarigoldParams(**params), model, taskset, training or TrainingConfig())


def unlimited_engine(model, taskset, batch) -> GradientEngine:
    return get_engine("loop")(model, taskset, Budget("flops", 1e30), batch)


# ---- the upper level alone (theta frozen: the same state every update) ---------------------
@pytest.mark.parametrize("estimator", ["exact_directional", "central"])
def test_upper_level_converges_to_min_norm_weights(estimator: str) -> None:
    """T = 5 with two zero weights at the optimum: w -> quadprog's weights within 1e-5 (L1)."""
    model, taskset, batch = quadratic_problem(5, seed=3)
    engine = unlimited_engine(model, taskset, batch)
    gram = exact_gram(engine, batch)
    optimum = qp_min_norm_weights(gram)
    assert 0 < int((optimum > 1e-6).sum()) < 5, "fixture should put MGDA's weights on a face"
    # The exact line search (weight_step 1; the default 0.3 damps it for noisy batches).
    method = make_method(model, taskset, estimator=estimator, weight_step=1.0)
    state = engine.forward(batch)
    for _ in range(150):
        method.update_task_weights(state, engine)
    weights = method.weights.double()
    assert (weights - optimum).abs().sum() < 1e-5
    # KKT of min w^T M w on the simplex: (M w)_t >= w^T M w, with equality where w_t > 0.
    objective = weights @ gram @ weights
    slack = gram @ weights - objective
    assert (slack > -1e-6 * objective).all()
    assert (slack[optimum > 1e-6].abs() < 1e-6 * objective).all()
    # The project's MGDA solver (active set, relative tolerance 1e-5 on the objective) agrees.
    solver_weights = min_norm_weights(gram).double()
    assert (weights - solver_weights).abs().sum() < 1e-4
    assert objective <= solver_weights @ gram @ solver_weights * (1 + 1e-9)


def test_one_update_at_two_tasks_is_the_closed_form_mgda_weight() -> None:
    """T = 2 has one tangent direction: one exact line search gives Sener & Koltun's Alg. 1."""
    model, taskset, batch = quadratic_problem(2, seed=1)
    engine = unlimited_engine(model, taskset, batch)
    gram = exact_gram(engine, batch)
    gamma = two_vector_weight(gram[0, 0], gram[0, 1], gram[1, 1])
    # One undamped line search (the default weight_step 0.3 goes 30% of the way).
    method = make_method(model, taskset, num_directions=1, weight_step=1.0)
    method.update_task_weights(engine.forward(batch), engine)
    torch.testing.assert_close(method.weights, torch.stack([gamma, 1 - gamma]), atol=1e-6, rtol=0)


def test_slopes_and_curvatures_against_the_gram() -> None:
    """d = 2 u^T M w and c = u^T M u: exact and central to 1e-5, forward biased by mu * c."""
    model, taskset, batch = quadratic_problem(6, seed=2)
    engine = unlimited_engine(model, taskset, batch)
    gram = exact_gram(engine, batch)
    state = engine.forward(batch)
    upper = UpperLevel(engine, state)
    weights = torch.distributions.Dirichlet(torch.ones(6, dtype=torch.float64)).sample()
    gradient = upper.gradient(weights)
    generator = torch.Generator().manual_seed(0)
    for distribution in ("pairs", "gaussian", "orthogonal"):
        for direction in tangent_directions(6, 4, distribution, generator).double():
            assert abs(float(direction.sum())) < 1e-6 and abs(float(direction.norm()) - 1) < 1e-6
            slope, curvature = 2 * direction @ gram @ weights, direction @ gram @ direction
            for estimator in ("exact_directional", "central"):
                got_slope, got_curvature, along = upper.slope_and_curvature(
                    weights, gradient, direction, estimator, 1.0
                )
                scale = float(weights @ gram @ weights)
                assert abs(got_slope - slope) < 1e-5 * scale
                assert abs(got_curvature - curvature) < 1e-5 * scale
                torch.testing.assert_close(along, upper.gradient(direction), rtol=1e-4, atol=1e-6)
            forward_slope, _, _ = upper.slope_and_curvature(
                weights, gradient, direction, "forward", 0.1
            )
            assert abs(forward_slope - (slope + 0.1 * curvature)) < 1e-4 * scale


def test_tangent_direction_second_moment() -> None:
    """Each distribution has E[u u^T] = (I - 11^T/T)/(T - 1) (Monte Carlo; 3e-3 is > 4 sigma)."""
    num_tasks = 5
    expected = (torch.eye(num_tasks) - 1 / num_tasks) / (num_tasks - 1)
    generator = torch.Generator().manual_seed(0)
    samples = {
        "pairs": tangent_directions(num_tasks, 200_000, "pairs", generator),
        "gaussian": tangent_directions(num_tasks, 200_000, "gaussian", generator),
        "orthogonal": torch.cat(
            [tangent_directions(num_tasks, 3, "orthogonal", generator) for _ in range(2_000)]
        ),
    }
    for distribution, draws in samples.items():
        moment = draws.T.double() @ draws.double() / len(draws)
        torch.testing.assert_close(moment, expected.double(), atol=3e-3, rtol=0, msg=distribution)


# ---- the full algorithm (theta moves too) ---------------------------------------------------
def test_full_algorithm_steps_theta_on_the_logged_weights_and_tracks_mgda() -> None:
    """SGD without momentum: -delta W / lr is the gradient of sum w_t L_t at the logged weights
    (the one reused by linearity, no extra backward). MGDA's weights move by ~0.48 (L1) over 300
    full-batch steps; MARIGOLD's stay within 2e-2 of them (one undamped line search per step,
    weight_step 1, measured 8e-3; the damped defaults lag more on this noise-free target,
    measured 1.7e-2). In float64 so that delta W / lr is exact enough to compare."""
    model, taskset, batch = quadratic_problem(5, seed=3, dtype=torch.float64)
    lr = 1e-3
    training = TrainingConfig(optimizer="sgd", momentum=0.0, lr=lr)
    method = make_method(model, taskset, training=training, num_directions=1, weight_step=1.0)
    engine = unlimited_engine(model, taskset, batch)
    initial_optimum = qp_min_norm_weights(exact_gram(engine, batch))
    reference_model, _, _ = quadratic_problem(5, seed=3, dtype=torch.float64)
    for step in range(300):
        before = {name: value.clone() for name, value in model.state_dict().items()}
        log = method.step(batch, engine)
        if step in (0, 7, 299):
            reference_model.load_state_dict(before)
            losses = taskset.losses(reference_model(batch[0]), batch[1])
            weighted = (log["weights"] * losses).sum()
            expected = torch.autograd.grad(weighted, reference_model.encoder.weight)[0]
            change = model.encoder.weight.detach() - before["encoder.weight"]
            torch.testing.assert_close(-change / lr, expected, rtol=1e-7, atol=1e-10)
    optimum = qp_min_norm_weights(exact_gram(engine, batch))
    assert (optimum - initial_optimum).abs().sum() > 0.3
    assert (method.weights.double() - optimum).abs().sum() < 2e-2


@pytest.mark.parametrize(
    "params, passes_per_step",
    [
        ({"num_directions": 1}, 2),
        ({}, 2),
        ({"num_directions": 2}, 3),
        ({"num_directions": 3}, 4),
        ({"estimator": "central", "num_directions": 2}, 5),
        (
            {
                "estimator": "forward",
                "step_rule": "fixed",
                "weight_step": 1e-3,
                "num_directions": 1,
            },
            2,
        ),
    ],
)
def test_backward_passes_per_step_do_not_depend_on_the_number_of_tasks(
    params, passes_per_step
) -> None:
    """Budget tally after 4 steps is identical for T = 2 and T = 40: 1 + q (or 1 + 2q) encoder
    backwards and heads-to-z backwards per step, one heads-parameter backward, one forward."""
    tallies = []
    for num_tasks in (2, 40):
        model, taskset, batch = quadratic_problem(num_tasks)
        budget = Budget("flops", 1e30)
        engine = get_engine("loop")(model, taskset, budget, batch)
        method = make_method(model, taskset, **params)
        for _ in range(4):
            method.step(batch, engine)
        tallies.append(dict(budget.passes_by_kind))
    assert tallies[0] == tallies[1]
    assert tallies[0] == {
        "encoder_forward": 4,
        "heads_forward": 4,
        "heads_backward_input": 4 * passes_per_step,
        "encoder_backward": 4 * passes_per_step,
        "heads_backward_params": 4,
    }


def test_update_every_k_steps() -> None:
    """k = 3: extra passes (q each) only on steps 0 and 3 of 5; w changes only there."""
    model, taskset, batch = quadratic_problem(4)
    budget = Budget("flops", 1e30)
    engine = get_engine("loop")(model, taskset, budget, batch)
    method = make_method(model, taskset, update_every=3)
    logged = [method.step(batch, engine)["weights"] for _ in range(5)]
    assert budget.passes_by_kind["encoder_backward"] == 5 + 2 * method.params.num_directions
    torch.testing.assert_close(logged[1], logged[2])
    assert not torch.equal(logged[2], logged[3])
    torch.testing.assert_close(logged[3], logged[4])


def test_resume_continues_identically() -> None:
    """state_dict carries w, the step count and the direction generator."""
    model, taskset, batch = quadratic_problem(6)
    method = make_method(model, taskset, update_every=2)
    engine = unlimited_engine(model, taskset, batch)
    for _ in range(3):
        method.step(batch, engine)
    saved = copy.deepcopy(method.state_dict())  # as a checkpoint would hold it
    continued = [method.step(batch, engine)["weights"] for _ in range(4)]
    other_model, _, _ = quadratic_problem(6, seed=9)
    resumed = make_method(other_model, taskset, seed=5, update_every=2)
    resumed.load_state_dict(saved)
    other_engine = unlimited_engine(other_model, taskset, batch)
    again = [resumed.step(batch, other_engine)["weights"] for _ in range(4)]
    for first, second in zip(continued, again, strict=True):
        torch.testing.assert_close(first, second)


def test_parameter_errors_name_the_field() -> None:
    taskset = quadratic_problem(3)[1]
    with pytest.raises(ValueError, match="forward"):
        Marigold.check(MarigoldParams(estimator="forward"), taskset)
    with pytest.raises(ValueError, match="num_directions"):
        Marigold.check(
            MarigoldParams(direction_distribution="orthogonal", num_directions=3), taskset
        )
    with pytest.raises(ValueError, match="smoothing_radius"):
        MarigoldParams(smoothing_radius=0)


# ---- shared property checks ---------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"estimator": "central", "direction_distribution": "gaussian", "num_directions": 2},
        {
            "step_rule": "fixed",
            "estimator": "forward",
            "smoothing_radius": 1e-3,
            "weight_step": 0.1,
        },
        {
            "direction_distribution": "orthogonal",
            "num_directions": 2,
            "update_every": 2,
            "head_weighting": "task_weights",
        },
    ],
)
def test_marigold_property_checks(params) -> None:
    check_method_properties("marigold", params)


def test_marigold_on_batched_engine_matches_loop_engine() -> None:
    """The engines differ only in how per-task quantities are batched: same weights and losses."""
    _, _, loop_logs = train_tiny("marigold", engine="loop")
    _, _, batched_logs = train_tiny("marigold", engine="batched")
    assert len(loop_logs) == len(batched_logs)
    for first, second in zip(loop_logs, batched_logs, strict=True):
        torch.testing.assert_close(first["weights"], second["weights"], atol=1e-5, rtol=0)
