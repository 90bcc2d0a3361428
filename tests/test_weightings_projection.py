"""PCGrad, GradVac, CAGrad, IMTL-G and Aligned-MTL against TorchJD 0.18 and their papers' claims.

Oracle: TorchJD's aggregators (``torchjd.aggregation``) applied to the Jacobian J (T, P); ours is
Jᵀα with α from the Gram J Jᵀ. Conventions, read from TorchJD's sources: PCGrad and GradVac sum
the corrected gradients (ours are their mean: × T); CAGrad omits the official /(1 + c²) (ours
× (1 + c²)) and normalises the Gram by its trace, turning a Gram of trace < ``norm_eps`` (the
1e-8 family) into 0, so it is given J / ‖J‖_F and its vector scaled back (CAGrad's update is
positively homogeneous in J); IMTL-G and Aligned-MTL are on our scale (Σα = 1, B𝟙 / T).
Random orders: TorchJD draws ``torch.randperm`` from the global generator, one per task i
(``randperm(T)`` with i skipped for PCGrad, ``randperm(T - 1)`` over the j ≠ i for GradVac),
exactly the draws our methods make from their own generator; loading the global generator's
state into ours (``load_weighting_state``) makes both visit the same orders. TorchJD's CAGrad
solves with cvxpy's default tolerances (~2e-4 in its vector): CAGrad's oracle is the optimum of
the problem it solves (cvxpy/CLARABEL on J), TorchJD only confirms its conventions.
"""

from __future__ import annotations

import io
import warnings
from functools import cache
from typing import Any

import cvxpy as cp
import numpy as np
import pytest
import scipy.linalg
import torch
import torchjd.aggregation as agg
from _weighting_checks import (
    check_finite,
    check_permutation_equivariant,
    check_scaling,
    losses_for,
    make_weighting,
    random_jacobians,
)
from threadpoolctl import threadpool_limits
from torch import Tensor

CASES = list(random_jacobians(200))
SMALL_CASES = list(random_jacobians(200, seed=11, max_tasks=12))
"""The same families with T ≤ 12, for TorchJD's PCGrad and GradVac: their Python loops cost
~70 ms a case at T ~ 40 (GradVac: 14 s for the default 200, PCGrad 3 s). The default cases,
T up to 40, are checked against the papers' rules written on explicit vectors."""
NAMES = ("pcgrad", "gradvac", "cagrad", "imtl_g", "aligned_mtl")
DETERMINISTIC = ("cagrad", "imtl_g", "aligned_mtl")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One BLAS/OpenMP thread while these tests run: on a loaded 2-core machine, the threads that
    numpy, Clarabel and torch keep spinning between the many tiny products made them ~7× slower."""
    threads = torch.get_num_threads()
    with threadpool_limits(1):
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)


@cache
def weighting(name: str, num_tasks: int, **params: Any) -> Any:
    """One instance per (method, T): deterministic ones keep no state; the random ones have
    their whole state loaded before each use here."""
    return make_weighting(name, num_tasks, **params)


def combination(name: str, jacobian: Tensor, **params: Any) -> Tensor:
    """Our update Jᵀα (P,) for J (T, P)."""
    num_tasks = jacobian.shape[0]
    weights = weighting(name, num_tasks, **params).weights(
        jacobian @ jacobian.T, losses_for(num_tasks)
    )
    return jacobian.T @ weights


def assert_same_vector(ours: Tensor, reference: Tensor, jacobian: Tensor, label: str, rtol=1e-5):
    """‖ours − reference‖ ≤ rtol · max(‖reference‖, 1e-4 · max_t ‖g_t‖): relative, with a floor
    for vectors that cancel to ~0 (T = 2 opposite gradients under PCGrad: rounding noise)."""
    floor = 1e-4 * float(jacobian.norm(dim=1).max())
    error = float((ours - reference).norm())
    assert error <= rtol * max(float(reference.norm()), floor), (
        f"{label}: |ours - reference| = {error:.3e}, |reference| = {float(reference.norm()):.3e}"
    )


def use_global_generator_state(method: Any, seed: int, **state: Any) -> None:
    """Seed the global generator and give ``method`` the same generator state (and ``state``)."""
    torch.manual_seed(seed)
    method.load_weighting_state({"generator": torch.get_rng_state(), **state})


def drift(jacobian: Tensor, step: int) -> Tensor:
    """J at a later step: rows rescaled and mixed on the right, so zero, duplicated (up to
    scale) and linearly dependent rows stay so while every cosine changes."""
    generator = torch.Generator().manual_seed(1000 + step)
    num_tasks, width = jacobian.shape
    rows = torch.exp(0.5 * torch.randn(num_tasks, 1, generator=generator, dtype=torch.float64))
    mix = torch.randn(width, width, generator=generator, dtype=torch.float64) / width**0.5
    return rows * (jacobian @ (torch.eye(width, dtype=torch.float64) + 0.5 * mix))


# ---- PCGrad ---------------------------------------------------------------------------------
def pcgrad_explicit(jacobian: np.ndarray, orders: list[list[int]]) -> np.ndarray:
    """Algorithm 1 on explicit vectors: the mean of the projected g̃_i (P,)."""
    projected = jacobian.copy()
    for i, order in enumerate(orders):
        for j in order:
            inner = projected[i] @ jacobian[j]
            if j != i and inner < 0:
                projected[i] -= inner / (jacobian[j] @ jacobian[j]) * jacobian[j]
    return projected.mean(axis=0)


def test_pcgrad_matches_torchjd() -> None:
    """The 200 SMALL_CASES, TorchJD's random orders reproduced: ours × T = TorchJD's ``PCGrad``."""
    for index, (label, jacobian) in enumerate(SMALL_CASES):
        method = weighting("pcgrad", len(jacobian))
        use_global_generator_state(method, index)
        reference = agg.PCGrad()(jacobian)
        ours = combination("pcgrad", jacobian) * len(jacobian)
        assert_same_vector(ours, reference, jacobian, label)


def test_pcgrad_matches_explicit_vectors() -> None:
    """All 200 default cases (T up to 40): ours = the paper's projections on explicit vectors,
    in the orders our generator draws (one randperm(T) per task)."""
    for label, jacobian in CASES:
        num_tasks = jacobian.shape[0]
        orders_source = torch.Generator()
        orders_source.set_state(weighting("pcgrad", num_tasks).weighting_state()["generator"])
        orders = [torch.randperm(num_tasks, generator=orders_source).tolist() for _ in jacobian]
        explicit = torch.from_numpy(pcgrad_explicit(jacobian.numpy(), orders))
        assert_same_vector(combination("pcgrad", jacobian), explicit, jacobian, label)


def test_pcgrad_two_tasks_do_not_conflict() -> None:
    """T = 2 (any order): the update conflicts with neither gradient, and two non-conflicting
    gradients are left alone (weights 1/2)."""
    for label, jacobian in CASES:
        pair = jacobian[:2]
        gram = pair @ pair.T
        weights = weighting("pcgrad", 2).weights(gram, losses_for(2))
        products = gram @ weights
        slack = 1e-9 * float(gram.diagonal().max())
        assert (products >= -slack).all(), f"{label}: ⟨g_t, d⟩ = {products}"
        if gram[0, 1] >= 0:
            torch.testing.assert_close(weights, torch.full_like(weights, 0.5))


# ---- GradVac --------------------------------------------------------------------------------
def gradvac_explicit(
    jacobian: np.ndarray, targets: np.ndarray, orders: list[list[int]], beta: float
) -> np.ndarray:
    """The paper's correction on explicit vectors (targets updated in place): the mean of the
    corrected g̃_i (P,); checks the paper's claim that a corrected pair reaches its target."""
    corrected = jacobian.copy()
    norms = np.linalg.norm(jacobian, axis=1)
    for i, order in enumerate(orders):
        for j in order:
            norm_i = np.linalg.norm(corrected[i])
            if norm_i == 0 or norms[j] == 0:
                continue
            cosine = np.clip(corrected[i] @ jacobian[j] / (norm_i * norms[j]), -1, 1)
            target = targets[i, j]
            if cosine < target:
                sine, sine_target = np.sqrt(1 - cosine**2), np.sqrt(1 - target**2)
                step = norm_i * (target * sine - cosine * sine_target) / (norms[j] * sine_target)
                corrected[i] += step * jacobian[j]
                new_norm = np.linalg.norm(corrected[i])
                reached = corrected[i] @ jacobian[j] / (new_norm * norms[j])
                assert abs(reached - target) < 1e-6 or new_norm < 1e-6 * norm_i  # 0: no cosine
            targets[i, j] = (1 - beta) * target + beta * cosine
    return corrected.mean(axis=0)


def gradvac_orders(state: Tensor, num_tasks: int) -> list[list[int]]:
    """The orders a GradVac whose generator has ``state`` draws: randperm(T - 1) per task."""
    generator = torch.Generator()
    generator.set_state(state)
    orders = []
    for i in range(num_tasks):
        others = [j for j in range(num_tasks) if j != i]
        orders.append([others[k] for k in torch.randperm(num_tasks - 1, generator=generator)])
    return orders


def test_gradvac_matches_torchjd_over_two_steps() -> None:
    """The 200 SMALL_CASES, two steps each (the EMA targets carry over), TorchJD's orders
    reproduced: ours × T = TorchJD's ``GradVac(beta=0.5)``. TorchJD adds ``eps`` = 1e-8 to
    ‖g_i‖‖g_j‖ and to ‖g_j‖√(1 − φ̂²), an error of ~1e-8 / ‖g‖² (and its square root once
    √(1 − φ²) amplifies it), so it is given J scaled to ‖J‖_F = 1e4 and its vector scaled back
    (GradVac is positively homogeneous in J). Rank-1 cases (``rank_deficient`` with T ≤ 3: all
    gradients parallel) are compared on their first step only: there a projection makes some
    g̃_i exactly 0, whose cosine with the next g_j, hence that pair's EMA target, is undefined
    (a cosine of rounding noise in TorchJD; ours skips the pair), and later steps differ."""
    for index, (label, jacobian) in enumerate(SMALL_CASES):
        num_tasks = jacobian.shape[0]
        method = weighting("gradvac", num_tasks)
        method.load_weighting_state({"targets": torch.zeros(num_tasks, num_tasks)})
        reference = agg.GradVac(beta=0.5)
        rank_one = label.startswith("rank_deficient") and num_tasks <= 3
        for step in range(1 if rank_one else 2):
            step_jacobian = drift(jacobian, step) if step else jacobian
            use_global_generator_state(method, 10 * index + step)  # the targets carry over
            scale = step_jacobian.norm() / 1e4
            expected = reference(step_jacobian / scale) * scale
            ours = combination("gradvac", step_jacobian)
            assert_same_vector(ours * num_tasks, expected, step_jacobian, f"{label} step {step}")


def test_gradvac_matches_explicit_vectors() -> None:
    """Every fourth default case (50, T up to 40; the vector loop is slow), two steps: ours = the
    paper's correction on explicit vectors with the same orders and targets; every corrected
    pair reaches its target."""
    for label, jacobian in CASES[::4]:
        num_tasks = jacobian.shape[0]
        method = weighting("gradvac", num_tasks)
        method.load_weighting_state({"targets": torch.zeros(num_tasks, num_tasks)})
        targets = np.zeros((num_tasks, num_tasks))
        for step in range(2):
            step_jacobian = drift(jacobian, step) if step else jacobian
            orders = gradvac_orders(method.weighting_state()["generator"], num_tasks)
            ours = combination("gradvac", step_jacobian)
            explicit = gradvac_explicit(step_jacobian.numpy(), targets, orders, 0.5)
            assert_same_vector(ours, torch.from_numpy(explicit), step_jacobian, label)


# ---- CAGrad ---------------------------------------------------------------------------------
def cagrad_dual_optimum(jacobian: Tensor, c: float) -> tuple[float, float]:
    """(min over the simplex of ⟨g_w, g0⟩ + c‖g0‖‖g_w‖, ‖g_w‖ at the minimum) by cvxpy/CLARABEL
    on J itself (no Gram, no eigen-coordinates)."""
    matrix = jacobian.numpy()
    mean = matrix.mean(axis=0)
    w = cp.Variable(matrix.shape[0])
    objective = (matrix @ mean) @ w + c * np.linalg.norm(mean) * cp.norm(matrix.T @ w)
    problem = cp.Problem(cp.Minimize(objective), [w >= 0, cp.sum(w) == 1])
    with warnings.catch_warnings():  # duplicated-T36-#188 ends "optimal_inaccurate", ~1e-9 off
        warnings.simplefilter("ignore", UserWarning)
        problem.solve(cp.CLARABEL)
    assert problem.status in ("optimal", "optimal_inaccurate"), problem.status
    return float(problem.value), float(np.linalg.norm(matrix.T @ w.value))


def test_cagrad_is_optimal_against_cvxpy() -> None:
    """All 200 cases; TorchJD's solver is approximate (cvxpy's default tolerances leave ~2e-4 in
    its vector), so ours is checked against the problem CAGrad solves, by an independent cvxpy/
    CLARABEL solve on J / ‖J‖_F: d' = (1 + c²) Jᵀα lies on the sphere ‖d' − g0‖ = c‖g0‖ and its
    worst improvement min_t ⟨g_t, d'⟩ reaches the dual optimum (strong duality): d' is the
    paper's maximiser. Where ours drops the correction (weights 𝟙 / (T (1 + c²)): 0 in the
    hull), cvxpy's minimiser must have ‖g_w‖ ≈ 0 as well."""
    c = 0.4
    for label, jacobian in CASES:
        normalised = jacobian / jacobian.norm()
        num_tasks = len(normalised)
        weights = weighting("cagrad", num_tasks).weights(normalised @ normalised.T, None)
        mean = normalised.mean(dim=0)
        optimum, hull_norm = cagrad_dual_optimum(normalised, c)
        if torch.allclose(weights * (1 + c**2) * num_tasks, torch.ones_like(weights), atol=1e-12):
            assert hull_norm < 2e-4, f"{label}: correction dropped, cvxpy ‖g_w‖ = {hull_norm}"
            continue
        update = (1 + c**2) * normalised.T @ weights
        radius = float((update - mean).norm())
        assert abs(radius - c * float(mean.norm())) <= 1e-9 * float(mean.norm()), label
        worst = float((normalised @ update).min())
        assert abs(worst - optimum) <= 1e-8, f"{label}: worst {worst}, optimum {optimum}"


def test_cagrad_matches_torchjd_up_to_its_solver() -> None:
    """All 200 cases: ours × (1 + c²) = TorchJD's ``CAGrad(c=0.4)`` within 2e-3 (its solver's
    accuracy, see above) where the hull stays away from 0; where it does not, both drop the
    correction on the same cases (same threshold), TorchJD returning 0 and ours g0 / (1 + c²)."""
    c = 0.4
    for label, jacobian in CASES:
        scale = jacobian.norm()
        reference = agg.CAGrad(c=c)(jacobian / scale) * scale
        ours = (1 + c**2) * combination("cagrad", jacobian)
        if not reference.any():
            assert_same_vector(ours, jacobian.mean(dim=0), jacobian, f"{label} (0 in the hull)")
        else:
            assert_same_vector(ours, reference, jacobian, label, rtol=2e-3)


def test_cagrad_without_radius_is_equal_weighting() -> None:
    """c = 0: the ball is the point g0, so d = g0 (weights 1/T)."""
    jacobian = CASES[0][1]
    weights = weighting("cagrad", jacobian.shape[0], c=0.0).weights(jacobian @ jacobian.T, None)
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / jacobian.shape[0]))


# ---- IMTL-G ---------------------------------------------------------------------------------
def test_imtl_g_matches_torchjd() -> None:
    """All 200 cases: ours = TorchJD's ``IMTLG`` (same scale, Σα = 1; pseudo-inverse)."""
    for label, jacobian in CASES:
        assert_same_vector(combination("imtl_g", jacobian), agg.IMTLG()(jacobian), jacobian, label)


def test_imtl_g_equal_projections_on_unit_gradients() -> None:
    """The paper's defining claim: d · g_t / ‖g_t‖ equal for every non-zero g_t, Σα = 1, and a
    zero gradient gets weight 0. Not on the rank-deficient family: there n = (‖g_t‖)_t is
    generally outside the range of G and no direction has equal projections (least squares)."""
    for label, jacobian in CASES:
        if label.startswith("rank_deficient"):
            continue
        gram = jacobian @ jacobian.T
        weights = weighting("imtl_g", jacobian.shape[0]).weights(gram, None)
        norms = gram.diagonal().sqrt()
        nonzero = norms > 0
        projections = (gram @ weights)[nonzero] / norms[nonzero]
        spread = float(projections.max() - projections.min())
        assert spread <= 1e-8 * float(projections.abs().max()), f"{label}: {projections}"
        assert abs(float(weights.sum()) - 1) < 1e-10, label
        assert (weights[~nonzero] == 0).all(), label


# ---- Aligned-MTL ----------------------------------------------------------------------------
def test_aligned_mtl_matches_torchjd() -> None:
    """All 200 cases: ours = TorchJD's ``AlignedMTL()`` (B𝟙 / T, scale 'min'); the other two
    scale modes on the first 40."""
    for index, (label, jacobian) in enumerate(CASES):
        modes = ("min", "median", "rmse") if index < 40 else ("min",)
        for mode in modes:
            reference = agg.AlignedMTL(scale_mode=mode)(jacobian)
            ours = combination("aligned_mtl", jacobian, scale_mode=mode)
            assert_same_vector(ours, reference, jacobian, f"{label} {mode}")


def test_aligned_mtl_by_matrix_square_root() -> None:
    """Full-rank cases, independently of any eigendecomposition: B = √λ_min G^{-1/2} (scipy's
    ``sqrtm``) aligns the gradients (B G Bᵀ = λ_min I: condition number 1, the paper's claim)
    and α = B𝟙 / T."""
    for label, jacobian in CASES:
        if not label.startswith(("full", "scaled")):
            continue
        gram = (jacobian @ jacobian.T).numpy()
        smallest = np.linalg.eigvalsh(gram).min()
        balance = np.sqrt(smallest) * np.linalg.inv(np.real(scipy.linalg.sqrtm(gram)))
        aligned = balance @ gram @ balance.T
        np.testing.assert_allclose(aligned / smallest, np.eye(len(gram)), atol=1e-6)
        weights = weighting("aligned_mtl", len(gram)).weights(torch.from_numpy(gram), None)
        np.testing.assert_allclose(weights.numpy(), balance.sum(axis=1) / len(gram), rtol=1e-6)


# ---- state and shared properties ------------------------------------------------------------
@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_state_survives_a_checkpoint(name: str) -> None:
    """A run resumed from ``state_dict`` (through torch.save/load) gives the weights of the
    uninterrupted run; a fresh instance does not (the state matters)."""
    jacobian = torch.randn(6, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grams = [drift(jacobian, step) @ drift(jacobian, step).T for step in range(6)]
    losses = losses_for(6)
    uninterrupted = make_weighting(name, 6)
    for gram in grams[:3]:
        uninterrupted.weights(gram, losses)
    buffer = io.BytesIO()
    torch.save(uninterrupted.state_dict(), buffer)
    expected = [uninterrupted.weights(gram, losses) for gram in grams[3:]]
    resumed, fresh = make_weighting(name, 6), make_weighting(name, 6)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    for gram, weights in zip(grams[3:], expected, strict=True):
        assert torch.equal(resumed.weights(gram, losses), weights)
    assert any(
        not torch.equal(fresh.weights(g, losses), w)
        for g, w in zip(grams[3:], expected, strict=True)
    )


@pytest.mark.parametrize("name", NAMES)
def test_finite_and_scale_invariant(name: str) -> None:
    """Finite weights on every family; weights(sG) = weights(G): every rule depends on G only
    through ratios (cosines, G⁺√diag G normalised, √λ_min/√λ, the CAGrad dual's minimiser)."""
    check_finite(name)
    check_scaling(name, exponent=0.0)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_permutation_equivariant(name: str) -> None:
    check_permutation_equivariant(name)
