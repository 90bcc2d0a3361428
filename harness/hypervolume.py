"""Hypervolume for any number of objectives: exact where affordable, a guaranteed estimate beyond.

The hypervolume of a front P (minimised) up to a reference point r is the volume of the union of
the boxes [p, r], p ∈ P. moocore computes it exactly but refuses more than 31 objectives (CelebA
has 40), so each front is answered by the first of these that applies
(``HypervolumeResult.method``):

- ``exact``: no point inside the reference (0), or moocore's exact algorithms while moocore
  accepts the dimension (≤ 31 objectives) and they are cheap: ≤ 6 objectives with any number of
  points, ≤ 24 points up to 12 objectives, ≤ 12 points up to 31. Their cost grows about
  exponentially with the points beyond 6 objectives (moocore 0.3.2, clustered fronts, one busy
  core): 24 points take 0.2 s in 12 objectives and 3 s in 14; 16 points 10 s in 20 objectives
  and over 20 s in 31; 20 points in 20 objectives over 20 s. The former rule, "≤ 24 points in any
  dimension", could stall a run for hours.
- ``exact-product``: one point, ∏ₜ (rₜ − pₜ).
- ``exact-inclusion-exclusion``: ≤ 12 points (``INCLUSION_EXCLUSION_MAX_BOXES``) in more objectives:
  Σ over the 2^N − 1 non-empty subsets S of (−1)^{|S|+1} |∩_S boxes|; the boxes [p, r] of S
  intersect in the box [max_S p, r].
- ``fpras``: beyond, the Karp–Luby–Madras estimator of the volume of a union of boxes
  (``union_volume_fpras``), which is within a factor 1 ± ε of the hypervolume with probability at
  least 1 − δ (default ε = δ = 0.01). It replaces moocore's Monte-Carlo ``hv_approx``
  (Deng & Zhang 2019), which states no error bound.

The estimate is deterministic: its random generator is seeded from the points, the reference and
(ε, δ), so rerunning a front gives the same number.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import moocore
import numpy as np
import numpy.typing as npt

EXACT = "exact"
EXACT_PRODUCT = "exact-product"
EXACT_INCLUSION_EXCLUSION = "exact-inclusion-exclusion"
FPRAS = "fpras"

MOOCORE_MAX_DIMENSIONS = 31  # moocore.hypervolume: "supports at most 31 columns"
EXACT_MAX_DIMENSIONS_ANY_SIZE = 6
EXACT_MAX_POINTS_MID_DIM, EXACT_MAX_DIMENSIONS_MID = 24, 12
INCLUSION_EXCLUSION_MAX_BOXES = 12  # 2^12 − 1 = 4095 intersections; moocore's cap above 12
DEFAULT_EPSILON = 0.01
DEFAULT_DELTA = 0.01
# FPRAS working set: trials per batch × dimensions, in float64 values (2^21 values = 16 MiB)
BATCH_VALUES = 1 << 21


@dataclass(frozen=True)
class HypervolumeResult:
    """A front's hypervolume and how it was obtained.

    value: the hypervolume (the estimate when ``method`` is ``fpras``).
    method: ``exact`` (moocore, or 0 for no point inside the reference), ``exact-product`` (one
        point), ``exact-inclusion-exclusion`` (≤ 12 points) or ``fpras`` (estimate).
    epsilon: relative error bound: |value − hypervolume| ≤ epsilon · hypervolume, with
        probability ≥ 1 − delta; 0 when exact.
    delta: probability that the bound fails; 0 when exact.
    ci_low, ci_high: the interval [value / (1 + ε), value / (1 − ε)] that holds the hypervolume
        with probability ≥ 1 − δ (the bound above, solved for the hypervolume); both equal
        ``value`` when exact.
    standard_error: the empirical standard error of the estimate (V·sqrt(p̂(1 − p̂)/N) for the
        FPRAS's N trials with hit rate p̂ and total box volume V); 0 when exact. Informative
        only: the guarantee is (epsilon, delta), not a normal interval.
    samples: the FPRAS's number of trials N; 0 when exact.
    """

    value: float
    method: str
    epsilon: float
    delta: float
    ci_low: float
    ci_high: float
    standard_error: float
    samples: int

    @classmethod
    def exact(cls, value: float, method: str = EXACT) -> HypervolumeResult:
        value = float(value)
        return cls(value, method, 0.0, 0.0, value, value, 0.0, 0)

    @classmethod
    def estimate(
        cls, value: float, epsilon: float, delta: float, standard_error: float, samples: int
    ) -> HypervolumeResult:
        value = float(value)
        return cls(
            value,
            FPRAS,
            float(epsilon),
            float(delta),
            value / (1.0 + epsilon),
            value / (1.0 - epsilon),
            float(standard_error),
            int(samples),
        )

    @property
    def is_exact(self) -> bool:
        return self.epsilon == 0.0


def compute_hypervolume(
    objectives: np.ndarray,
    reference: Sequence[float],
    epsilon: float = DEFAULT_EPSILON,
    delta: float = DEFAULT_DELTA,
    seed: int | None = None,
) -> HypervolumeResult:
    """Hypervolume dominated by ``objectives`` (N, T) up to ``reference`` (T,), minimising.

    Rows that are not finite or do not strictly dominate the reference count nothing; dominated
    rows are dropped. epsilon, delta: the FPRAS's relative error and failure probability, used
    only when no exact form applies. seed: the FPRAS's generator seed; None derives it from the
    input, so the same front always gives the same value.
    """
    reference_point = np.asarray(reference, dtype=float)
    objectives = np.asarray(objectives, dtype=float).reshape(-1, len(reference_point))
    inside = np.isfinite(objectives).all(axis=1) & (objectives < reference_point).all(axis=1)
    points = objectives[inside]
    if len(points) == 0:
        return HypervolumeResult.exact(0.0)
    points = np.unique(points[moocore.is_nondominated(points)], axis=0)
    count, dimensions = points.shape
    if count == 1:
        return HypervolumeResult.exact(np.prod(reference_point - points[0]), EXACT_PRODUCT)
    if moocore_is_cheap(count, dimensions):
        return HypervolumeResult.exact(moocore.hypervolume(points, ref=reference_point))
    upper = np.broadcast_to(reference_point, points.shape)
    if count <= INCLUSION_EXCLUSION_MAX_BOXES:
        value = union_volume_inclusion_exclusion(points, upper)
        return HypervolumeResult.exact(value, EXACT_INCLUSION_EXCLUSION)
    if seed is None:
        seed = input_seed(points, reference_point, epsilon, delta)
    return union_volume_fpras(points, upper, epsilon, delta, seed)


def moocore_is_cheap(points: int, dimensions: int) -> bool:
    """Whether moocore's exact hypervolume accepts and is fast (well under a second) on a front
    of that many non-dominated points and objectives."""
    if dimensions <= EXACT_MAX_DIMENSIONS_ANY_SIZE:
        return True
    if dimensions <= EXACT_MAX_DIMENSIONS_MID:
        return points <= EXACT_MAX_POINTS_MID_DIM
    return dimensions <= MOOCORE_MAX_DIMENSIONS and points <= INCLUSION_EXCLUSION_MAX_BOXES


def input_seed(*arrays_or_numbers: npt.ArrayLike) -> int:
    """A 64-bit seed from the bytes of the inputs (float64), so equal inputs draw equally."""
    digest = hashlib.sha256()
    for item in arrays_or_numbers:
        digest.update(np.ascontiguousarray(item, dtype=np.float64).tobytes())
    return int.from_bytes(digest.digest()[:8], "little")


def box_volumes(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Volumes (M,) of the boxes [lower_i, upper_i] (M, d); 0 for empty ones."""
    return np.prod(np.clip(upper - lower, 0.0, None), axis=-1)


def union_volume_inclusion_exclusion(lower: np.ndarray, upper: np.ndarray) -> float:
    """Exact volume of the union of the boxes [lower_i, upper_i] (M, d), M ≤ 12 or so.

    |∪ B_i| = Σ_{∅≠S} (−1)^{|S|+1} |∩_S B_i|, and ∩_S B_i = [max_S lower, min_S upper]. The 2^M
    subsets are built by doubling: subsets without box k, then the same with box k added.
    """
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    dimensions = lower.shape[1]
    subset_lower = np.full((1, dimensions), -np.inf)
    subset_upper = np.full((1, dimensions), np.inf)
    subset_size = np.zeros(1, dtype=np.int64)
    for box_lower, box_upper in zip(lower, upper, strict=True):
        subset_lower = np.concatenate([subset_lower, np.maximum(subset_lower, box_lower)])
        subset_upper = np.concatenate([subset_upper, np.minimum(subset_upper, box_upper)])
        subset_size = np.concatenate([subset_size, subset_size + 1])
    volumes = box_volumes(subset_lower[1:], subset_upper[1:])
    signs = np.where(subset_size[1:] % 2 == 1, 1.0, -1.0)
    return float(math.fsum(signs * volumes))


def stopping_rule_hits(epsilon: float, delta: float) -> float:
    """Υ₁ = 1 + (1 + ε)·4(e − 2)·ln(2/δ)/ε², the hit count at which the stopping rule of Dagum,
    Karp, Luby & Ross (2000) stops."""
    return 1.0 + (1.0 + epsilon) * 4.0 * (math.e - 2.0) * math.log(2.0 / delta) / epsilon**2


def union_volume_fpras(
    lower: np.ndarray,
    upper: np.ndarray,
    epsilon: float = DEFAULT_EPSILON,
    delta: float = DEFAULT_DELTA,
    seed: int = 0,
) -> HypervolumeResult:
    """(ε, δ)-estimate of the volume of the union of the boxes [lower_i, upper_i] (M, d).

    Trial (Karp, Luby & Madras 1989, "Monte-Carlo approximation algorithms for enumeration
    problems", J. Algorithms 10(3):429–448, the coverage algorithm; Bringmann & Friedrich 2010,
    "Approximating the volume of unions and intersections of high-dimensional geometric
    objects", Comput. Geom. 43(6–7):601–610, for boxes and the hypervolume): draw box i with
    probability |B_i| / V, V = Σ_i |B_i|, then x uniform in B_i; Z = 1 when i is the first
    (lowest index) box that contains x. Each point of the union is counted by its first box
    only, so E[Z] = μ = |∪ B_i| / V, and μ ≥ 1/M (the union holds the largest box, ≥ V/M).

    Number of trials: KLM's zero-one estimator theorem makes a fixed N ≥ 4 ln(2/δ)/(μ ε²)
    enough (ε ≤ 2), which with μ ≥ 1/M is N = ⌈4 M ln(2/δ)/ε²⌉ — M times too many when the boxes
    overlap little. We use instead the stopping rule of Dagum, Karp, Luby & Ross (2000), "An
    optimal algorithm for Monte Carlo estimation", SIAM J. Comput. 29(5):1484–1496: draw trials
    until their hits reach Υ₁ = 1 + (1 + ε)·4(e − 2)·ln(2/δ)/ε², and answer μ̂ = Υ₁/N.
    Stopping Rule Theorem: for 0 < ε < 1, Pr[(1 − ε)μ ≤ μ̂ ≤ (1 + ε)μ] > 1 − δ, and
    E[N] ≤ Υ₁/μ ≤ M·Υ₁ — the KLM bound's order with the unknown μ in place of its lower bound
    (Υ₁ ≈ 2.9 (1 + ε) ln(2/δ)/ε² against KLM's 4 ln(2/δ)/ε²). The estimate is V·μ̂.

    Vectorised: trials come in batches; a batch's box counts are one multinomial draw, the
    points of each box one uniform array, tested against boxes 0, 1, …, i − 1 (largest first,
    so heavily overlapping fronts decide in a test or two) on the coordinates where box j does
    not already contain box i, dropping the trials found covered. The batch that reaches Υ₁
    places its hits in a uniformly random order (the trials are exchangeable) to find N.

    epsilon, delta: relative error and failure probability (0 < ε < 1, 0 < δ < 1). seed: of the
    numpy generator; the result is a function of the input and the seed. ``samples`` of the
    result is N; ``standard_error`` is V·sqrt(p(1 − p)/N) at the hit rate p = Υ₁/N.
    """
    if not (0.0 < epsilon < 1.0 and 0.0 < delta < 1.0):
        raise ValueError(f"need 0 < epsilon < 1 and 0 < delta < 1, got {epsilon}, {delta}")
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    volumes = box_volumes(lower, upper)
    order = np.argsort(-volumes, kind="stable")
    order = order[volumes[order] > 0]
    if len(order) == 0:
        return HypervolumeResult.estimate(0.0, epsilon, delta, 0.0, 0)
    boxes = _Boxes(lower[order], np.array(upper[order]), volumes[order])
    rng = np.random.default_rng(seed)
    hits_to_stop = stopping_rule_hits(epsilon, delta)
    target = math.ceil(hits_to_stop)
    max_batch = max(1024, BATCH_VALUES // boxes.dimensions) * boxes.count
    trials = hits = 0
    batch = min(max_batch, target)
    while True:
        counts = rng.multinomial(batch, boxes.probabilities)
        batch_hits = sum(
            boxes.first_box_hits(box, int(count), rng) for box, count in enumerate(counts) if count
        )
        if hits + batch_hits < target:
            trials, hits = trials + batch, hits + batch_hits
            rate = max(hits / trials, 1.0 / boxes.count)
            batch = int(min(max_batch, max(1024, 1.1 * (target - hits) / rate)))
            continue
        # the (target − hits)-th hit of the batch, its hits placed in a uniformly random order
        positions = np.sort(rng.choice(batch, size=batch_hits, replace=False))
        trials += int(positions[target - hits - 1]) + 1
        break
    hit_rate = hits_to_stop / trials
    value = boxes.total_volume * hit_rate
    standard_error = boxes.total_volume * math.sqrt(hit_rate * max(0.0, 1.0 - hit_rate) / trials)
    return HypervolumeResult.estimate(value, epsilon, delta, standard_error, trials)


class _Boxes:
    """Boxes sorted largest first, with what the trials need: sampling probabilities, and per
    pair (i, j) the coordinates on which box j might not contain a point of box i."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray, volumes: np.ndarray) -> None:
        self.lower, self.upper = lower, upper
        self.count, self.dimensions = lower.shape
        self.total_volume = float(volumes.sum())
        self.probabilities = volumes / self.total_volume
        self.widths = upper - lower
        self._columns: dict[tuple[int, int], tuple[np.ndarray, bool]] = {}

    def columns(self, box: int, earlier: int) -> tuple[np.ndarray, bool]:
        """Coordinates k where a point x of ``box`` can fall outside ``earlier`` (those with
        lower[earlier, k] > lower[box, k] or upper[earlier, k] < upper[box, k]), and whether
        the upper side needs checking (never for hypervolume boxes [p, r])."""
        key = (box, earlier)
        if key not in self._columns:
            above = self.lower[earlier] > self.lower[box]
            below = self.upper[earlier] < self.upper[box]
            self._columns[key] = (np.flatnonzero(above | below), bool(below.any()))
        return self._columns[key]

    def first_box_hits(self, box: int, count: int, rng: np.random.Generator) -> int:
        """Of ``count`` uniform points of ``box``, how many lie in no box of lower index."""
        chunk = max(1, BATCH_VALUES // self.dimensions)
        return sum(
            self._first_box_hits(box, min(chunk, count - start), rng)
            for start in range(0, count, chunk)
        )

    def _first_box_hits(self, box: int, count: int, rng: np.random.Generator) -> int:
        points = rng.random((count, self.dimensions))
        points *= self.widths[box]
        points += self.lower[box]
        for earlier in range(box):
            columns, check_upper = self.columns(box, earlier)
            if len(columns) == 0:  # box lies inside the earlier box: every point is covered
                return 0
            rows = points[:, columns] if 2 * len(columns) < self.dimensions else points
            bound = self.lower[earlier, columns] if rows is not points else self.lower[earlier]
            inside = (rows >= bound).all(axis=1)
            if check_upper:
                inside &= (points <= self.upper[earlier]).all(axis=1)
            if inside.any():
                points = points[~inside]
                if len(points) == 0:
                    return 0
        return len(points)
