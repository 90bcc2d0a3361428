"""Statistics for the leaderboard: intervals over seeds and paired tests against a reference.

Every test of significance comes from ``scipy.stats``; this module only chooses the tests, aligns
the inputs and turns the results into verdicts a reader can cite. Ranks over datasets and over
budget fractions are in ``harness.ranks``.

- :func:`mean_ci`: a Student-t interval of a mean over seeds.
- :func:`paired_comparison`: one method against a reference (EW) on the same seeds: the mean
  paired difference with a t interval and a Wilcoxon signed-rank test giving "better" / "worse" /
  "tie".

Missing values are NaN throughout: they are left out and counted out (every result carries the
number of values it used), never imputed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

Verdict = Literal["better", "worse", "tie"]


@dataclass(frozen=True)
class MeanInterval:
    """A mean over seeds with its two-sided Student-t confidence interval.

    mean: the mean of the non-NaN values (NaN when there are none); low, high: the interval's
    bounds, in the values' units (NaN when n < 2; both equal ``mean`` when every value is the
    same); n: how many non-NaN values were used.
    """

    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class PairedComparison:
    """A method against a reference on the same seeds (see :func:`paired_comparison`).

    mean_difference: mean of ``method - reference`` over the pairs, in the metric's units (its
    sign is the raw one, not oriented by ``higher_is_better``); low, high: the Student-t interval
    of that mean at confidence ``1 - alpha`` (NaN when n < 2); p_value: two-sided Wilcoxon
    signed-rank p-value (NaN when no test was run); verdict: "better" / "worse" / "tie" for the
    method, oriented by ``higher_is_better``; test: the test that decided, or why none could;
    n: the number of pairs used (pairs with a NaN on either side are left out).
    """

    mean_difference: float
    low: float
    high: float
    p_value: float
    verdict: Verdict
    test: str
    n: int


def check_probability(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> MeanInterval:
    """Mean of ``values`` (S,), one per seed, with a two-sided Student-t interval.

    The interval is ``mean ± t_{(1+confidence)/2, n-1} · s / √n`` (``s`` the sample standard
    deviation), i.e. it assumes the seeds' values are independent draws from a roughly normal
    distribution; with few seeds it is wide, as it should be. NaN values (failed or diverged
    runs) are ignored and not counted in ``n``. With n < 2 the bounds are NaN (a single seed says
    nothing about spread); with zero spread the interval is the point ``[mean, mean]``.
    """
    check_probability("confidence", confidence)
    finite = np.asarray(values, dtype=float).ravel()
    finite = finite[~np.isnan(finite)]
    n = int(finite.size)
    if n == 0:
        return MeanInterval(math.nan, math.nan, math.nan, 0)
    centre = float(finite.mean())
    if n < 2:
        return MeanInterval(centre, math.nan, math.nan, n)
    standard_error = float(stats.sem(finite))
    if standard_error == 0.0:
        return MeanInterval(centre, centre, centre, n)
    half_width = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * standard_error
    return MeanInterval(centre, centre - half_width, centre + half_width, n)


def paired_comparison(
    values: Sequence[float] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
    higher_is_better: bool,
    alpha: float = 0.05,
) -> PairedComparison:
    """Compare a method's ``values`` (S,) with the ``reference``'s (S,) on the same seeds.

    The caller aligns the pairs: ``values[i]`` and ``reference[i]`` come from the same seed (same
    data order and initialisation), so seed-to-seed variation cancels in the difference
    ``d_i = values[i] - reference[i]``. Pairs with a NaN on either side are dropped.

    Test: the two-sided Wilcoxon signed-rank test on ``d`` (``scipy.stats.wilcoxon``, zero
    differences discarded as in Wilcoxon's original rule; its null distribution is exact for up
    to 50 pairs, by exhaustive permutation when ties occur). It is chosen over the paired t-test
    because it assumes no normality and one diverged seed cannot dominate it (Demšar 2006,
    section 3.1.3). Its smallest possible two-sided p-value with m non-zero differences is
    ``2 / 2**m`` (every difference of the same sign), so at ``alpha = 0.05`` it cannot reject
    with fewer than 6 pairs: 5 seeds give at best p = 0.0625. The verdict is then "tie", stated
    in ``test``, because the seeds cannot resolve the difference; a test that cannot reject is not
    run at all. "better" / "worse" need ``p < alpha``, the direction being that of the signed
    ranks (the sign of ``R+ - R-``), oriented by ``higher_is_better``.

    Size: the mean paired difference with a Student-t interval at confidence ``1 - alpha``
    (:func:`mean_ci` on ``d``). A t interval rather than a bootstrap percentile interval because
    with 3–10 seeds the bootstrap distribution of a mean has only a handful of distinct values
    and its percentile interval is too narrow, while the t interval is exact for normal
    differences and matches :func:`mean_ci`. The interval describes the size; the verdict comes
    from the test, so in rare cases the two can disagree near the threshold.

    Edge cases: n < 2 pairs → "tie", NaN p-value and bounds; all differences zero → "tie",
    p-value 1, interval ``[0, 0]``.
    """
    check_probability("alpha", alpha)
    differences = _paired_differences(values, reference)
    interval = mean_ci(differences, confidence=1 - alpha)
    p_value, verdict, test = _signed_rank_verdict(differences, higher_is_better, alpha)
    return PairedComparison(
        interval.mean, interval.low, interval.high, p_value, verdict, test, int(differences.size)
    )


def _paired_differences(
    values: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray
) -> np.ndarray:
    """``values - reference`` (n,) over the pairs with a value on both sides (NaN pairs out)."""
    method_values = np.asarray(values, dtype=float).ravel()
    reference_values = np.asarray(reference, dtype=float).ravel()
    if method_values.shape != reference_values.shape:
        raise ValueError(
            f"values and reference must pair up seed by seed, got {method_values.size} and "
            f"{reference_values.size} values"
        )
    paired = ~(np.isnan(method_values) | np.isnan(reference_values))
    return method_values[paired] - reference_values[paired]


def _signed_rank_verdict(
    differences: np.ndarray, higher_is_better: bool, alpha: float
) -> tuple[float, Verdict, str]:
    """(p-value, verdict, test) of the Wilcoxon signed-rank test on the paired ``differences``
    (n,), or of no test when it cannot reject (see :func:`paired_comparison`)."""
    n = int(differences.size)
    if n < 2:
        return math.nan, "tie", f"none: {n} complete pair(s), a test needs at least 2"
    nonzero = differences[differences != 0.0]
    m = int(nonzero.size)
    if m == 0:
        return 1.0, "tie", "none: every paired difference is zero"
    smallest_p = 2.0 / 2.0**m
    if smallest_p >= alpha:
        return (
            math.nan,
            "tie",
            f"none: Wilcoxon signed-rank cannot reject at alpha={alpha:g} with {m} non-zero "
            f"pair(s) (smallest possible p = {smallest_p:.4g})",
        )
    outcome = stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided")
    p_value = float(outcome.pvalue)
    test = _signed_rank_description(nonzero, discarded=n - m)
    if not p_value < alpha:
        return p_value, "tie", test
    signed_ranks = np.sign(nonzero) * stats.rankdata(np.abs(nonzero))
    larger = float(signed_ranks.sum()) > 0  # R+ > R-: the method's values tend to be larger
    return p_value, "better" if larger == higher_is_better else "worse", test


def _signed_rank_description(nonzero: np.ndarray, discarded: int) -> str:
    """How the signed-rank test on the ``nonzero`` differences (m,) was computed: scipy's null
    distribution for m pairs (exact, by permutation with ties, or normal), and the number of
    ``discarded`` zero differences."""
    m = int(nonzero.size)
    ties = np.unique(np.abs(nonzero)).size < m
    if m <= 50 and not ties:
        null = "exact"
    elif m <= 13:
        null = "exhaustive permutation (tied differences)"
    else:
        null = "normal approximation"
    test = f"Wilcoxon signed-rank, two-sided, {null}, {m} non-zero pair(s)"
    if discarded:
        test += f" ({discarded} zero difference(s) discarded)"
    return test
