"""Euclidean simplex projection against a QP solver (quadprog) and its optimality conditions."""

import numpy as np
import pytest
import torch
from mtlbench.methods.simplex_projection import project_simplex
from qpsolvers import solve_qp


def qp_projection(values: np.ndarray) -> np.ndarray:
    """argmin ||w - v||^2 s.t. w >= 0, sum w = 1, by quadprog (an independent solver)."""
    size = len(values)
    return solve_qp(
        np.eye(size),
        -values,
        -np.eye(size),
        np.zeros(size),
        np.ones((1, size)),
        np.ones(1),
        solver="quadprog",
    )


@pytest.mark.parametrize("num_tasks", [1, 2, 3, 7, 40])
def test_projection_matches_quadprog_on_a_batch(num_tasks: int) -> None:
    generator = torch.Generator().manual_seed(num_tasks)
    # Scales from inside the simplex to far outside, with negative and large entries.
    values = torch.randn(64, num_tasks, generator=generator, dtype=torch.float64)
    values = values * torch.logspace(-2, 1, 64, dtype=torch.float64)[:, None]
    projected = project_simplex(values)
    expected = np.stack([qp_projection(row) for row in values.numpy()])
    np.testing.assert_allclose(projected.numpy(), expected, atol=1e-9)


def test_projection_optimality_conditions_and_fixed_points() -> None:
    """KKT: w = max(v - tau, 0) for one tau; points of the simplex are fixed; shape kept."""
    generator = torch.Generator().manual_seed(0)
    values = 3 * torch.randn(5, 4, 10, generator=generator, dtype=torch.float64)
    projected = project_simplex(values)
    assert projected.shape == values.shape
    assert (projected >= 0).all()
    torch.testing.assert_close(projected.sum(-1), torch.ones(5, 4, dtype=torch.float64))
    support = projected > 0
    shift = torch.where(support, values - projected, torch.nan)
    tau = shift.nanmean(-1, keepdim=True)
    torch.testing.assert_close(torch.where(support, shift, tau), tau.expand_as(shift))
    assert (values[~support] <= tau.expand_as(values)[~support] + 1e-12).all()
    on_simplex = torch.distributions.Dirichlet(torch.ones(10, dtype=torch.float64)).sample((20,))
    torch.testing.assert_close(project_simplex(on_simplex), on_simplex)


def test_projection_of_float32_stays_float32() -> None:
    values = torch.tensor([0.2, 0.9, -0.4], dtype=torch.float32)
    projected = project_simplex(values)
    assert projected.dtype == torch.float32
    torch.testing.assert_close(projected, torch.tensor([0.15, 0.85, 0.0]))
