"""Continuous Pareto expansion (Ma, Du & Matusik, ICML 2020): HVPs, MINRES, geometry, the method.

Oracles: an explicit Hessian (``torch.autograd.functional.hessian``), ``torch.func.jacrev``,
FlopCounterMode, numpy/scipy solves, and the analytic Pareto front of the ZDT2 variant.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse.linalg
import torch
from _method_checks import check_method_properties, train_tiny
from _problems import tiny_batches, tiny_model, tiny_taskset
from _zdt2 import distance_to_front, front_coverage, zdt2_batch, zdt2_model, zdt2_taskset
from mtlbench.harness.budget import Budget, BudgetExhausted
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.hvp import (
    _VARIANT_CACHE,
    HVP_VARIANTS,
    build_hvp,
    choose_hvp_variant,
    full_jacobian,
    full_parameter_names,
    full_parameters,
    hessian_operator,
    load_parameter_vector,
    parameter_vector,
)
from mtlbench.harness.method import TrainingConfig
from mtlbench.methods._minres import minres
from mtlbench.methods._pareto_geometry import (
    LocalFront,
    merge_local_fronts,
    preference_grid,
    simplex_samples,
    tangent_codes,
)
from mtlbench.methods.pareto_expansion import (
    ExplorationFinished,
    ParetoExpansion,
    ParetoExpansionParams,
)
from torch.func import functional_call, jacrev
from torch.utils.flop_counter import FlopCounterMode


# ---- Hessian-vector products -------------------------------------------------------------------
def _double_tiny(num_tasks: int = 3):
    model = tiny_model(num_tasks, seed=0, hidden=5).double()
    inputs, targets = tiny_batches(num_tasks, batch_size=6, count=1, seed=1)[0]
    return model, tiny_taskset(num_tasks), (inputs.double(), targets)


def _explicit_weighted_hessian(model, taskset, batch, weights) -> torch.Tensor:
    """sum_t w_t H_t (N, N) by autograd.functional.hessian of a function of the flat vector."""
    names, params = full_parameter_names(model), full_parameters(model)

    def weighted_loss(flat: torch.Tensor) -> torch.Tensor:
        pieces, offset = {}, 0
        for name, p in zip(names, params, strict=True):
            pieces[name] = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        losses = taskset.losses(functional_call(model, pieces, (batch[0],)), batch[1])
        return (weights * losses).sum()

    return torch.autograd.functional.hessian(weighted_loss, parameter_vector(model))


@pytest.mark.parametrize("variant", HVP_VARIANTS)
def test_hvp_equals_explicit_hessian_times_vector(variant: str) -> None:
    model, taskset, batch = _double_tiny()
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    hessian = _explicit_weighted_hessian(model, taskset, batch, weights)
    apply = build_hvp(model, taskset, batch, weights, variant)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):  # the graph is reused across products
        vector = torch.randn(hessian.shape[0], generator=generator, dtype=torch.float64)
        assert torch.allclose(apply(vector), hessian @ vector, atol=1e-5, rtol=0)


def test_full_jacobian_matches_jacrev_and_is_charged() -> None:
    model, taskset, batch = _double_tiny()
    budget = Budget("flops", 1e15)
    engine = get_engine("loop")(model, taskset, budget, batch)
    losses, jacobian = full_jacobian(engine, batch)
    names = full_parameter_names(model)
    primals = {n: p.detach() for n, p in zip(names, full_parameters(model), strict=True)}
    rows = jacrev(lambda p: taskset.losses(functional_call(model, p, (batch[0],)), batch[1]))(
        primals
    )
    expected = torch.cat([rows[n].reshape(3, -1) for n in names], dim=1)
    assert torch.allclose(jacobian, expected, atol=1e-10)
    assert torch.allclose(losses, taskset.losses(model(batch[0]), batch[1]))
    passes = budget.passes_by_kind
    assert passes["encoder_backward"] == 3 and passes["heads_backward_params"] == 3


def test_hvp_charged_at_its_flop_counter_cost() -> None:
    """Building charges one set-up; each product one "hvp" at FlopCounterMode's count."""
    model, taskset, batch = _double_tiny()
    budget = Budget("flops", 1e15)
    engine = get_engine("loop")(model, taskset, budget, batch)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    operator = hessian_operator(engine, batch, weights, "double_backward")
    vector = torch.ones(sum(p.numel() for p in full_parameters(model)), dtype=torch.float64)
    with FlopCounterMode(display=False) as counter:
        for _ in range(4):
            operator(vector)
    assert budget.passes_by_kind["hvp"] == 4 and budget.passes_by_kind["hvp_setup"] == 1
    assert operator.applications == 4
    measured = counter.get_total_flops()
    assert measured > 0 and abs(budget.flops_by_pass["hvp"] - measured) / measured < 1e-6


def test_hvp_refuses_before_overspending() -> None:
    model, taskset, batch = _double_tiny()
    engine = get_engine("loop")(model, taskset, Budget("flops", 1e15), batch)
    weights = torch.full((3,), 1 / 3, dtype=torch.float64)
    hessian_operator(engine, batch, weights)  # measures the costs
    engine.budget = Budget("flops", engine.costs.flops("hvp_setup", 6) * 1.5)
    operator = hessian_operator(engine, batch, weights)
    with pytest.raises(BudgetExhausted):
        operator(torch.ones(sum(p.numel() for p in full_parameters(model)), dtype=torch.float64))
    assert engine.budget.spent_flops <= engine.budget.limit and operator.applications == 0


def test_hvp_variant_choice_is_cached_per_architecture() -> None:
    model, taskset, batch = _double_tiny()
    weights = torch.full((3,), 1 / 3, dtype=torch.float64)
    first = choose_hvp_variant(model, taskset, batch, weights, repeats=1)
    assert first in HVP_VARIANTS
    assert (
        len(
            [
                k
                for k in _VARIANT_CACHE
                if k[1] == tuple(tuple(p.shape) for p in full_parameters(model))
            ]
        )
        == 1
    )
    other_model, _, _ = _double_tiny()
    assert choose_hvp_variant(other_model, taskset, batch, weights, repeats=1) == first


def test_parameter_vector_round_trip_does_not_alias() -> None:
    model, _, _ = _double_tiny()
    stored = parameter_vector(model) * 2
    kept = stored.clone()
    load_parameter_vector(model, stored)
    assert torch.equal(parameter_vector(model), kept)
    with torch.no_grad():
        for p in full_parameters(model):
            p.add_(1.0)  # training the model must not change the stored vector
    assert torch.equal(stored, kept)
    with pytest.raises(ValueError, match="parameters"):
        load_parameter_vector(model, stored[:-1])


# ---- MINRES --------------------------------------------------------------------------------------
def _indefinite_system(size: int = 40, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    eigenvalues = torch.cat(
        [
            torch.linspace(-4.0, -0.5, size // 3, dtype=torch.float64),
            torch.linspace(0.3, 6.0, size - size // 3, dtype=torch.float64),
        ]
    )
    matrix = basis @ torch.diag(eigenvalues) @ basis.T
    rhs = torch.randn(size, generator=generator, dtype=torch.float64)
    return matrix, rhs


@pytest.mark.parametrize("check_every", [1, 5, 7])
def test_minres_solves_symmetric_indefinite_system(check_every: int) -> None:
    matrix, rhs = _indefinite_system()
    result = minres(
        lambda v: matrix @ v, rhs, tolerance=1e-10, max_iterations=200, check_every=check_every
    )
    expected = np.linalg.solve(matrix.numpy(), rhs.numpy())
    assert np.allclose(result.solution.numpy(), expected, atol=1e-8)
    assert result.converged and result.true_residual < 1e-9
    assert result.iterations <= 50 and abs(result.estimated_residual - result.true_residual) < 1e-9
    assert result.products <= result.iterations + check_every + 1


def test_minres_with_shift_and_iterates_match_scipy() -> None:
    matrix, rhs = _indefinite_system(seed=1)
    shifted = minres(lambda v: matrix @ v, rhs, shift=0.7, tolerance=1e-10, max_iterations=200)
    expected = np.linalg.solve(matrix.numpy() + 0.7 * np.eye(40), rhs.numpy())
    assert np.allclose(shifted.solution.numpy(), expected, atol=1e-8)
    for iterations in (3, 12):  # truncated runs: the same Krylov iterate as scipy's MINRES
        ours = minres(lambda v: matrix @ v, rhs, tolerance=1e-14, max_iterations=iterations)
        theirs, _ = scipy.sparse.linalg.minres(
            matrix.numpy(), rhs.numpy(), rtol=1e-14, maxiter=iterations
        )
        assert ours.iterations == iterations and not ours.converged
        assert np.allclose(ours.solution.numpy(), theirs, atol=1e-10)
        residual = np.linalg.norm(rhs.numpy() - matrix.numpy() @ theirs) / np.linalg.norm(
            rhs.numpy()
        )
        assert abs(ours.true_residual - residual) < 1e-10


def test_minres_zero_rhs_and_bad_input() -> None:
    result = minres(lambda v: 2 * v, torch.zeros(5))
    assert result.iterations == 0 and result.converged and not result.solution.any()
    with pytest.raises(ValueError, match="rhs must be a vector"):
        minres(lambda v: v, torch.zeros(2, 2))


# ---- geometry -----------------------------------------------------------------------------------
def test_preference_grid_and_tangent_codes() -> None:
    grid = preference_grid(2, 5)
    assert torch.allclose(grid[:, 0], torch.arange(1, 6, dtype=torch.float64) / 6)
    three = preference_grid(3, 3)
    assert (
        three.shape == (3, 3)
        and (three > 0).all()
        and torch.allclose(three.sum(1), torch.ones(3, dtype=torch.float64))
    )
    codes = tangent_codes(3, 4, torch.Generator().manual_seed(0))
    assert codes.shape == (6, 3) and {tuple(c) for c in codes.tolist()}.isdisjoint(
        {(1, 1, 1), (0, 0, 0)}
    )
    for first, second in zip(
        codes, codes.roll(-1, dims=0), strict=True
    ):  # neighbours differ in one bit
        assert int((first != second).sum()) == 1
    assert torch.equal(tangent_codes(2, 4, torch.Generator()), torch.eye(2, dtype=torch.float64))
    assert tangent_codes(5, 4, torch.Generator().manual_seed(0)).shape == (4, 5)


def test_simplex_samples_are_interior_barycentric_coordinates() -> None:
    assert simplex_samples(2, 3) == [(0.75, 0.25), (0.5, 0.5), (0.25, 0.75)]
    for count in (1, 3, 6):
        samples = simplex_samples(3, count)
        assert len(samples) == count and len(set(samples)) == count
        assert all(abs(sum(s) - 1) < 1e-12 and min(s) > 0 for s in samples)


def test_local_fronts_merge_where_images_meet() -> None:
    """Fronts A and B overlap along the curve f2 = 1 - f1 (merged; B's dominated end dropped);
    C lies apart (its own front)."""
    images = {
        0: [0.20, 0.80],
        1: [0.30, 0.70],
        2: [0.40, 0.60],  # A: seed 0, one ray
        3: [0.35, 0.65],
        4: [0.45, 0.60],
        5: [0.50, 0.62],  # B: seed 3; 4 and 5 dominated by 2
        6: [0.90, 0.10],
        7: [0.95, 0.05],  # C: far away
    }
    images_t = {k: torch.tensor(v, dtype=torch.float64) for k, v in images.items()}
    fronts = [LocalFront(0, [[0, 1, 2]]), LocalFront(3, [[3, 4, 5]]), LocalFront(6, [[6, 7]])]
    merged = merge_local_fronts(fronts, images_t)
    assert sorted(m.members for m in merged) == [[0, 1], [2]]
    joined = next(m for m in merged if m.members == [0, 1])
    assert (4, 5) not in joined.simplices and (3, 4) in joined.simplices
    assert {(0, 1), (1, 2)} <= set(joined.simplices)


def test_three_task_local_front_has_triangles_between_neighbouring_rays() -> None:
    front = LocalFront(0, [[0, 1, 2], [0, 3], [0, 4, 5]], cyclic=True)
    simplices = front.simplices()
    assert (0, 1, 3) in simplices and (0, 3, 4) in simplices and (0, 4, 1) in simplices
    # depth 2 only between rays 2 and 0 (ray 1 is one step long): a quad split in two
    assert (4, 5, 2) in simplices and (4, 1, 2) in simplices
    assert all(not {2, 3} <= set(simplex) and not {3, 5} <= set(simplex) for simplex in simplices)
    assert len(simplices) == 5 + 3 + 2  # segments, depth-1 triangles, the split quad


# ---- the method on the ZDT2 variant ------------------------------------------------------------
def _explore_zdt2() -> ParetoExpansion:
    """MGDA seed near the Pareto set, then expansion with correction until every ray stops."""
    start = torch.tensor(
        [
            -math.pi + 0.3,
            1.05 * math.sqrt(math.pi) * math.cos(0.5),
            1.05 * math.sqrt(math.pi) * math.sin(0.5),
        ]
    )
    model, taskset, batch = zdt2_model(start), zdt2_taskset(), zdt2_batch()
    params = ParetoExpansionParams(
        seeding="mgda",
        num_seeds=1,
        seed_steps=50,
        damping=0.1,
        step_size=0.1,
        steps_per_direction=40,
        correction_steps=30,
        correction_tolerance=1e-9,
        minres_max_iterations=5,
        minres_check_every=1,
        samples_per_simplex=2,
    )
    training = TrainingConfig(batch_size=4, optimizer="sgd", lr=0.05, momentum=0.0)
    method = ParetoExpansion(params, model, taskset, training)
    engine = get_engine("loop")(method.model, taskset, Budget("flops", 1e30), batch)
    with pytest.raises(ExplorationFinished):
        for _ in range(500):
            method.step(batch, engine)
    return method


@pytest.fixture(scope="module")
def zdt2_method() -> ParetoExpansion:
    return _explore_zdt2()


def test_zdt2_expanded_points_lie_on_and_cover_the_true_front(zdt2_method) -> None:
    images = torch.stack([p.image for p in zdt2_method.points])
    assert len(images) >= 20
    assert float(distance_to_front(images).max()) < 1e-3
    # stated coverage: 95% of the front (even in f1) lies within 0.05 of an explored point
    assert front_coverage(images, radius=0.05) >= 0.95
    reasons = {ray.stop_reason for ray in zdt2_method.rays}
    assert reasons <= {"edge of the front", "image folds back"}


def test_zdt2_every_point_is_stationary_after_correction(zdt2_method) -> None:
    assert max(p.kkt_residual for p in zdt2_method.points) < 1e-6
    for point in zdt2_method.points:
        assert point.alpha is not None and abs(float(point.alpha.sum()) - 1) < 1e-9
    for report in zdt2_method.reports:  # 3 variables: MINRES is exact within 3 iterations
        assert report.converged and report.iterations <= 3 and report.true_residual < 1e-8


def test_zdt2_continuous_front_samples_lie_on_the_front(zdt2_method) -> None:
    inputs = zdt2_batch()[0]
    solutions = list(zdt2_method.solutions())
    sampled = [s for s in solutions if s.label.startswith("front")]
    assert len(sampled) == 2 * (len(zdt2_method.points) - 1)  # 2 per segment, one merged front
    with torch.no_grad():
        images = torch.stack([s.model(inputs)[0, :, 0] for s in solutions])
    assert float(distance_to_front(images).max()) < 1e-3
    for solution in solutions:
        assert len(solution.coordinates) == 2 and abs(sum(solution.coordinates) - 1) < 1e-9
    # the alpha coordinate orders the front: f1 decreases as task 1's weight... grows
    order = np.argsort([s.coordinates[0] for s in solutions])
    f1 = images[order, 0].numpy()
    assert np.all(np.diff(f1) <= 1e-6) or np.all(np.diff(f1) >= -1e-6)


# ---- the method in the harness -----------------------------------------------------------------
def test_pareto_expansion_passes_the_shared_property_checks_while_expanding() -> None:
    check_method_properties(
        "pareto_expansion",
        {
            "num_seeds": 1,
            "seed_budget_fraction": 0.3,
            "minres_max_iterations": 2,
            "minres_check_every": 1,
            "hvp_variant": "double_backward",
        },
    )


def test_expansion_on_three_tasks_charges_every_product() -> None:
    params = {
        "num_seeds": 2,
        "seed_budget_fraction": 0.4,
        "minres_max_iterations": 4,
        "minres_check_every": 2,
        "steps_per_direction": 2,
        "samples_per_simplex": 1,
    }
    method, budget, logs = train_tiny("pareto_expansion", params, budget_steps=300)
    assert len(method.reports) >= 6 and len(method.points) > 2
    # every product of the finished solves was charged, plus those of the solve the budget cut
    unreported = budget.passes_by_kind["hvp"] - sum(r.products for r in method.reports)
    assert 0 <= unreported <= 4 + 2
    assert budget.spent_flops <= budget.limit
    for report in method.reports:
        assert 1 <= report.iterations <= 4 and math.isfinite(report.true_residual)
    solutions = list(method.solutions())
    triangles = [s for s in solutions if s.label.startswith("front") and s.label.count("*") == 3]
    assert triangles, "3 tasks: samples inside triangles between neighbouring rays"
    for solution in solutions:
        assert len(solution.coordinates) == 3 and abs(sum(solution.coordinates) - 1) < 1e-6
    expansion_logs = [log for log in logs if "minres_iterations" in log]
    assert expansion_logs and all(torch.isfinite(log["kkt_residual"]) for log in expansion_logs)


def test_state_dict_round_trip_restores_the_front() -> None:
    params = {
        "num_seeds": 1,
        "seed_budget_fraction": 0.4,
        "minres_max_iterations": 3,
        "steps_per_direction": 2,
    }
    method, _, _ = train_tiny("pareto_expansion", params, budget_steps=200)
    clone, _, _ = train_tiny("pareto_expansion", params, budget_steps=5)
    clone.load_state_dict(method.state_dict())
    inputs = tiny_batches(3, count=1, seed=5)[0][0]
    first, second = list(method.solutions()), list(clone.solutions())
    assert [s.label for s in first] == [s.label for s in second] and len(first) > 1
    with torch.no_grad():
        for a, b in zip(first, second, strict=True):
            assert torch.equal(a.model(inputs), b.model(inputs))


def test_params_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="minres_tolerance"):
        ParetoExpansionParams(minres_tolerance=2.0)
    with pytest.raises(ValueError, match="step_size"):
        ParetoExpansionParams(step_size=0.0)
    with pytest.raises(ValueError, match="at least 2 tasks"):
        ParetoExpansion.check(ParetoExpansionParams(), tiny_taskset(1))
