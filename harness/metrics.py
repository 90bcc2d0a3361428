"""Front metrics: non-dominated filtering, hypervolume, Δm%.

All objectives are minimised: classification error (1 - accuracy) and regression MAE, one column
per task. Hypervolume comes from moocore (exact algorithms for any dimension; an approximation
for large fronts in many dimensions, with a stated standard error).

Reference point rule (fixed per dataset, so hypervolumes compare across methods and runs): each
task's ``TaskSpec.hv_reference`` — 1.0 for classification error (the worst possible error), a
dataset-declared value for regression MAE. Points that do not strictly dominate the reference
point contribute nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import moocore
import numpy as np

# Exact hypervolume is used when the front is small enough for it to be cheap; beyond, the
# Monte-Carlo estimator of Deng & Zhang (2019) with a standard error from repeated draws.
EXACT_MAX_POINTS_HIGH_DIM = 24
EXACT_MAX_DIMENSIONS_ANY_SIZE = 6
APPROX_SAMPLES = 100_000
APPROX_REPEATS = 8


@dataclass(frozen=True)
class HypervolumeResult:
    """value: the hypervolume; method: ``exact`` or ``approx-mc``; standard_error: 0 when exact."""

    value: float
    method: str
    standard_error: float


def pareto_mask(objectives: np.ndarray) -> np.ndarray:
    """Boolean mask (N,) of the non-dominated rows of ``objectives`` (N, T), minimising."""
    objectives = np.asarray(objectives, dtype=float)
    if len(objectives) == 0:
        return np.zeros(0, dtype=bool)
    finite = np.isfinite(objectives).all(axis=1)
    mask = np.zeros(len(objectives), dtype=bool)
    if finite.any():
        mask[finite] = moocore.is_nondominated(objectives[finite], keep_weakly=True)
    return mask


def hypervolume(objectives: np.ndarray, reference: Sequence[float]) -> HypervolumeResult:
    """Hypervolume dominated by ``objectives`` (N, T) up to ``reference`` (T,), minimising."""
    objectives = np.asarray(objectives, dtype=float).reshape(-1, len(reference))
    reference_point = np.asarray(reference, dtype=float)
    inside = np.isfinite(objectives).all(axis=1) & (objectives < reference_point).all(axis=1)
    points = objectives[inside]
    if len(points) == 0:
        return HypervolumeResult(0.0, "exact", 0.0)
    points = points[moocore.is_nondominated(points)]
    dimensions = points.shape[1]
    if dimensions <= EXACT_MAX_DIMENSIONS_ANY_SIZE or len(points) <= EXACT_MAX_POINTS_HIGH_DIM:
        return HypervolumeResult(
            float(moocore.hypervolume(points, ref=reference_point)), "exact", 0.0
        )
    estimates = [
        moocore.hv_approx(
            points, ref=reference_point, nsamples=APPROX_SAMPLES, seed=seed, method="DZ2019-MC"
        )
        for seed in range(APPROX_REPEATS)
    ]
    standard_error = float(np.std(estimates, ddof=1) / np.sqrt(APPROX_REPEATS))
    return HypervolumeResult(float(np.mean(estimates)), "approx-mc", standard_error)


def delta_m_percent(
    metrics: Sequence[float], baseline: Sequence[float], higher_is_better: Sequence[bool]
) -> float:
    """Δm% = (100 / T) Σ_t (-1)^{h_t} (M_t - B_t) / B_t  (Maninis et al. 2019).

    metrics, baseline: per-task metric values (accuracy, MAE, ...); higher_is_better: h_t.
    Negative is better than the single-task baseline.
    """
    metric = np.asarray(metrics, dtype=float)
    base = np.asarray(baseline, dtype=float)
    sign = np.where(np.asarray(higher_is_better), -1.0, 1.0)
    return float(100.0 * np.mean(sign * (metric - base) / base))
