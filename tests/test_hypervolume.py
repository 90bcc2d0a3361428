"""Hypervolume in any number of objectives (harness/hypervolume.py) against independent oracles:
moocore's exact hypervolume up to 31 objectives, closed forms at 40 and 100 (one box, disjoint
boxes, nested boxes, two boxes and their intersection, a 2-D staircase times a fixed box)."""

from __future__ import annotations

import math

import moocore
import numpy as np
import pytest
from mtlbench.harness.hypervolume import (
    EXACT,
    EXACT_INCLUSION_EXCLUSION,
    EXACT_PRODUCT,
    FPRAS,
    union_volume_fpras,
    union_volume_inclusion_exclusion,
)
from mtlbench.harness.metrics import hypervolume

EPSILON = DELTA = 0.05  # test-sized guarantee: ~4,500 hits per estimate


def random_front(rng: np.random.Generator, points: int, dimensions: int) -> np.ndarray:
    """Non-dominated points in (0, 1)^d of one of three shapes: uniform, a tight cluster
    (heavily overlapping boxes, the FPRAS's hardest case) or a curved simplex front."""
    shape = rng.integers(3)
    if shape == 0:
        front = rng.uniform(0.0, 1.0, size=(points, dimensions))
    elif shape == 1:
        centre = rng.uniform(0.05, 0.5, size=dimensions)
        front = np.clip(centre + rng.normal(0.0, 0.02, size=(points, dimensions)), 0.001, 0.999)
    else:
        weights = rng.dirichlet(np.ones(dimensions), size=points)
        front = 0.95 * weights / np.linalg.norm(weights, axis=1, keepdims=True)
    return front[moocore.is_nondominated(front)]


def relative_error(estimate: float, exact: float) -> float:
    return abs(estimate - exact) / exact


def test_fpras_is_within_epsilon_of_moocore_on_at_least_1_minus_delta_of_200_fronts() -> None:
    rng = np.random.default_rng(17)
    within = 0
    for index in range(200):
        dimensions = int(rng.integers(3, 32))
        most = 40 if dimensions <= 6 else 24 if dimensions <= 12 else 12
        front = random_front(rng, int(rng.integers(2, most + 1)), dimensions)
        reference = np.ones(dimensions)
        exact = moocore.hypervolume(front, ref=reference)
        upper = np.broadcast_to(reference, front.shape)
        estimate = union_volume_fpras(front, upper, EPSILON, DELTA, seed=index)
        assert estimate.method == FPRAS and estimate.samples > 0
        within += relative_error(estimate.value, exact) <= EPSILON
    assert within >= (1 - DELTA) * 200, within


def test_inclusion_exclusion_equals_moocore_up_to_31_objectives() -> None:
    rng = np.random.default_rng(3)
    for _ in range(40):
        dimensions = int(rng.integers(3, 32))
        front = random_front(rng, int(rng.integers(2, 13)), dimensions)
        reference = np.ones(dimensions)
        exact = moocore.hypervolume(front, ref=reference)
        upper = np.broadcast_to(reference, front.shape)
        assert union_volume_inclusion_exclusion(front, upper) == pytest.approx(exact, rel=1e-10)


@pytest.mark.parametrize("dimensions", [40, 100])
def test_one_box_is_its_product(dimensions) -> None:
    rng = np.random.default_rng(dimensions)
    point, reference = rng.uniform(0.0, 0.2, dimensions), np.ones(dimensions)
    volume = float(np.prod(reference - point))
    result = hypervolume(point[None, :], reference)
    assert result.method == EXACT_PRODUCT and result.epsilon == result.delta == 0.0
    assert result.value == pytest.approx(volume, rel=1e-12)
    assert result.ci_low == result.ci_high == result.value and result.standard_error == 0.0
    estimate = union_volume_fpras(point[None, :], reference[None, :], EPSILON, DELTA)
    assert relative_error(estimate.value, volume) <= EPSILON


@pytest.mark.parametrize("dimensions", [40, 100])
def test_disjoint_boxes_sum_their_products(dimensions) -> None:
    # box i spans [2i, 2i + 1 + u] in the first coordinate (gaps between boxes), random widths
    rng = np.random.default_rng(dimensions + 1)
    count = 10
    lower = rng.uniform(0.0, 0.1, size=(count, dimensions))
    upper = lower + rng.uniform(0.9, 1.0, size=(count, dimensions))
    lower[:, 0], upper[:, 0] = 2.0 * np.arange(count), 2.0 * np.arange(count) + 1.5
    volume = float(np.prod(upper - lower, axis=1).sum())
    exact = union_volume_inclusion_exclusion(lower, upper)
    assert exact == pytest.approx(volume, rel=1e-12)
    estimate = union_volume_fpras(lower, upper, EPSILON, DELTA, seed=1)
    assert relative_error(estimate.value, volume) <= EPSILON


@pytest.mark.parametrize("dimensions", [40, 100])
def test_nested_boxes_are_the_dominating_point_s_box(dimensions) -> None:
    rng = np.random.default_rng(dimensions + 2)
    best = rng.uniform(0.0, 0.1, dimensions)
    dominated = best + rng.uniform(0.0, 0.2, size=(15, dimensions))
    front, reference = np.vstack([dominated, best]), np.ones(dimensions)
    volume = float(np.prod(reference - best))
    assert hypervolume(front, reference).value == pytest.approx(volume, rel=1e-12)
    upper = np.broadcast_to(reference, front.shape)
    assert union_volume_inclusion_exclusion(front[-12:], upper[-12:]) == pytest.approx(
        volume, rel=1e-12
    )
    estimate = union_volume_fpras(front, upper, EPSILON, DELTA, seed=2)  # unfiltered: 16 boxes
    assert relative_error(estimate.value, volume) <= EPSILON


@pytest.mark.parametrize("dimensions", [40, 100])
def test_two_points_are_both_boxes_less_their_intersection(dimensions) -> None:
    rng = np.random.default_rng(dimensions + 3)
    first, second = rng.uniform(0.0, 0.1, size=(2, dimensions))
    reference = np.ones(dimensions)
    volume = float(
        np.prod(reference - first)
        + np.prod(reference - second)
        - np.prod(reference - np.maximum(first, second))
    )
    result = hypervolume(np.vstack([first, second]), reference)
    assert result.method == EXACT_INCLUSION_EXCLUSION
    assert result.value == pytest.approx(volume, rel=1e-12)
    upper = np.broadcast_to(reference, (2, dimensions))
    estimate = union_volume_fpras(np.vstack([first, second]), upper, EPSILON, DELTA, seed=3)
    assert relative_error(estimate.value, volume) <= EPSILON


@pytest.mark.parametrize("dimensions", [40, 100])
def test_staircase_front_through_the_entry_point_uses_the_fpras(dimensions) -> None:
    # 20 points on a 2-D staircase, equal in the other coordinates: the hypervolume is the
    # staircase's area times the box of the shared coordinates
    steps = 20
    staircase = np.column_stack([np.arange(steps), steps - 1 - np.arange(steps)]) / steps
    rest = np.full((steps, dimensions - 2), 0.05)
    front, reference = np.hstack([staircase, rest]), np.ones(dimensions)
    area = float(moocore.hypervolume(staircase, ref=np.ones(2)))
    volume = area * 0.95 ** (dimensions - 2)
    result = hypervolume(front, reference, epsilon=EPSILON, delta=DELTA)
    assert result.method == FPRAS and (result.epsilon, result.delta) == (EPSILON, DELTA)
    assert relative_error(result.value, volume) <= EPSILON
    assert result.ci_low == pytest.approx(result.value / (1 + EPSILON))
    assert result.ci_high == pytest.approx(result.value / (1 - EPSILON))
    assert result.ci_low <= volume <= result.ci_high
    assert result.standard_error > 0 and result.samples > 0


def test_the_same_front_gives_the_same_value_whatever_its_row_order() -> None:
    rng = np.random.default_rng(5)
    front = random_front(rng, 30, 40)
    first = hypervolume(front, np.ones(40), epsilon=EPSILON, delta=DELTA)
    again = hypervolume(front[::-1].copy(), np.ones(40), epsilon=EPSILON, delta=DELTA)
    assert first.method == FPRAS and first == again


def test_each_front_goes_to_the_cheapest_exact_form_or_the_fpras() -> None:
    rng = np.random.default_rng(6)
    assert hypervolume(np.full((1, 40), 2.0), np.ones(40)).method == EXACT  # nothing inside
    assert hypervolume(rng.uniform(size=(200, 5)), np.ones(5)).method == EXACT
    assert hypervolume(random_front(rng, 24, 10), np.ones(10)).method == EXACT
    assert hypervolume(np.full((3, 40), 0.5), np.ones(40)).method == EXACT_PRODUCT  # duplicates
    assert hypervolume(random_front(rng, 8, 40), np.ones(40)).method == EXACT_INCLUSION_EXCLUSION
    # moocore takes seconds to hours on 20 points in 20 objectives: the FPRAS answers instead
    front = rng.uniform(size=(20, 20))
    result = hypervolume(front, np.ones(20), epsilon=EPSILON, delta=DELTA)
    assert result.method == FPRAS
    assert not math.isnan(result.value) and result.ci_low < result.value < result.ci_high


def test_epsilon_and_delta_must_be_probabilities_below_one() -> None:
    box = np.zeros((1, 3)), np.ones((1, 3))
    for epsilon, delta in ((0.0, 0.1), (1.0, 0.1), (0.1, 0.0), (0.1, 1.0)):
        with pytest.raises(ValueError, match="epsilon"):
            union_volume_fpras(*box, epsilon, delta)
