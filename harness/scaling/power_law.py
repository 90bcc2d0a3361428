"""Power-law fits of a cost against an axis: y ≈ exp(intercept) · x^slope on log-log axes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PowerLawFit:
    """y ≈ exp(intercept) · x^slope, fitted by least squares on (log x, log y).

    slope: the exponent (dimensionless); intercept: log of the prefactor, in log units of y;
    points: how many (x, y) pairs the fit used.
    """

    slope: float
    intercept: float
    points: int


def fit_power_law(x: Any, y: Any) -> PowerLawFit:
    """Least-squares line through (log x, log y) (``numpy.polyfit``, degree 1).

    x, y: sequences of equal length N. Points with a non-finite or non-positive x or y are left
    out; fewer than two points left (or one distinct x) give NaN slope and intercept.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if keep.sum() < 2 or len(np.unique(x[keep])) < 2:
        return PowerLawFit(math.nan, math.nan, int(keep.sum()))
    slope, intercept = np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)
    return PowerLawFit(float(slope), float(intercept), int(keep.sum()))
