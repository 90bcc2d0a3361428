"""Min-norm point of the convex hull of T gradients, from their Gram matrix alone.

Solves  min_{a in simplex} a^T M a  with M = G G^T (T×T), the MGDA subproblem of Sener & Koltun
(NeurIPS 2018, Alg. 1 for two vectors, Alg. 2 Frank-Wolfe for T > 2). Working on M only means
any engine that can produce the Gram matrix (a loop, a batched Jacobian, representation
gradients, Ray actors holding parameter shards) can feed it.

Written by hand rather than calling a QP library: it must run on the device inside a training
step, batched with no host synchronisation per iteration (a fixed number of iterations, with
converged iterates frozen by masking), which QP libraries on the host cannot do.
"""

from __future__ import annotations

import torch
from torch import Tensor


def two_vector_weight(v1v1: Tensor, v1v2: Tensor, v2v2: Tensor) -> Tensor:
    """gamma minimising ||gamma v1 + (1 - gamma) v2||^2 over [0, 1] (exact line search).

    gamma = 1 if v1·v2 >= v1·v1; 0 if v1·v2 >= v2·v2; else (v2·v2 - v1·v2)/(|v1 - v2|^2).
    """
    denominator = (v1v1 + v2v2 - 2 * v1v2).clamp_min(torch.finfo(v1v1.dtype).tiny)
    gamma = ((v2v2 - v1v2) / denominator).clamp(0.0, 1.0)
    gamma = torch.where(v1v2 >= v1v1, torch.ones_like(gamma), gamma)
    return torch.where(v1v2 >= v2v2, torch.zeros_like(gamma), gamma)


def min_norm_weights(gram: Tensor, tolerance: float = 1e-5, max_iterations: int = 250) -> Tensor:
    """Frank-Wolfe weights a (T,) on the simplex minimising a^T gram a.

    gram: (T, T) symmetric PSD. tolerance: stop when the L1 change of a falls below it.
    max_iterations: Frank-Wolfe iterations at most. Starts from uniform weights (paper Alg. 2).
    The loop runs a fixed number of device ops; iterations after convergence leave a unchanged.
    """
    num_tasks = gram.shape[0]
    gram = gram.to(torch.float64)
    weights = torch.full((num_tasks,), 1.0 / num_tasks, dtype=gram.dtype, device=gram.device)
    if num_tasks == 1:
        return weights.to(torch.float32)
    done = torch.zeros((), dtype=torch.bool, device=gram.device)
    eye = torch.eye(num_tasks, dtype=gram.dtype, device=gram.device)
    for _ in range(max_iterations):
        gram_weights = gram @ weights
        vertex = torch.argmin(gram_weights)
        v1v1 = weights @ gram_weights
        v1v2 = gram_weights[vertex]
        v2v2 = gram[vertex, vertex]
        gamma = two_vector_weight(v1v1, v1v2, v2v2)
        updated = gamma * weights + (1 - gamma) * eye[vertex]
        change = (updated - weights).abs().sum()
        weights = torch.where(done, weights, updated)
        done = done | (change < tolerance)
    return weights.to(torch.float32)
