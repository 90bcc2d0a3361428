"""``cagrad``: Conflict-Averse Gradient descent.

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS
2021, Algorithm 1. The update d maximises the worst task's improvement min_t g_t · d within the
ball ‖d − g0‖ ≤ c‖g0‖ around the mean gradient g0 = Σ_t g_t / T. Its dual, on the Gram G (T, T):

    w = argmin over the simplex of  wᵀ G 𝟙 / T + c ‖g0‖ √(wᵀ G w),   ‖g0‖ = √(𝟙ᵀ G 𝟙) / T,

and d = g0 + c ‖g0‖ g_w / ‖g_w‖ with g_w = Σ_t w_t g_t: weights (𝟙/T + c‖g0‖/‖g_w‖ · w).

Scale: implementations disagree (official code: ``rescale`` 0, 1 or 2, default 1: /(1 + c²);
Nash-MTL's copy: × T; TorchJD: none). We take the authors' default /(1 + c²): it keeps d on the
mean scale (c = 0 is equal weighting; ‖d‖ ≤ ‖g0‖ (1 + c) / (1 + c²)). TorchJD's is ours × (1 + c²).

Solver: the dual, a second-order cone program, is solved on G / tr G by Clarabel (interior
point, as TorchJD via cvxpy; needed by this method only), status checked (the official SLSQP
result never is), then made exact on the solution's support S, where optimality reads
G_SS v + μ𝟙 = −(G𝟙/T)_S and vᵀG_SS v = c²‖g0‖² (v = c‖g0‖/‖g_w‖ · w): a quadratic in μ, whose
root is kept only if verifiably optimal (else the interior point's w, ~1e-4 off in d).
If ‖g_w‖ < ``pareto_tolerance`` · √tr G, 0 is in the convex hull of the gradients (a zero
gradient, or g_t that cancel): g_w has no direction, the correction term is dropped and
d = g0 / (1 + c²), the official code's answer (its 1e-8 floor makes the term vanish); TorchJD
returns 0 there instead.
"""

from __future__ import annotations

import numpy as np
import torch
from mtlbench.harness.method import MethodParams
from mtlbench.harness.registry import register_method
from mtlbench.harness.weighting import GramWeighting
from pydantic import Field
from scipy import sparse
from torch import Tensor


class CAGradParams(MethodParams):
    """c: radius of the ball around g0 that d may leave g0 by, relative to ‖g0‖ (0: the mean
        gradient). 0.4 as in the official ``run.sh`` (its script default is 0.5) and Nash-MTL.
    pareto_tolerance: ‖g_w‖ below this fraction of √(Σ_t ‖g_t‖²) counts as 0 (TorchJD's
        ``norm_eps`` on the same normalised Gram), where d = g0 / (1 + c²)."""

    c: float = Field(0.4, ge=0)
    pareto_tolerance: float = Field(1e-4, gt=0, lt=1)


def conflict_averse_simplex_weights(
    gram: np.ndarray, radius: float, eps: float = np.finfo(np.float64).eps
) -> np.ndarray:
    """w (T,) minimising wᵀ G 𝟙/T + radius √(wᵀ G w) over the simplex, G = ``gram`` (T, T) PSD
    float64 formed at precision ``eps``. Clarabel, in G's eigen-coordinates (G = F Fᵀ, F (T, r)):
    min (G𝟙/T)ᵀw + radius·s  s.t.  𝟙ᵀw = 1, w ≥ 0, (s, Fᵀw) in the second-order cone.
    Raises RuntimeError unless Clarabel reports the problem solved."""
    import clarabel  # imported here: only this method needs it

    num_tasks = gram.shape[0]
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    kept = eigenvalues > num_tasks * eps * eigenvalues.max()
    factor = eigenvectors[:, kept] * np.sqrt(eigenvalues[kept])  # F (T, r)
    rank = factor.shape[1]
    constraints = np.zeros((2 + num_tasks + rank, num_tasks + 1))  # 𝟙ᵀw, -w, -s, -Fᵀw
    constraints[0, :num_tasks] = 1.0
    constraints[1 : 1 + num_tasks, :num_tasks] = -np.eye(num_tasks)
    constraints[1 + num_tasks, num_tasks] = -1.0
    constraints[2 + num_tasks :, :num_tasks] = -factor.T
    bounds = np.r_[1.0, np.zeros(1 + num_tasks + rank)]
    cones = [clarabel.ZeroConeT(1), clarabel.NonnegativeConeT(num_tasks)]
    cones.append(clarabel.SecondOrderConeT(rank + 1))
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    settings.tol_gap_abs = settings.tol_gap_rel = settings.tol_feas = 1e-9
    objective = np.append(gram.sum(axis=1) / num_tasks, radius)
    no_quadratic = sparse.csc_matrix((num_tasks + 1, num_tasks + 1))
    data = (no_quadratic, objective, sparse.csc_matrix(constraints), bounds, cones, settings)
    solution = clarabel.DefaultSolver(*data).solve()
    if solution.status != clarabel.SolverStatus.Solved:
        raise RuntimeError(f"CAGrad: Clarabel did not solve the dual ({solution.status})")
    weights = np.clip(np.asarray(solution.x[:num_tasks]), 0.0, None)
    return weights / weights.sum()


def polished_correction(
    gram: np.ndarray, radius: float, weights: np.ndarray, tolerance: float = 1e-9
) -> np.ndarray | None:
    """v = radius / ‖g_w‖ · w (T,) exact, from the support of the interior point's ``weights``
    and active-set steps (drop tasks with v < 0, add the task improving least); None when no
    support passes the optimality check. gram: (T, T) with trace 1."""
    num_tasks = gram.shape[0]
    target = gram.sum(axis=1) / num_tasks  # g_t · g0
    support = weights > 1e-6 * weights.max()
    for _ in range(num_tasks):
        inverse = np.linalg.pinv(gram[np.ix_(support, support)], hermitian=True)
        ones, shift = inverse.sum(axis=0), inverse @ target[support]
        # vᵀ G v = radius² with v_S = −(shift + μ ones): quadratic μ² + 2 linear μ + constant = 0
        quadratic, linear = ones.sum(), ones @ target[support]
        discriminant = linear**2 - quadratic * (target[support] @ shift - radius**2)
        if quadratic <= 0.0 or discriminant < 0.0:
            return None
        mu = (-linear - np.sqrt(discriminant)) / quadratic  # the other root: d's antipode
        correction = np.zeros(num_tasks)
        correction[support] = -(shift + mu * ones)
        improvement = target + gram @ correction  # g_t · d (1 + c²)
        total = correction.sum()
        if total <= 0.0:
            return None
        if correction.min() < -tolerance * total:
            support &= correction >= -tolerance * total
        elif improvement.min() < -mu - tolerance:
            support[np.argmin(improvement)] = True
        else:
            exact = abs(correction @ gram @ correction - radius**2) <= tolerance * radius**2
            exact &= np.abs(improvement[support] + mu).max() <= tolerance
            return np.clip(correction, 0.0, None) if exact else None
    return None


@register_method("cagrad")
class CAGrad(GramWeighting[CAGradParams]):
    """CAGrad on the shared parameters; weights (T,) with Σα = (1 + c‖g0‖/‖g_w‖) / (1 + c²)."""

    Params = CAGradParams
    weights_on_simplex = False
    paper = "Liu et al., NeurIPS 2021 (Conflict-Averse Gradient Descent), Alg. 1"
    cost = "T encoder backward passes (the shared Jacobian)"

    def weights(self, gram: Tensor, task_losses: Tensor) -> Tensor:
        num_tasks, c = gram.shape[0], self.params.c
        gram64 = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
        weights = np.full(num_tasks, 1.0 / num_tasks)  # g0, kept when g_w has no direction
        trace = float(np.trace(gram64))
        if trace > 0.0 and c > 0.0:
            normalised = (gram64 + gram64.T) / (2 * trace)
            radius = c * np.sqrt(max(normalised.sum(), 0.0)) / num_tasks  # c‖g0‖ / √tr G
            if radius > 0.0:
                eps = torch.finfo(gram.dtype).eps  # G's numerical rank at its own precision
                w = conflict_averse_simplex_weights(normalised, radius, eps)
                w_norm = np.sqrt(max(w @ normalised @ w, 0.0))
                if w_norm >= self.params.pareto_tolerance:
                    exact = polished_correction(normalised, radius, w)
                    weights = weights + ((radius / w_norm) * w if exact is None else exact)
        weights = weights / (1.0 + c**2)
        return torch.as_tensor(weights, dtype=gram.dtype, device=gram.device)
