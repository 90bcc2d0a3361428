"""Min-norm point of the convex hull of T gradients, from their Gram matrix alone.

Solves  min_{a in simplex} a^T M a  with M = G G^T (T×T): the MGDA subproblem of Sener & Koltun,
"Multi-Task Learning as Multi-Objective Optimization" (NeurIPS 2018). Working on M only means any
engine that can produce the Gram matrix (a loop, a batched Jacobian, representation gradients, Ray
actors holding parameter shards) can feed it.

- T = 1: the weight is 1.
- T = 2: the exact line search of the paper's Algorithm 1 (closed form, no iteration).
- T > 2: an active-set method (Wolfe's min-norm-point algorithm, Math. Programming 11, 1976, run
  from the full support): each iteration solves the affine min-norm problem on the current support
  exactly, then either steps back into the simplex dropping a task, or accepts the point and adds
  the most violating task (the Frank-Wolfe vertex of the paper's Algorithm 2). It terminates in a
  few iterations at the exact optimum, where Frank-Wolfe (the paper's Algorithm 2, the reference
  code) stalls at ~1e-3 relative error on ill-conditioned Grams within its 250 iterations.

Degenerate inputs have a canonical answer: the Gram is projected onto the PSD cone (a float32
Gram of nearly collinear gradients has negative eigenvalues of ~1e-5 relative size) and a ridge of
``RIDGE`` × max_t M_tt is added, so among several optimal weightings (identical or collinear
gradients, several zero gradients) the one of least Euclidean norm is returned: uniform weights
for identical gradients or an all-zero Gram, the zero-gradient task alone when one gradient is 0.

Written by hand rather than calling a QP library: it runs inside a training step, branch-free
(masks instead of Python control flow), with a host check of convergence only every
``check_every`` iterations (every iteration on the CPU, where it costs nothing). A Gram on a GPU
is solved on the host by default (``on_host``): the weights decide the next backward pass, so the
step waits for them anyway, and one T×T copy plus a host solve took ~0.1 ms where dozens of
tiny float64 kernels and a cuSOLVER ``eigh`` took ~8 ms a step (H100, ResNet-18, T = 3 and 40:
MGDA-UB 1.16× EW before, see benchmarks/step_time.py). ``on_host=False`` keeps it on the device.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

GradientNormalization = Literal["none", "l2", "loss", "loss+"]
NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "loss", "loss+")

RIDGE = 1e-9
"""Ridge added to the normalised Gram (relative to its largest diagonal entry)."""


def two_vector_weight(v1v1: Tensor, v1v2: Tensor, v2v2: Tensor) -> Tensor:
    """gamma in [0, 1] minimising ||gamma v1 + (1 - gamma) v2||^2 (paper Alg. 1, exact).

    gamma = (v2·v2 - v1·v2) / ||v1 - v2||^2 clipped to [0, 1]: 1 when v1·v2 >= v1·v1, 0 when
    v1·v2 >= v2·v2. Identical vectors (||v1 - v2|| = 0) give 1/2. All arguments are scalars.
    """
    denominator = v1v1 + v2v2 - 2 * v1v2
    degenerate = denominator <= torch.finfo(denominator.dtype).eps * (v1v1 + v2v2)
    gamma = ((v2v2 - v1v2) / torch.where(degenerate, 1.0, denominator)).clamp(0.0, 1.0)
    return torch.where(degenerate, torch.full_like(gamma, 0.5), gamma)


def min_norm_weights(
    gram: Tensor,
    tolerance: float = 1e-5,
    max_iterations: int = 250,
    check_every: int | None = None,
    initial_weights: Tensor | None = None,
    on_host: bool = True,
) -> Tensor:
    """Weights a (T,) on the simplex minimising a^T gram a.

    gram: (T, T) symmetric, PSD up to rounding (any float dtype, any device); returned weights
        have its dtype and device. Solved in float64.
    tolerance: relative optimality tolerance: the solver stops when no task t has
        (M a)_t < (1 - tolerance) a^T M a, i.e. when the Frank-Wolfe duality gap is below
        ``tolerance`` times the objective, so a^T M a exceeds the minimum by at most a factor
        1 + 2 · tolerance (the ridge keeps the objective positive).
    max_iterations: active-set iterations at most (each adds or drops one task; about T suffice
        from a cold start, one or two from a warm start).
    check_every: iterations between host checks of convergence (a host synchronisation on a
        GPU); None: every iteration on the CPU, every 8 elsewhere. Iterations after convergence
        leave the weights unchanged, so this changes the time taken, never the answer.
    initial_weights: (T,) a warm start on the simplex (e.g. the previous training step's
        weights): its support is the starting active set. None: uniform weights, full support.
        Any start reaches the optimum within ``tolerance``; where several weightings are
        optimal (to within it) the one returned may depend on the start.
    on_host: for T > 2, solve a non-CPU Gram on the CPU (one synchronisation) and return the
        weights on the Gram's device; False: solve on the Gram's device (see the module notes).
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square (T, T) matrix, got shape {tuple(gram.shape)}")
    if tolerance <= 0 or max_iterations < 1:
        raise ValueError(
            f"need tolerance > 0 and max_iterations >= 1, got {tolerance}, {max_iterations}"
        )
    num_tasks = gram.shape[0]
    if initial_weights is not None and initial_weights.shape != (num_tasks,):
        raise ValueError(
            f"initial_weights must have shape ({num_tasks},), got {tuple(initial_weights.shape)}"
        )
    if num_tasks == 1:
        return torch.ones(1, dtype=gram.dtype, device=gram.device)
    matrix = gram.to(torch.float64)
    matrix = (matrix + matrix.T) / 2
    if num_tasks == 2:
        gamma = two_vector_weight(matrix[0, 0], matrix[0, 1], matrix[1, 1])
        return torch.stack([gamma, 1 - gamma]).to(gram.dtype)
    if on_host and gram.device.type != "cpu":
        start_on_host = None if initial_weights is None else initial_weights.detach().cpu()
        weights = min_norm_weights(
            gram.detach().cpu(), tolerance, max_iterations, None, start_on_host, on_host=False
        )
        return weights.to(gram.device, non_blocking=True)
    if check_every is None:
        check_every = 1 if gram.device.type == "cpu" else 8
    if initial_weights is None:
        start = torch.full((num_tasks,), 1.0 / num_tasks, dtype=matrix.dtype, device=matrix.device)
    else:
        start = initial_weights.detach().to(matrix).clamp_min(0)
        start = torch.where(start.sum() > 0, start, torch.ones_like(start))
        start = start / start.sum()
    weights = _active_set(_regularised(matrix), start, tolerance, max_iterations, check_every)
    return weights.to(gram.dtype)


def _regularised(matrix: Tensor) -> Tensor:
    """Scaled to unit largest diagonal, made PSD, plus RIDGE·I: a positive definite (T, T).

    The PSD projection (eigenvalue clipping) is skipped on the CPU when the ridged matrix already
    has a Cholesky factor (then so has every principal submatrix the solver uses): a threaded
    LAPACK ``eigh`` on a busy CPU can stall for milliseconds, and most Grams do not need it.
    """
    scale = torch.diagonal(matrix).max().clamp_min(torch.finfo(matrix.dtype).tiny)
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    ridged = matrix / scale + RIDGE * eye
    if matrix.device.type == "cpu" and int(torch.linalg.cholesky_ex(ridged).info) == 0:
        return ridged
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix / scale)
    projected = (eigenvectors * eigenvalues.clamp_min(0)) @ eigenvectors.T
    return projected + RIDGE * eye


def _active_set(
    matrix: Tensor, weights: Tensor, tolerance: float, max_iterations: int, check_every: int
) -> Tensor:
    """Wolfe's min-norm-point iterations on a positive definite ``matrix`` (T, T), masked.

    State: weights a (T,) on the simplex and the support S = {t: a_t > 0} (``support``, bool;
    a task just added has a_t = 0 until the next solve). Each iteration: y = argmin of a^T M a
    over {sum a = 1, a_t = 0 off S} (one Cholesky solve). If y > 0 on S (major cycle): a = y,
    and the task minimising (M y)_t joins S if it improves by more than ``tolerance``; otherwise
    a is optimal. Else (minor cycle): a moves towards y until a weight reaches 0, and that task
    leaves S.
    """
    num_tasks = matrix.shape[0]
    device, dtype = matrix.device, matrix.dtype
    indices = torch.arange(num_tasks, device=device)
    eye = torch.eye(num_tasks, dtype=dtype, device=device)
    support = weights > 0
    done = torch.zeros((), dtype=torch.bool, device=device)
    infinity = torch.tensor(float("inf"), dtype=dtype, device=device)
    for iteration in range(max_iterations):
        # affine minimiser on the support: y ∝ M_SS^{-1} 1, zero off S (identity rows there)
        system = torch.where(support[:, None] & support[None, :], matrix, eye)
        factor, _ = torch.linalg.cholesky_ex(system)
        solution = torch.cholesky_solve(support[:, None].to(dtype), factor)[:, 0]
        affine = solution / solution.sum()
        blocking = (affine <= 0) & support
        inside = ~blocking.any()
        # major cycle: accept y; the Frank-Wolfe vertex joins S if it lowers the objective
        gradient = matrix @ affine
        lowest, vertex = gradient.min(dim=0)
        improving = lowest < (1 - tolerance) * (affine @ gradient)
        support_major = support | ((indices == vertex) & improving)
        # minor cycle: step from a towards y until the first weight reaches 0; that task leaves
        ratios = torch.where(blocking, weights / (weights - affine).clamp_min(1e-300), infinity)
        step, leaving = ratios.min(dim=0)
        moved = torch.lerp(weights, affine, step.clamp(0.0, 1.0))
        support_minor = (moved > 0) & (indices != leaving)
        moved = torch.where(support_minor, moved, 0.0)
        moved = moved / moved.sum()

        major = inside & ~done
        minor = ~inside & ~done
        weights = torch.where(major, affine, torch.where(minor, moved, weights))
        support = torch.where(major, support_major, torch.where(minor, support_minor, support))
        done = done | (inside & ~improving)
        if (iteration + 1) % check_every == 0 and bool(done):
            break
    return weights


def gradient_normalizers(
    gram: Tensor, task_losses: Tensor, normalization: GradientNormalization
) -> Tensor:
    """Per-task divisors c (T,) of the gradients before solving (reference code, not the paper).

    ``none``: 1; ``l2``: ||g_t|| = sqrt(M_tt); ``loss``: L_t; ``loss+``: L_t · ||g_t||.
    gram: (T, T); task_losses: (T,). A divisor that is not positive and finite (a zero gradient
    or a zero loss) is replaced by 1, so the normalised Gram stays finite.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    norms = torch.diagonal(gram).clamp_min(0).sqrt()
    losses = task_losses.detach().to(norms)
    if normalization == "none":
        return torch.ones_like(norms)
    divisors = {"l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    usable = torch.isfinite(divisors) & (divisors > torch.finfo(divisors.dtype).tiny)
    return torch.where(usable, divisors, torch.ones_like(divisors))


def mgda_weights(
    gram: Tensor,
    task_losses: Tensor,
    normalization: GradientNormalization = "none",
    tolerance: float = 1e-5,
    max_iterations: int = 250,
    initial_weights: Tensor | None = None,
) -> Tensor:
    """MGDA task weights (T,) on the simplex from the Gram of the raw gradients.

    The gradients g_t are first divided by ``gradient_normalizers`` c_t, which scales the Gram
    entries by 1 / (c_i c_j); the min-norm weights of the normalised gradients are returned. As
    in the reference code, these weights are then applied to the *raw* losses (so with a
    normalisation other than ``none``, sum_t a_t g_t is not the min-norm element of the raw
    gradients and need not be a common descent direction). ``initial_weights``: a warm start
    (see ``min_norm_weights``).
    """
    divisors = gradient_normalizers(gram, task_losses, normalization)
    normalised = gram / (divisors[:, None] * divisors[None, :])
    return min_norm_weights(normalised, tolerance, max_iterations, initial_weights=initial_weights)
