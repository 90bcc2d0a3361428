"""Input families and property checks shared by every weighting's tests (TorchJD-style).

Families (``random_jacobians``): per-task gradient matrices J (T, P), float64, with T from 2 to
40 and the shapes that break solvers: full rank, rank-deficient (T > rank), duplicated rows,
zero rows, and every one of them at scales 1e-8 and 1e8. The Gram is J Jᵀ.

Checks (each raises AssertionError naming the method and the case):
- ``check_finite``: finite weights on every family;
- ``check_permutation_equivariant``: permuting the tasks permutes the weights;
- ``check_non_conflicting``: ⟨g_t, Jᵀa⟩ >= 0 for every t (for methods that claim it);
- ``check_scaling``: weights(s G) = s^k weights(G) for the exponent k the paper implies.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from _problems import tiny_model, tiny_taskset
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.registry import METHODS
from torch import Tensor


def make_weighting(name: str, num_tasks: int, **params: Any) -> Any:
    """An instance of registered weighting ``name`` for ``num_tasks`` tasks (its ``weights``
    is then called directly on Grams; the tiny model is only there to construct it)."""
    method_cls = METHODS.get(name)
    torch.manual_seed(0)
    return method_cls(
        method_cls.Params.model_validate(params),
        tiny_model(num_tasks),
        tiny_taskset(num_tasks),
        TrainingConfig(),
    )


def random_jacobians(
    count: int = 200, seed: int = 0, max_tasks: int = 40
) -> Iterator[tuple[str, Tensor]]:
    """``count`` (label, J (T, P)) cases cycling through the families, float64."""
    generator = torch.Generator().manual_seed(seed)
    kinds = ("full", "rank_deficient", "duplicated", "zero_row", "scaled_small", "scaled_large")
    for index in range(count):
        kind = kinds[index % len(kinds)]
        num_tasks = int(torch.randint(2, max_tasks + 1, (1,), generator=generator))
        width = int(torch.randint(num_tasks + 1, 3 * num_tasks + 8, (1,), generator=generator))
        jacobian = torch.randn(num_tasks, width, generator=generator, dtype=torch.float64)
        if kind == "rank_deficient":
            rank = max(1, num_tasks // 2)
            mix = torch.randn(num_tasks, rank, generator=generator, dtype=torch.float64)
            jacobian = mix @ jacobian[:rank]
        elif kind == "duplicated":
            jacobian[-1] = jacobian[0]
        elif kind == "zero_row":
            jacobian[int(torch.randint(0, num_tasks, (1,), generator=generator))] = 0
        elif kind == "scaled_small":
            jacobian = jacobian * 1e-4  # Gram entries ~1e-8
        elif kind == "scaled_large":
            jacobian = jacobian * 1e4  # Gram entries ~1e8
        yield f"{kind}-T{num_tasks}-#{index}", jacobian


def losses_for(num_tasks: int, seed: int = 0) -> Tensor:
    """Positive task losses (T,), float64."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num_tasks, generator=generator, dtype=torch.float64) + 0.1


def check_finite(name: str, count: int = 60, **params: Any) -> None:
    for label, jacobian in random_jacobians(count):
        weighting = make_weighting(name, jacobian.shape[0], **params)
        weights = weighting.weights(jacobian @ jacobian.T, losses_for(jacobian.shape[0]))
        assert weights.shape == (jacobian.shape[0],), f"{name} {label}: shape {weights.shape}"
        assert torch.isfinite(weights).all(), f"{name} {label}: non-finite weights {weights}"


def check_permutation_equivariant(
    name: str, count: int = 30, atol: float = 1e-6, **params: Any
) -> None:
    generator = torch.Generator().manual_seed(1)
    for label, jacobian in random_jacobians(count, seed=3, max_tasks=12):
        num_tasks = jacobian.shape[0]
        losses = losses_for(num_tasks)
        permutation = torch.randperm(num_tasks, generator=generator)
        gram = jacobian @ jacobian.T
        weights = make_weighting(name, num_tasks, **params).weights(gram, losses)
        permuted = make_weighting(name, num_tasks, **params).weights(
            gram[permutation][:, permutation], losses[permutation]
        )
        scale = float(weights.abs().max()) or 1.0
        torch.testing.assert_close(
            permuted / scale,
            weights[permutation] / scale,
            atol=atol,
            rtol=0,
            msg=lambda m, label=label: f"{name} {label}: not permutation-equivariant: {m}",
        )


def check_non_conflicting(
    name: str, count: int = 60, solver_tolerance: float = 0.0, **params: Any
) -> None:
    """⟨g_t, d⟩ >= -tol·||g_t||·||d|| for every task, d = Jᵀa (the claim of MGDA and UPGrad).

    solver_tolerance: for an iterative solver stopped at a relative optimality tolerance, the
    slack it leaves near a Pareto-stationary point (d ≈ 0), relative to the largest ||g_t||².
    """
    for label, jacobian in random_jacobians(count, seed=5):
        num_tasks = jacobian.shape[0]
        gram = jacobian @ jacobian.T
        weights = make_weighting(name, num_tasks, **params).weights(gram, losses_for(num_tasks))
        products = gram @ weights.to(gram)
        norms = gram.diagonal().clamp_min(0).sqrt()
        direction_norm = float((weights.to(gram) @ gram @ weights.to(gram)).clamp_min(0).sqrt())
        largest = float(gram.diagonal().max())
        slack = 1e-5 * norms * direction_norm + (1e-12 + solver_tolerance) * largest
        assert (products >= -slack).all(), f"{name} {label}: conflicts, ⟨g_t, d⟩ = {products}"


def check_scaling(name: str, exponent: float, count: int = 20, **params: Any) -> None:
    """weights(s·G) = s**exponent · weights(G) for s in {1e-3, 1e3}."""
    for label, jacobian in random_jacobians(count, seed=7, max_tasks=10):
        if not label.startswith("full"):
            continue
        num_tasks = jacobian.shape[0]
        gram = jacobian @ jacobian.T
        losses = losses_for(num_tasks)
        base = make_weighting(name, num_tasks, **params).weights(gram, losses)
        for factor in (1e-3, 1e3):
            scaled = make_weighting(name, num_tasks, **params).weights(factor * gram, losses)
            torch.testing.assert_close(
                scaled,
                base * factor**exponent,
                rtol=1e-4,
                atol=1e-8 * float(base.abs().max() * factor**exponent),
                msg=lambda m, label=label, f=factor: f"{name} {label} ×{f}: {m}",
            )
