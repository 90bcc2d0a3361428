"""MINRES for symmetric (possibly indefinite) systems, on the device of its right-hand side.

Solves ``(A + shift I) x = b`` for a symmetric linear operator A given only as ``v -> A v``
(here: Hessian-vector products), after Paige & Saunders (1975), "Solution of sparse indefinite
systems of linear equations", SIAM J. Numer. Anal. 12(4): the Lanczos process on A, with the
projected tridiagonal system solved by Givens rotations, minimising ``||b - (A + shift I) x||``
over the growing Krylov space.

Written here rather than taken from a library: scipy's ``minres`` runs on the host (every
product would cross host and device), and ``linear_operator.utils.minres`` (0.6) tests
convergence on the relative size of the last update every 10 iterations, reports neither the
iteration count nor a residual, and never checks the true residual. This one

- keeps every scalar of the recurrence on the device: no host round trip per iteration; the
  stopping test reads one scalar every ``check_every`` iterations, iterations past convergence
  leave the solution unchanged (masked), so the result is the same for any ``check_every``;
- checks the *true* residual ``||b - (A + shift I) x|| / ||b||`` at the end (one extra product)
  and restarts from x while iterations remain, since the recurrence's estimate can drift;
- reports iterations, the estimated and true relative residuals and the products used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Operator = Callable[[Tensor], Tensor]


@dataclass
class MinresResult:
    """solution: x (N,). iterations: Lanczos iterations until the estimate met the tolerance
    (or all that ran). estimated_residual / true_residual: relative residuals ``||r|| / ||b||``
    from the recurrence and recomputed. converged: true_residual <= tolerance (times the slack
    of :func:`minres`). products: operator applications, the true-residual checks included.
    restarts: how many times the true residual sent MINRES back to work."""

    solution: Tensor
    iterations: int
    estimated_residual: float
    true_residual: float
    converged: bool
    products: int
    restarts: int


def _minres_cycle(
    operator: Operator,
    rhs: Tensor,
    start: Tensor,
    shift: float,
    tolerance: float,
    max_iterations: int,
    check_every: int,
    rhs_norm: Tensor,
) -> tuple[Tensor, int, Tensor, int]:
    """One MINRES run from ``start``; returns (x, iterations, estimated |r|, products).

    Vector updates are in place on five buffers (x, two Lanczos vectors, two search
    directions): past ~1e6 unknowns, allocating fresh vectors every iteration costs as much as
    the Hessian-vector product itself (measured on CPU at 1e7).
    """
    dtype = rhs.dtype
    tiny = torch.finfo(dtype).tiny
    products = 0

    def apply(vector: Tensor) -> Tensor:
        product = operator(vector)
        if product.data_ptr() == vector.data_ptr():  # never update the caller's vector in place
            product = product.clone()
        return product.add_(vector, alpha=shift) if shift else product

    x = start.clone()
    if bool(start.any()):
        residual = rhs - apply(start)
        products += 1
    else:
        residual = rhs.clone()
    beta = residual.norm()  # beta_1 = ||r0||
    if float(beta) <= tolerance * float(rhs_norm):
        return x, 0, beta, products
    v_previous = torch.zeros_like(rhs)
    v = residual.div_(beta)
    zero = torch.zeros((), dtype=dtype, device=rhs.device)
    cosine, sine = -torch.ones_like(zero), zero.clone()
    d_bar, epsilon, phi_bar = zero.clone(), zero.clone(), beta.clone()
    w, w_previous = torch.zeros_like(rhs), torch.zeros_like(rhs)
    done = torch.zeros((), dtype=torch.bool, device=rhs.device)
    iterations = torch.zeros((), dtype=torch.long, device=rhs.device)
    threshold = tolerance * rhs_norm
    for ran in range(1, max_iterations + 1):
        # Lanczos: p = A v_k - beta_k v_{k-1}; alpha_k = v_k . p; beta_{k+1} = ||p - alpha_k v_k||
        p = apply(v)
        products += 1
        p.addcmul_(v_previous, beta, value=-1)
        alpha = torch.dot(v, p)
        p.addcmul_(v, alpha, value=-1)
        beta_next = p.norm()
        # previous rotation applied to the new column of the tridiagonal matrix
        epsilon_previous = epsilon
        delta = cosine * d_bar + sine * alpha
        gamma_bar = sine * d_bar - cosine * alpha
        epsilon = sine * beta_next
        d_bar = -cosine * beta_next
        # new rotation annihilating beta_{k+1}
        gamma = torch.sqrt(gamma_bar**2 + beta_next**2).clamp_min(tiny)
        cosine, sine = gamma_bar / gamma, beta_next / gamma
        phi = cosine * phi_bar
        # search direction w_k = (v_k - eps_k w_{k-2} - delta_k w_{k-1}) / gamma_k, written
        # over w_{k-2}; then the solution, frozen once converged (phi masked to 0)
        w_new = w_previous.mul_(-epsilon_previous).add_(v).addcmul_(w, delta, value=-1).div_(gamma)
        w_previous, w = w, w_new
        x.addcmul_(w, torch.where(done, zero, phi))
        phi_bar = torch.where(done, phi_bar, sine * phi_bar)
        iterations = iterations + (~done).long()
        done = done | (phi_bar.abs() <= threshold) | (beta_next <= tiny)
        # next Lanczos vector (zero after a breakdown, which only happens at the exact solution)
        scale = torch.where(beta_next > tiny, 1 / beta_next.clamp_min(tiny), zero)
        v_previous, v = v, p.mul_(scale)
        beta = beta_next
        if ran % check_every == 0 and bool(done):
            break
    return x, int(iterations), phi_bar.abs(), products


def minres(
    operator: Operator,
    rhs: Tensor,
    shift: float = 0.0,
    tolerance: float = 1e-5,
    max_iterations: int = 50,
    check_every: int = 5,
    initial: Tensor | None = None,
    restart_slack: float = 10.0,
) -> MinresResult:
    """Solve ``(A + shift I) x = rhs`` by MINRES. A must be symmetric; it may be indefinite.

    operator: ``v (N,) -> A v (N,)``. rhs: b (N,). shift: added to A's diagonal (the damping
    lambda). tolerance: target relative residual ``||b - (A + shift I) x|| / ||b||``.
    max_iterations: Lanczos iterations in all (restarts included). check_every: iterations
    between reads of the stopping test (the only host synchronisations). initial: x0 (zeros).
    restart_slack: a true residual above ``restart_slack * tolerance`` restarts MINRES from x
    while iterations remain; ``converged`` is judged against the same bound.
    """
    if rhs.dim() != 1:
        raise ValueError(f"rhs must be a vector (N,), got shape {tuple(rhs.shape)}")
    if max_iterations < 1 or check_every < 1:
        raise ValueError("max_iterations and check_every must be >= 1")
    rhs_norm = rhs.norm()
    x = torch.zeros_like(rhs) if initial is None else initial.to(rhs).clone()
    if float(rhs_norm) == 0.0:
        return MinresResult(torch.zeros_like(rhs), 0, 0.0, 0.0, True, 0, 0)
    apply = (lambda v: operator(v) + shift * v) if shift else operator
    used, products, restarts = 0, 0, 0
    estimate = rhs_norm
    while True:
        x, iterations, estimate, cycle_products = _minres_cycle(
            operator, rhs, x, shift, tolerance, max_iterations - used, check_every, rhs_norm
        )
        used += iterations
        products += cycle_products + 1
        true_residual = float((rhs - apply(x)).norm() / rhs_norm)
        converged = true_residual <= restart_slack * tolerance
        if converged or used >= max_iterations or iterations == 0:
            break
        restarts += 1
    return MinresResult(
        solution=x,
        iterations=used,
        estimated_residual=float(estimate / rhs_norm),
        true_residual=true_residual,
        converged=converged,
        products=products,
        restarts=restarts,
    )
