"""Projection onto the dual cone of the task gradients, from their Gram matrix alone.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization" (2024), Prop. 1: for
J (T, P) with rows g_t, G = J Jᵀ (T, T) and u (T,), the projection (their Eq. 3) of Jᵀu onto
the dual cone {x : J x >= 0} (the directions that conflict with no task) is Jᵀv with

    v = argmin_v  vᵀ G v   subject to  v >= u   (element-wise).

``upgrad`` solves it for u = e_t / T (t = 1..T) and sums the v's; ``dualproj`` for u = 𝟙 / T.
As in TorchJD, the QP is solved on G̃ = G / tr(G) + reg_eps·I: dividing by tr(G) = ||J||_F²
makes v independent of the gradients' scale, and the ridge makes G̃ positive definite (quadprog
needs it; a float32 Gram of nearly collinear gradients has slightly negative eigenvalues). The
price: the optimality conditions give ⟨g_t, Jᵀv⟩ = tr(G) (λ_t − reg_eps v_t) with λ >= 0, so
Jᵀv may conflict with g_t by up to reg_eps·tr(G)·v_t: up to ~3e-3 ||g_t|| ||Jᵀv|| for DualProj
at the default 1e-4 on full-rank Grams (TorchJD's output alike), and on rank-deficient ones
Jᵀv can be of the ridge's own size (collinear gradients of both signs: the exact answer is 0).
``reg_eps`` >= 1e-9: below ~1e-10 quadprog returned entries of 1e292 on singular Grams.

Small Grams: where tr(G) < ``norm_eps`` the Gram is replaced by 0 (TorchJD's rule: ``norm_eps``
is an absolute floor on tr(G) = sum_t ||g_t||²), so G̃ = reg_eps·I and v = max(u, 0): the
preference itself, i.e. mean weights 1/T for both methods. This covers tr(G) = 0 (all gradients
zero). It also means that below that floor (e.g. every ||g_t|| < 1e-2 / sqrt(T) at the default
1e-4) the projection is silently skipped; ``norm_eps = 0`` keeps it at every scale.

Solved with quadprog (Goldfarb & Idnani's dual active-set method, exact in a finite number of
steps), one QP per preference vector, in float64 on the host. quadprog is imported on first
use, so the registry loads without it.
"""

from __future__ import annotations

import numpy as np
import torch
from mtlbench.harness.method import MethodParams
from pydantic import Field
from torch import Tensor


class DualConeParams(MethodParams):
    """Parameters of ``upgrad`` and ``dualproj`` (TorchJD's ``QuadprogProjector`` defaults).

    norm_eps: floor on tr(G) = sum_t ||g_t||² below which the Gram is treated as zero and the
        weights are the preference (mean weights 1/T); 0: normalise at every positive scale.
    reg_eps: ridge added to the trace-normalised Gram G / tr(G) so that the QP is strictly
        convex (its solution unique); relative to tr(G), so it does not break scale invariance.
        Smaller: closer to the exact projection (conflicts shrink in proportion).
    """

    norm_eps: float = Field(1e-4, ge=0)
    reg_eps: float = Field(1e-4, ge=1e-9, le=1)


def dual_cone_weights(
    gram: Tensor, lower_bounds: np.ndarray, norm_eps: float, reg_eps: float
) -> np.ndarray:
    """v (K, T), row k = argmin_v vᵀ G̃ v s.t. v >= lower_bounds[k], G̃ = G / tr(G) + reg_eps·I.

    gram: (T, T) Gram of the task gradients (any dtype or device); lower_bounds: (K, T), float64.
    G is replaced by 0 where tr(G) < norm_eps or tr(G) <= 0 (module notes). A G / tr(G) that
    quadprog finds not positive definite even with the ridge (rounding) is projected onto the
    PSD cone (eigenvalues clipped at 0) and solved again.
    """
    import quadprog

    matrix = gram.detach().to("cpu", torch.float64).numpy()
    matrix = (matrix + matrix.T) / 2
    trace = float(np.trace(matrix))
    normalised = matrix / trace if trace > 0 and trace >= norm_eps else np.zeros_like(matrix)
    identity, linear = np.eye(len(matrix)), np.zeros(len(matrix))

    def solve(hessian: np.ndarray) -> np.ndarray:
        # quadprog: min ½ xᵀHx − aᵀx subject to Cᵀx >= b, here a = 0, C = I, b = u
        return np.stack([quadprog.solve_qp(hessian, linear, identity, u)[0] for u in lower_bounds])

    try:
        return solve(normalised + reg_eps * identity)
    except ValueError:  # quadprog: "matrix G is not positive definite"
        eigenvalues, eigenvectors = np.linalg.eigh(normalised)
        projected = (eigenvectors * np.clip(eigenvalues, 0, None)) @ eigenvectors.T
        return solve(projected + reg_eps * identity)
