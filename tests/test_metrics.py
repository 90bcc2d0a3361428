"""Hypervolume, Pareto filtering and Δm% against hand-computed cases."""

import math

import numpy as np
import pytest
from mtlbench.harness.metrics import delta_m_percent, hypervolume, pareto_mask


def test_hypervolume_2d_by_hand() -> None:
    # staircase: (1,3), (2,2), (3,1) with reference (4,4): 3 + 2 + 1 unit columns = 1*3+1*2+1*1
    points = np.array([[1, 3], [2, 2], [3, 1], [3.5, 3.5]])  # last one dominated
    result = hypervolume(points, [4, 4])
    assert result.method == "exact" and result.standard_error == 0.0
    assert result.value == pytest.approx(3 + 2 + 1)


def test_hypervolume_3d_by_hand() -> None:
    # two boxes to (2,2,2): [0,1]^3 corner point (1,1,1) gives 1; (0,0,1.5) adds 2*2*0.5=2,
    # overlap 1*1*0.5
    points = np.array([[1, 1, 1], [0, 0, 1.5]])
    expected = 1 * 1 * 1 + 2 * 2 * 0.5 - 1 * 1 * 0.5
    assert hypervolume(points, [2, 2, 2]).value == pytest.approx(expected)


def test_points_outside_reference_or_not_finite_count_nothing() -> None:
    assert hypervolume(np.array([[5.0, 0.0]]), [4, 4]).value == 0.0
    assert hypervolume(np.array([[math.nan, 0.0], [1, 1]]), [2, 2]).value == pytest.approx(1.0)
    assert hypervolume(np.zeros((0, 2)), [1, 1]).value == 0.0


def test_hypervolume_matches_brute_force_monte_carlo_in_5d() -> None:
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, size=(30, 5))
    exact = hypervolume(points, [1] * 5).value
    samples = rng.uniform(0, 1, size=(200_000, 5))
    dominated = np.zeros(len(samples), dtype=bool)
    for point in points:
        dominated |= (samples >= point).all(axis=1)
    assert exact == pytest.approx(dominated.mean(), abs=0.01)


def test_many_objectives_use_approximation_with_stated_error() -> None:
    rng = np.random.default_rng(1)
    points = rng.uniform(0.2, 1.0, size=(40, 12))
    result = hypervolume(points, [1.0] * 12)
    assert result.method == "fpras" and result.epsilon == 0.01 and result.delta == 0.01
    assert result.ci_low < result.value < result.ci_high and result.standard_error > 0
    samples = rng.uniform(0, 1, size=(100_000, 12))
    dominated = np.zeros(len(samples), dtype=bool)
    for point in points:
        dominated |= (samples >= point).all(axis=1)
    reference_value = dominated.mean()
    tolerance = result.epsilon * reference_value + 4 * math.sqrt(reference_value / len(samples))
    assert abs(result.value - reference_value) < tolerance


def test_pareto_mask() -> None:
    points = np.array([[1, 2], [2, 1], [2, 2], [1, 2]])
    assert pareto_mask(points).tolist() == [True, True, False, True]


def test_delta_m_signs() -> None:
    # accuracy up 10% on task 1 (better, negative), MAE up 10% on task 2 (worse, positive): cancel
    assert delta_m_percent([0.55, 1.1], [0.5, 1.0], [True, False]) == pytest.approx(0.0)
    assert delta_m_percent([0.45, 1.0], [0.5, 1.0], [True, False]) == pytest.approx(5.0)


def test_delta_m_undefined_is_nan_with_a_reason() -> None:
    from mtlbench.harness.metrics import delta_m

    zero = delta_m([0.5, 1.0], [0.5, 0.0], [True, False], ["left", "right"])
    assert math.isnan(zero.value) and zero.reason == "baseline metric of task 'right' is 0"
    assert math.isnan(delta_m_percent([0.5, 1.0], [0.0, 1.0], [True, False]))
    missing = delta_m([0.5, 1.0], None, [True, False])
    assert math.isnan(missing.value) and "no single-task baseline" in missing.reason
    bad = delta_m([math.nan, 1.0], [0.5, 1.0], [True, False], ["left", "right"])
    assert math.isnan(bad.value) and bad.reason == "metric of task 'left' is not finite"
    fine = delta_m([0.45, 1.0], [0.5, 1.0], [True, False])
    assert fine.value == pytest.approx(5.0) and fine.reason == ""
