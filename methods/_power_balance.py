"""Positive solutions w (T,) of G w = w^(-p) from a Gram G (T, T): Nash-MTL and FairGrad.

Nash-MTL's bargaining weights solve G w = 1/w (p = 1); FairGrad's α-fair weights solve
G w = w^(-1/α) (p = 1/α). Both are the stationarity condition of the convex problem

    min_{w > 0}  f(w) = ½ wᵀ G w − sum_t φ(w_t),   φ'(w) = w^(-p)

(φ = log for p = 1, φ(w) = w^(1-p) / (1 - p) otherwise; φ is strictly concave, so f is strictly
convex and its minimiser, where it exists, is the unique positive solution). It is solved by a
damped Newton method (Hessian G + diag(p w^(-p-1)), always positive definite) with a
backtracking (Armijo) line search that keeps w > 0 (at most 99% of the way to the boundary),
until every task's equation holds to 1e-13 relative to its terms: exact to rounding, where the
reference codes stop after at most 20 convex-concave steps (Nash-MTL) or an unchecked
``least_squares`` (FairGrad). About 5 to 25 Newton steps of size T.

Conditioning and degenerate Grams (c = ||G||_F, ε = ``ridge``):
- scale: solved on G / c and rescaled, w(G) = c^(-1/(1+p)) w(G / c): exact, since
  w(sG) = s^(-1/(1+p)) w(G) (-1/2 for Nash-MTL, -α/(1+α) for FairGrad).
- ridge: ε·I is added to G / c. Without it f is unbounded below when G has a null vector z >= 0
  (sum_t z_t g_t = 0: the tasks of z's support are Pareto-stationary together, and no direction
  improves them all); with it the weights along z grow to about ε^(-1/(1+p)) (relative units)
  instead of diverging. On full-rank Grams it moves w by ~ε·w_t^(1+p) / p relative: rounding.
- zero gradients: a task with G_tt <= ε·c (squared gradient norm below the ridge) cannot meet
  its equation ((G w)_t = 0 < w_t^(-p)); its weight's limit is +∞. It is left out of the solve
  and given the largest weight of the others (its gradient is ~0, so the shared update does not
  depend on it; a finite weight keeps a weighted head training). All tasks zero: 1/T each.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

MAX_ITERATIONS = 200
"""Newton iterations at most: a cold start takes 5 to 30 on the test families (ridge-bound
weights included), up to ~130 for p = 0.1 (FairGrad α = 10) on rank-deficient Grams."""
TOLERANCE = 1e-13
"""Residual of each task's equation, relative to its terms, at which it counts as solved."""


def power_balance_weights(gram: Tensor, power: float, ridge: float) -> Tensor:
    """w (T,) > 0 with G w = w^(-power) (see the module notes for the ridge and zero tasks).

    gram: (T, T) Gram of the task gradients, PSD up to rounding, any dtype or device; solved in
    float64 on the host; the weights have the Gram's dtype and device. power: p > 0.
    ridge: ε > 0, relative to ||G||_F.
    """
    matrix = gram.detach().to("cpu", torch.float64).numpy()
    matrix = (matrix + matrix.T) / 2
    num_tasks = len(matrix)
    scale = float(np.linalg.norm(matrix))
    active = np.diag(matrix) > ridge * scale
    weights = np.full(num_tasks, 1.0 / num_tasks)
    if scale > 0 and np.isfinite(scale) and active.any():
        solved = _newton(_positive_definite(matrix[active][:, active] / scale, ridge), power)
        weights = np.full(num_tasks, solved.max() * scale ** (-1 / (1 + power)))
        weights[active] = solved * scale ** (-1 / (1 + power))
    return torch.as_tensor(weights, dtype=gram.dtype, device=gram.device)


def _positive_definite(matrix: np.ndarray, ridge: float) -> np.ndarray:
    """matrix + ridge·I, after clipping negative eigenvalues (rounding) where it lacks a
    Cholesky factor. matrix: (T, T) symmetric."""
    identity = np.eye(len(matrix))
    try:
        np.linalg.cholesky(matrix + ridge * identity)
    except np.linalg.LinAlgError:
        eigenvalues, eigenvectors = np.linalg.eigh(matrix)
        matrix = (eigenvectors * np.clip(eigenvalues, 0, None)) @ eigenvectors.T
    return matrix + ridge * identity


def _objective(matrix: np.ndarray, weights: np.ndarray, power: float) -> float:
    """f(w) = ½ wᵀGw − sum_t φ(w_t); +∞ outside w > 0."""
    if (weights <= 0).any():
        return float("inf")
    utility = np.log(weights).sum() if power == 1 else (weights ** (1 - power)).sum() / (1 - power)
    return float(weights @ matrix @ weights / 2 - utility)


def _newton(matrix: np.ndarray, power: float) -> np.ndarray:
    """Minimiser w (T,) of f for a positive definite matrix (T, T), from w_t = G_tt^(-1/(1+p))
    (the exact solution for a diagonal G).

    Stops when every task's equation holds to ``TOLERANCE`` relative to the size of its terms,
    |(G w)_t − w_t^(-p)| <= TOLERANCE ((|G| w)_t + w_t^(-p)) (the rounding floor of (G w)_t is
    ~1e-16 (|G| w)_t, far above w_t^(-p) for a ridge-bound weight and a large p), or when,
    with the objective at its rounding floor (λ² <= 1e-20 sum_t w_t^(1-p)), the residual stops
    halving for 3 iterations. Full Newton steps once λ² <= 1e-8 sum_t w_t^(1-p) (there the
    objective's decrease is below what Armijo can resolve). The Newton system is solved with
    the Hessian scaled by diag(w) on both sides (same step, better rounding when the weights
    span many orders of magnitude).
    """
    weights = np.diag(matrix) ** (-1 / (1 + power))
    best, stalled = float("inf"), 0
    for _ in range(MAX_ITERATIONS):
        marginal = weights ** (-power)
        gradient = matrix @ weights - marginal
        residual = float(np.max(np.abs(gradient) / (np.abs(matrix) @ weights + marginal)))
        if residual <= TOLERANCE:
            break
        scaled = weights[:, None] * matrix * weights[None, :] + np.diag(power * weights * marginal)
        step = -weights * np.linalg.solve(scaled, weights * gradient)
        decrement = float(-gradient @ step)  # λ², affine invariant: f − min f ≈ λ²/2 near it
        local = decrement <= 1e-8 * float(weights @ marginal)  # sum w^(1-p) = wᵀGw at the end
        floor = decrement <= 1e-20 * float(weights @ marginal)
        stalled = stalled + 1 if floor and residual > best / 2 else 0
        best = min(best, residual)
        if stalled >= 3:
            break
        shrinking = step < 0
        length = min(1.0, 0.99 * float(np.min(-weights[shrinking] / step[shrinking], initial=2.0)))
        if not local:  # far from the solution: backtrack (Armijo, slope −λ²)
            current = _objective(matrix, weights, power)
            while (
                _objective(matrix, weights + length * step, power)
                > current - 0.25 * length * decrement
                and length > 1e-12
            ):
                length /= 2
        weights = weights + length * step
    return weights
