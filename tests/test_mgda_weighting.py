"""MGDA as a Gram weighting, on the shared input families of every weighting: finite weights on
degenerate Grams, permutation equivariance, no conflict with any task (the paper's claim), scale
invariance, and the min-norm objective against a QP solver (TorchJD's MGDA stops early, so the
QP, not TorchJD, is the oracle of the optimum)."""

from __future__ import annotations

import numpy as np
import qpsolvers
from _weighting_checks import (
    check_finite,
    check_non_conflicting,
    check_permutation_equivariant,
    check_scaling,
    losses_for,
    make_weighting,
    random_jacobians,
)


def test_mgda_weights_are_finite_equivariant_non_conflicting_and_scale_free() -> None:
    check_finite("mgda")
    check_permutation_equivariant("mgda", atol=1e-4)  # the solver's tolerance, not exactness
    check_non_conflicting("mgda", solver_tolerance=1e-5)  # its default relative tolerance
    check_scaling("mgda", exponent=0.0)


def test_mgda_min_norm_objective_matches_a_qp_solver() -> None:
    """min aᵀGa over the simplex: the weighting's objective within 1e-5 (relative to tr G) of
    quadprog's on 60 cases of every family."""
    for label, jacobian in random_jacobians(60, seed=11):
        gram = (jacobian @ jacobian.T).numpy()
        num_tasks = gram.shape[0]
        scale = float(np.trace(gram)) or 1.0
        solution = qpsolvers.solve_qp(
            gram / scale + 1e-12 * np.eye(num_tasks),
            np.zeros(num_tasks),
            A=np.ones((1, num_tasks)),
            b=np.ones(1),
            lb=np.zeros(num_tasks),
            solver="quadprog",
        )
        weights = make_weighting("mgda", num_tasks).weights(
            jacobian @ jacobian.T, losses_for(num_tasks)
        )
        ours = float(weights.numpy() @ gram @ weights.numpy()) / scale
        reference = float(solution @ gram @ solution) / scale
        assert ours <= reference + 1e-5, (label, ours, reference)
