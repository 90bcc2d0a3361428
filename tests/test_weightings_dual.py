"""UPGrad, DualProj, Nash-MTL and FairGrad against independent oracles and the shared properties.

Oracles:
- ``upgrad`` / ``dualproj``: TorchJD 0.18 (the authors' library; quadprog on the same ridged,
  trace-normalised Gram), on all 200 cases of ``random_jacobians``: our Jᵀa equals TorchJD's
  aggregated vector to 1e-5 of its norm. Our QP alone is also checked against cvxpy/CLARABEL.
- ``nash_mtl`` / ``fairgrad``: TorchJD's solvers are approximate (Nash: at most 20 CCP steps and
  it needs ECOS, not installed; FairGrad: an unchecked ``least_squares``, which stops far from the
  solution on 1e-8-scale Grams), so we check (1) the defining equation G w = w^(-p) to a
  residual of 1e-12 relative to its terms on every family and (2) agreement to 1e-5 with cvxpy/
  CLARABEL solving the convex problem min ½wᵀGw − sum φ(w_t) written here (on G / ||G||_F,
  rescaled by ||G||_F^(-1/(1+p))), on well-posed cases (full rank or duplicated rows, no zero
  gradient). FairGrad also agrees with TorchJD to 1e-5 where TorchJD's solver converges.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import cvxpy as cp
import numpy as np
import pytest
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
from mtlbench.methods._dual_cone import dual_cone_weights

WELL_POSED = ("full", "scaled_small", "scaled_large", "duplicated")


def _clarabel(tolerance: float) -> dict[str, Any]:
    tolerances = dict.fromkeys(("tol_gap_abs", "tol_gap_rel", "tol_feas"), tolerance)
    return {"solver": "CLARABEL", **tolerances}


@functools.cache
def _weighting(name: str, num_tasks: int, params: tuple) -> Any:
    """One instance per (method, T, params): these methods keep no state between calls at
    update_weights_every = 1, and building the tiny model each time dominated the run time."""
    return make_weighting(name, num_tasks, **dict(params))


def _weights(name: str, jacobian: torch.Tensor, **params) -> torch.Tensor:
    gram = jacobian @ jacobian.T
    weighting = _weighting(name, len(gram), tuple(sorted(params.items())))
    return weighting.weights(gram, losses_for(len(gram)))


def _square_root(gram: np.ndarray) -> np.ndarray:
    """R with R Rᵀ = gram (PSD part), so that wᵀ gram w = ||Rᵀ w||² for cvxpy."""
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    return eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))


# ---- UPGrad and DualProj -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "aggregator"), [("upgrad", agg.UPGrad), ("dualproj", agg.DualProj)]
)
def test_dual_cone_methods_match_torchjd(name: str, aggregator) -> None:
    reference = aggregator()
    for label, jacobian in random_jacobians(200):
        expected = reference(jacobian)
        ours = jacobian.T @ _weights(name, jacobian)
        floor = 1e-12 * float(jacobian.norm())
        assert float((ours - expected).norm()) <= 1e-5 * float(expected.norm()) + floor, label


def test_dual_cone_qp_matches_cvxpy() -> None:
    for label, jacobian in random_jacobians(12, seed=11, max_tasks=12):
        gram = jacobian @ jacobian.T
        num_tasks = len(gram)
        bounds = np.vstack([np.full(num_tasks, 1 / num_tasks), np.eye(num_tasks)[:3] / num_tasks])
        ours = dual_cone_weights(gram, bounds, norm_eps=0.0, reg_eps=1e-4)
        regularised = gram.numpy() / float(gram.trace()) + 1e-4 * np.eye(num_tasks)
        root = np.linalg.cholesky(regularised)
        for bound, solution in zip(bounds, ours, strict=True):
            v = cp.Variable(num_tasks)
            problem = cp.Problem(cp.Minimize(cp.sum_squares(root.T @ v)), [v >= bound])
            problem.solve(**_clarabel(1e-12))
            assert problem.status == "optimal", label
            # ours is feasible, never worse than cvxpy's optimum and equal to it to 1e-6: the
            # values, not the points, as CLARABEL leaves weights that barely move the objective
            # (a zero-gradient task's, set by the ridge alone) at ~1e-5 where the optimum is 0
            assert (solution >= bound - 1e-12).all(), label
            ours_value = np.sum((root.T @ solution) ** 2)
            oracle_value = np.sum((root.T @ v.value) ** 2)
            assert oracle_value * (1 - 1e-6) <= ours_value <= oracle_value * (1 + 1e-9), label


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_dual_cone_methods_conflict_only_by_the_ridge(name: str) -> None:
    """KKT of the ridged QP: ⟨g_t, d⟩ = tr(G) (λ_t − reg_eps a_t) >= −reg_eps tr(G) a_t.

    The shared ``check_non_conflicting`` (slack 1e-5 ||g_t|| ||d||) holds for the exact
    projection only: with TorchJD's ridge 1e-4 the conflict reaches ~1e-3 ||g_t|| ||d|| on
    full-rank Grams (TorchJD's own output alike), so its criterion is applied below with a 1e-9
    ridge on full-rank cases. Below ``norm_eps`` the projection is skipped (mean weights).
    """
    for label, jacobian in random_jacobians(200, seed=5):
        gram = jacobian @ jacobian.T
        trace = float(gram.trace())
        if trace < 1e-4:
            continue
        weights = _weights(name, jacobian)
        products = gram @ weights
        bound = -1e-4 * trace * weights * (1 + 1e-6) - 1e-12 * trace
        assert (products >= bound).all(), f"{label}: {products.min()}"


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_dual_cone_methods_non_conflicting_with_a_small_ridge(name: str) -> None:
    """The shared check's criterion (slack 1e-5 ||g_t|| ||d||) with a 1e-9 ridge, on full-rank
    Grams; ``check_non_conflicting`` itself cannot be restricted to them, and on rank-deficient
    Grams d can be of the ridge's own size (e.g. collinear gradients of both signs: d ≈ 0)."""
    for label, jacobian in random_jacobians(200, seed=5):
        if not label.startswith("full"):
            continue
        gram = jacobian @ jacobian.T
        weights = _weights(name, jacobian, reg_eps=1e-9, norm_eps=0.0)
        slack = 1e-5 * gram.diagonal().sqrt() * float((weights @ gram @ weights).sqrt())
        assert (gram @ weights >= -slack).all(), label


def test_dual_cone_small_and_zero_grams() -> None:
    """All-zero gradients, and tr(G) < norm_eps: mean weights 1/T; norm_eps = 0: no floor."""
    jacobian = next(j for label, j in random_jacobians(6) if label.startswith("full"))
    num_tasks = len(jacobian)
    for name in ("upgrad", "dualproj"):
        mean = torch.full((num_tasks,), 1 / num_tasks, dtype=torch.float64)
        torch.testing.assert_close(_weights(name, 0 * jacobian), mean)
        torch.testing.assert_close(_weights(name, 1e-6 * jacobian), mean)
        exact = _weights(name, 1e-6 * jacobian, norm_eps=0.0)
        torch.testing.assert_close(exact, _weights(name, jacobian, norm_eps=0.0), rtol=1e-7, atol=0)


# ---- Nash-MTL and FairGrad -----------------------------------------------------------------
def _convex_oracle(gram: torch.Tensor, power: float) -> np.ndarray:
    """argmin_{w > 0} ½ wᵀGw − sum φ(w_t), φ' = w^(-power), by cvxpy on G / ||G||_F."""
    scale = float(torch.linalg.norm(gram))
    root = _square_root(gram.numpy() / scale)
    w = cp.Variable(len(gram), pos=True)
    if power == 1:
        utility = cp.sum(cp.log(w))
    elif power < 1:
        utility = cp.sum(cp.power(w, 1 - power)) / (1 - power)
    else:
        utility = -cp.sum(cp.power(w, 1 - power)) / (power - 1)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(root.T @ w) / 2 - utility))
    with warnings.catch_warnings():  # at 1e-12 CLARABEL may stop "inaccurate" on power cones:
        warnings.simplefilter("ignore", UserWarning)  # still ~1e-6 off, the 1e-5 check decides
        problem.solve(**_clarabel(1e-12))
    assert problem.status in ("optimal", "optimal_inaccurate"), problem.status
    return w.value * scale ** (-1 / (1 + power))


POWER_METHODS = [
    ("nash_mtl", {"max_norm": 0.0}, 1.0),
    ("fairgrad", {}, 1.0),
    ("fairgrad", {"alpha": 2.0}, 0.5),
    ("fairgrad", {"alpha": 0.5}, 2.0),
]


@pytest.mark.parametrize(("name", "params", "power"), POWER_METHODS)
def test_power_balance_solves_its_equation(name: str, params: dict, power: float) -> None:
    """G w = w^(-p) on G + ridge (relative to ||G||_F), for the tasks with a non-zero gradient;
    a zero-gradient task gets the largest weight of the others."""
    for label, jacobian in random_jacobians(200):
        gram = jacobian @ jacobian.T
        weights = _weights(name, jacobian, **params)
        assert (weights > 0).all() and torch.isfinite(weights).all(), label
        scale = float(torch.linalg.norm(gram))
        active = gram.diagonal() > 1e-8 * scale
        sub = gram[active][:, active] + 1e-8 * scale * torch.eye(int(active.sum()))
        w = weights[active]
        residual = (sub @ w - w ** (-power)).abs() / (sub.abs() @ w + w ** (-power))
        assert float(residual.max()) <= 1e-12, f"{label}: residual {float(residual.max())}"
        assert (weights[~active] == w.max()).all(), label


@pytest.mark.parametrize(("name", "params", "power"), POWER_METHODS)
def test_power_balance_matches_cvxpy(name: str, params: dict, power: float) -> None:
    cases = [(lbl, j) for lbl, j in random_jacobians(60, seed=2) if lbl.startswith(WELL_POSED)]
    for label, jacobian in cases[:20]:
        expected = _convex_oracle(jacobian @ jacobian.T, power)
        ours = _weights(name, jacobian, **params).numpy()
        assert np.abs(ours - expected).max() <= 1e-5 * np.abs(expected).max(), label


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_fairgrad_matches_torchjd_where_its_solver_converges(alpha: float) -> None:
    """Same equation and scale as TorchJD (raw G, no ×T): on full-rank Grams of unit or large
    scale, where its ``least_squares`` converges (not at 1e-8 scale, nor with zero rows)."""
    reference = agg.FairGradWeighting(alpha)
    for label, jacobian in random_jacobians(60):
        if not label.startswith(("full", "duplicated", "scaled_large")):
            continue
        gram = jacobian @ jacobian.T
        ours = _weights("fairgrad", jacobian, alpha=alpha)
        torch.testing.assert_close(ours, reference(gram), rtol=1e-5, atol=0, msg=label)


def test_fairgrad_at_alpha_one_is_nash_mtl() -> None:
    for _, jacobian in random_jacobians(30):
        torch.testing.assert_close(
            _weights("fairgrad", jacobian), _weights("nash_mtl", jacobian, max_norm=0.0)
        )


def test_nash_mtl_clips_the_shared_update_and_not_the_heads() -> None:
    """Unclipped, ||d||² = αᵀGα = T (on well-posed Grams); max_norm scales α to ||d|| = max_norm;
    the heads get the unclipped α (the reference clips the shared gradient only)."""
    for label, jacobian in random_jacobians(30):
        gram = jacobian @ jacobian.T
        num_tasks = len(gram)
        method = make_weighting("nash_mtl", num_tasks, max_norm=0.5)
        clipped = method.weights(gram, losses_for(num_tasks))
        unclipped = method.head_weights(clipped)
        free = _weights("nash_mtl", jacobian, max_norm=0.0)
        torch.testing.assert_close(unclipped, free, msg=label)
        # a rank-deficient G with a null vector z >= 0 has ||d||² = T − ridge·||α||² < T
        expected = min(0.25, float(free @ gram @ free))
        assert abs(float(clipped @ gram @ clipped) - expected) <= 1e-9, label
        if label.startswith(WELL_POSED):
            assert abs(float(free @ gram @ free) - num_tasks) <= 1e-6 * num_tasks, label


def test_nash_mtl_state_survives_a_checkpoint() -> None:
    """With update_weights_every = 3 the α of step 1 is reused at steps 2 and 3, also by a
    method restored from a state dict taken after step 1; step 4 solves again."""
    generator = torch.Generator().manual_seed(9)
    jacobians = torch.randn(4, 5, 12, generator=generator, dtype=torch.float64)
    grams = jacobians @ jacobians.transpose(1, 2)
    losses = losses_for(5)
    method = make_weighting("nash_mtl", 5, update_weights_every=3, max_norm=0.0)
    first = method.weights(grams[0], losses)
    restored = make_weighting("nash_mtl", 5, update_weights_every=3, max_norm=0.0)
    restored.load_state_dict(method.state_dict())
    solved = make_weighting("nash_mtl", 5, max_norm=0.0).weights(grams[3], losses)
    assert not torch.allclose(solved, first)
    for copy in (method, restored):
        torch.testing.assert_close(copy.weights(grams[1], losses), first)
        torch.testing.assert_close(copy.weights(grams[2], losses), first)
        torch.testing.assert_close(copy.weights(grams[3], losses), solved)


def test_indefinite_grams_from_rounding() -> None:
    """A "Gram" with a negative eigenvalue beyond every ridge (float32 rounding of nearly
    collinear gradients, exaggerated): the PSD projection fallbacks keep the weights finite."""
    gram = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    gram[1, 1] -= 1e-2  # eigenvalue ≈ −5e-3
    assert float(torch.linalg.eigvalsh(gram)[0]) < -1e-3
    for name in ("upgrad", "dualproj", "nash_mtl", "fairgrad"):
        weights = make_weighting(name, 3).weights(gram, losses_for(3))
        assert torch.isfinite(weights).all() and (weights >= 0).all(), name


def test_float32_grams_give_float32_weights() -> None:
    jacobian = next(j for _, j in random_jacobians(1)).float()
    for name in ("upgrad", "dualproj", "nash_mtl", "fairgrad"):
        weights = _weights(name, jacobian)
        assert weights.dtype == torch.float32 and torch.isfinite(weights).all(), name


# ---- shared properties ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["upgrad", "dualproj", "nash_mtl", "fairgrad"])
def test_finite_and_permutation_equivariant(name: str) -> None:
    check_finite(name, count=200)
    check_permutation_equivariant(name)


@pytest.mark.parametrize("alpha", [0.5, 2.0, 10.0])
def test_fairgrad_finite_for_other_alphas(alpha: float) -> None:
    check_finite("fairgrad", count=60, alpha=alpha)


@pytest.mark.parametrize(
    ("name", "params", "exponent"),
    [
        ("upgrad", {}, 0.0),
        ("dualproj", {}, 0.0),
        ("nash_mtl", {"max_norm": 0.0}, -0.5),
        ("nash_mtl", {}, -0.5),  # the clip rescales to a fixed norm: still s^(-1/2)
        ("fairgrad", {}, -0.5),
        ("fairgrad", {"alpha": 2.0}, -2 / 3),
        ("fairgrad", {"alpha": 0.5}, -1 / 3),
    ],
)
def test_scaling(name: str, params: dict, exponent: float) -> None:
    """G(s) w = w^(-1/α) ⇒ s^(1+k) = s^(-k/α) ⇒ k = −α/(1+α); trace normalisation: k = 0."""
    check_scaling(name, exponent, **params)
