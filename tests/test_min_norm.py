"""The min-norm solver against quadprog, the analytic two-task case, and its degenerate inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import qpsolvers
import torch
from mtlbench.methods.min_norm import (
    gradient_normalizers,
    mgda_weights,
    min_norm_weights,
    two_vector_weight,
)

TASK_COUNTS = (3, 4, 5, 8, 10, 20, 40)


def quadprog_min_norm(gram: np.ndarray) -> np.ndarray:
    """Independent oracle: min a^T M a on the simplex by quadprog (a 1e-12 ridge makes M PD)."""
    tasks = gram.shape[0]
    ridge = 1e-12 * max(np.diag(gram).max(), 1e-300)
    weights = qpsolvers.solve_qp(
        P=gram + ridge * np.eye(tasks),
        q=np.zeros(tasks),
        G=-np.eye(tasks),
        h=np.zeros(tasks),
        A=np.ones((1, tasks)),
        b=np.ones(1),
        solver="quadprog",
    )
    assert weights is not None
    return weights


def gradient_family(kind: str, tasks: int, rng: np.random.Generator) -> np.ndarray:
    """Task gradients (T, P) of one family; the degenerate ones are what the solver must survive."""
    dim = int(rng.integers(2, 80))
    if kind == "generic":
        rows = rng.normal(size=(tasks, dim))
    elif kind == "low_rank":  # P effectively below T: a singular Gram, many optimal weightings
        rank = int(rng.integers(1, max(2, tasks // 2) + 1))
        rows = rng.normal(size=(tasks, rank)) @ rng.normal(size=(rank, dim))
    elif kind == "shared_component":  # strongly aligned gradients: a sparse optimum
        rows = rng.normal(size=dim) + 0.3 * rng.normal(size=(tasks, dim))
    elif kind == "spread_norms":  # norms spread over orders of magnitude
        rows = rng.normal(size=(tasks, dim)) * np.exp(2 * rng.normal(size=(tasks, 1)))
    elif kind == "zero_gradient":
        rows = rng.normal(size=(tasks, dim))
        rows[rng.integers(tasks)] = 0.0
    elif kind == "duplicates":  # identical and opposite collinear gradients
        rows = rng.normal(size=(tasks, dim))
        rows[1] = rows[0]
        rows[2] = -float(rng.uniform(0.2, 5.0)) * rows[0]
    else:
        raise ValueError(kind)
    return rows / np.sqrt(dim)


FAMILIES = (
    "generic",
    "low_rank",
    "shared_component",
    "spread_norms",
    "zero_gradient",
    "duplicates",
)


def relative_objective_error(gram: np.ndarray, weights: np.ndarray, optimum: np.ndarray) -> float:
    scale = max(np.diag(gram).max(), 1e-300)
    return float((weights @ gram @ weights - optimum @ gram @ optimum) / scale)


def assert_on_simplex(weights: np.ndarray) -> None:
    assert weights.min() >= 0.0 and abs(weights.sum() - 1.0) < 1e-9, weights


def test_matches_quadprog_on_random_and_degenerate_grams() -> None:
    """252 Grams (6 families × 7 task counts × 6 draws): objective within 1e-6 × max_t ||g_t||^2."""
    rng = np.random.default_rng(0)
    worst = 0.0
    cases = 0
    for kind, tasks, _ in itertools.product(FAMILIES, TASK_COUNTS, range(6)):
        rows = gradient_family(kind, tasks, rng)
        gram = rows @ rows.T
        weights = min_norm_weights(torch.from_numpy(gram)).numpy()
        assert_on_simplex(weights)
        error = relative_objective_error(gram, weights, quadprog_min_norm(gram))
        assert error <= 1e-6, (kind, tasks, error)
        worst = max(worst, error)
        cases += 1
    assert cases >= 200


def test_float32_gram_of_nearly_collinear_gradients() -> None:
    """A float32 Gram with slightly negative eigenvalues still gives the float64 optimum."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(20_000, generator=generator)
    rows = base + 1e-3 * torch.randn(12, 20_000, generator=generator)
    gram32 = rows @ rows.T
    gram64 = (rows.double() @ rows.double().T).numpy()
    assert torch.linalg.eigvalsh(gram32.double()).min() < 0  # the case this test is about
    weights = min_norm_weights(gram32)
    assert weights.dtype == torch.float32
    error = relative_objective_error(gram64, weights.double().numpy(), quadprog_min_norm(gram64))
    assert error <= 1e-6


@pytest.mark.parametrize(
    "first, second",
    [
        ([1.0, 0.0], [0.0, 2.0]),  # interior optimum
        ([1.0, 0.0], [1.0, 1.0]),  # v1·v2 >= v1·v1: gamma = 1
        ([3.0, 1.0], [1.0, 0.1]),  # v1·v2 >= v2·v2: gamma = 0
        ([1.0, 2.0], [-2.0, -4.0]),  # opposite: the origin, gamma = 2/3
    ],
)
def test_two_tasks_analytic(first: list[float], second: list[float]) -> None:
    """gamma from the closed form of Alg. 1, and the minimiser found by a dense scan."""
    v1, v2 = np.array(first), np.array(second)
    gram = np.array([[v1 @ v1, v1 @ v2], [v1 @ v2, v2 @ v2]])
    weights = min_norm_weights(torch.from_numpy(gram)).numpy()
    unclipped = (v2 @ v2 - v1 @ v2) / ((v1 - v2) @ (v1 - v2))
    assert weights[0] == pytest.approx(float(np.clip(unclipped, 0, 1)), abs=1e-12)
    grid = np.linspace(0, 1, 100_001)
    norms = np.linalg.norm(grid[:, None] * v1 + (1 - grid[:, None]) * v2, axis=1)
    assert weights[0] == pytest.approx(grid[np.argmin(norms)], abs=1e-4)
    gamma = two_vector_weight(*map(torch.tensor, (v1 @ v1, v1 @ v2, v2 @ v2)))
    assert float(gamma) == pytest.approx(weights[0], abs=1e-12)


def test_common_descent_when_not_pareto_stationary() -> None:
    """d = sum_t a_t g_t satisfies g_t · d >= ||d||^2 > 0 for every t (KKT of the min-norm QP)."""
    rng = np.random.default_rng(1)
    checked = 0
    for kind, tasks, _ in itertools.product(FAMILIES, TASK_COUNTS, range(3)):
        rows = gradient_family(kind, tasks, rng)
        gram = rows @ rows.T
        weights = min_norm_weights(torch.from_numpy(gram)).numpy()
        direction = weights @ rows
        squared_norm = direction @ direction
        if squared_norm <= 1e-4 * np.diag(gram).max():
            continue  # (near) Pareto stationary: 0 is in the hull, no common descent exists
        alignments = rows @ direction
        assert alignments.min() >= squared_norm * (1 - 1e-6) > 0, (kind, tasks)
        checked += 1
    assert checked >= 40


def test_degenerate_inputs_have_canonical_answers() -> None:
    def solve(matrix) -> np.ndarray:
        return min_norm_weights(torch.tensor(matrix, dtype=torch.float64)).numpy()

    np.testing.assert_allclose(solve(np.zeros((4, 4))), np.full(4, 0.25), atol=1e-9)
    np.testing.assert_allclose(solve(np.ones((5, 5))), np.full(5, 0.2), atol=1e-6)
    np.testing.assert_allclose(solve(np.ones((2, 2))), [0.5, 0.5])
    np.testing.assert_allclose(solve(np.diag([0.0, 1.0, 2.0])), [1, 0, 0], atol=1e-8)
    np.testing.assert_allclose(solve(np.diag([0.0, 0.0, 2.0])), [0.5, 0.5, 0], atol=1e-8)
    assert solve(np.array([[3.0]])).tolist() == [1.0]
    # g2 = -2 g1 (and a third, orthogonal task): the origin is reached with a1 = 2 a2
    rows = np.array([[1.0, 0.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    weights = solve(rows @ rows.T)
    np.testing.assert_allclose(weights, [2 / 3, 1 / 3, 0.0], atol=1e-6)


def test_warm_start_and_check_interval_do_not_change_the_optimum() -> None:
    """Any warm start reaches the same objective (weights may differ only where the optimum is
    not unique); the host-check interval changes nothing at all."""
    rng = np.random.default_rng(2)
    for kind in FAMILIES:
        rows = gradient_family(kind, 20, rng)
        gram = rows @ rows.T
        optimum = quadprog_min_norm(gram)
        cold = min_norm_weights(torch.from_numpy(gram))
        sparse_start = torch.zeros(20, dtype=torch.float64)
        sparse_start[3] = 1.0
        for start in (cold, sparse_start, torch.rand(20, dtype=torch.float64)):
            warm = min_norm_weights(torch.from_numpy(gram), initial_weights=start).numpy()
            assert_on_simplex(warm)
            assert relative_objective_error(gram, warm, optimum) <= 1e-6, kind
        every_seventh = min_norm_weights(torch.from_numpy(gram), check_every=7)
        assert torch.equal(every_seventh, cold)


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_normalizers_match_explicitly_normalised_gradients(normalization: str) -> None:
    """Solving on the rescaled Gram equals solving on the gradients divided by c_t."""
    rng = np.random.default_rng(3)
    rows = gradient_family("spread_norms", 6, rng)
    losses = rng.uniform(0.1, 3.0, size=6)
    norms = np.linalg.norm(rows, axis=1)
    divisors = {"none": np.ones(6), "l2": norms, "loss": losses, "loss+": losses * norms}[
        normalization
    ]
    gram, task_losses = torch.from_numpy(rows @ rows.T), torch.from_numpy(losses)
    np.testing.assert_allclose(
        gradient_normalizers(gram, task_losses, normalization).numpy(), divisors
    )
    scaled = rows / divisors[:, None]
    expected = quadprog_min_norm(scaled @ scaled.T)
    weights = mgda_weights(gram, task_losses, normalization).numpy()
    assert relative_objective_error(scaled @ scaled.T, weights, expected) <= 1e-6


def test_normalizers_fall_back_to_one_for_zero_divisors() -> None:
    gram = torch.diag(torch.tensor([0.0, 4.0, 1.0], dtype=torch.float64))
    losses = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    assert gradient_normalizers(gram, losses, "l2").tolist() == [1.0, 2.0, 1.0]
    assert gradient_normalizers(gram, losses, "loss").tolist() == [1.0, 1.0, 2.0]
    assert gradient_normalizers(gram, losses, "loss+").tolist() == [1.0, 1.0, 2.0]
    assert torch.isfinite(mgda_weights(gram, losses, "loss+")).all()


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="square"):
        min_norm_weights(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="normalization"):
        gradient_normalizers(torch.eye(2), torch.ones(2), "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="initial_weights"):
        min_norm_weights(torch.eye(3), initial_weights=torch.ones(2))
