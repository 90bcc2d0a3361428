"""Front metrics: non-dominated filtering, hypervolume, Δm%.

All objectives are minimised: classification error (1 - accuracy) and regression MAE, one column
per task. Hypervolume comes from ``harness.hypervolume``: exact (moocore, a product, or
inclusion–exclusion) where that is cheap, else an estimate within a factor 1 ± ε of the true
value with probability ≥ 1 − δ (ε = δ = 0.01), for any number of objectives (CelebA has 40).

Reference point rule (fixed per dataset, so hypervolumes compare across methods and runs): each
task's ``TaskSpec.hv_reference`` — 1.0 for classification error (the worst possible error), a
dataset-declared value for regression MAE. Points that do not strictly dominate the reference
point contribute nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import moocore
import numpy as np
from mtlbench.harness.hypervolume import (
    DEFAULT_DELTA,
    DEFAULT_EPSILON,
    HypervolumeResult,
    compute_hypervolume,
)


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


def hypervolume(
    objectives: np.ndarray,
    reference: Sequence[float],
    epsilon: float = DEFAULT_EPSILON,
    delta: float = DEFAULT_DELTA,
) -> HypervolumeResult:
    """Hypervolume dominated by ``objectives`` (N, T) up to ``reference`` (T,), minimising.

    Exact when cheap, else the FPRAS's estimate with relative error ≤ epsilon with probability
    ≥ 1 − delta, seeded from the front (the same front gives the same value). See
    ``harness.hypervolume`` for which computation answers and ``HypervolumeResult`` for fields.
    """
    return compute_hypervolume(objectives, reference, epsilon=epsilon, delta=delta)


@dataclass(frozen=True)
class DeltaM:
    """value: Δm% (NaN when undefined); reason: why it is undefined, "" when it is defined."""

    value: float
    reason: str


def delta_m(
    metrics: Sequence[float],
    baseline: Sequence[float] | None,
    higher_is_better: Sequence[bool],
    names: Sequence[str] | None = None,
) -> DeltaM:
    """Δm% = (100 / T) Σ_t (-1)^{h_t} (M_t - B_t) / B_t  (Maninis et al. 2019).

    metrics, baseline: per-task metric values (accuracy, MAE, ...); higher_is_better: h_t;
    names: task names for the reason. Negative is better than the single-task baseline. NaN,
    with the reason, when there is no baseline, a value is not finite or a baseline is 0.
    """
    if baseline is None:
        return DeltaM(math.nan, "no single-task baseline recorded")
    metric = np.asarray(metrics, dtype=float)
    base = np.asarray(baseline, dtype=float)
    labels = list(names) if names is not None else [str(t) for t in range(len(metric))]
    for label, value, reference in zip(labels, metric, base, strict=True):
        if not math.isfinite(value):
            return DeltaM(math.nan, f"metric of task '{label}' is not finite")
        if not math.isfinite(reference):
            return DeltaM(math.nan, f"baseline metric of task '{label}' is not finite")
        if reference == 0:
            return DeltaM(math.nan, f"baseline metric of task '{label}' is 0")
    sign = np.where(np.asarray(higher_is_better), -1.0, 1.0)
    return DeltaM(float(100.0 * np.mean(sign * (metric - base) / base)), "")


def delta_m_percent(
    metrics: Sequence[float], baseline: Sequence[float], higher_is_better: Sequence[bool]
) -> float:
    """Δm% of :func:`delta_m` as a number: NaN where it is undefined (e.g. a baseline of 0)."""
    return delta_m(metrics, baseline, higher_is_better).value
