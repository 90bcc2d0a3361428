"""Statistics for the leaderboard: intervals over seeds, paired tests, ranks over datasets.

Every test of significance comes from ``scipy.stats``; this module only chooses the tests, aligns
the inputs and turns the results into verdicts a reader can cite.

- :func:`mean_ci`: a Student-t interval of a mean over seeds.
- :func:`paired_comparison`: one method against a reference (EW) on the same seeds: the mean
  paired difference with a t interval and a Wilcoxon signed-rank test giving "better" / "worse" /
  "tie".
- :func:`average_ranks`: ranks per dataset (row), average rank per method, the Friedman test and
  the Nemenyi critical difference (Demšar, "Statistical Comparisons of Classifiers over Multiple
  Data Sets", JMLR 7, 2006, sections 3.2.2 and 3.2.3).
- :func:`rank_at_fractions`: means and ranks at fractions of the budget from anytime curves.

Missing values are NaN throughout: they are left out and counted out (every result carries the
number of values it used), never imputed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from scipy import stats

Verdict = Literal["better", "worse", "tie"]

# the anytime rule compares budget fractions with this slack, so an evaluation logged at
# 0.25000000001 of the budget (float accumulation of step costs) counts as "at 25%"
FRACTION_TOLERANCE = 1e-9


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


@dataclass(frozen=True)
class RankTable:
    """Ranks of methods (columns) over datasets or dataset×budget groups (rows).

    rows, methods: the names, in the order first seen in the input; ranks: row → method → rank
    (1 = best, ties averaged) over the methods with a value in that row; average_rank: method →
    mean of its ranks over the rows where it has a value (NaN if none); rows_ranked: method →
    that number of rows.

    The tests use only the rows where every method has a value (``test_rows``; all rows when the
    table is complete): friedman_statistic, friedman_p_value: Friedman's chi-square and its
    p-value; critical_difference: the Nemenyi critical difference at ``alpha`` (in rank units);
    test_average_rank: the average ranks over ``test_rows`` (equal to ``average_rank`` for a
    complete table); best_method: the method with the lowest ``test_average_rank``;
    tied_with_best: method → whether its average rank is within the critical difference of the
    best one (True for every method when Friedman does not reject; None when no test could be
    run). All test fields are NaN / None / empty when the test could not run; ``note`` says why.
    """

    rows: tuple[str, ...]
    methods: tuple[str, ...]
    ranks: dict[str, dict[str, float]]
    average_rank: dict[str, float]
    rows_ranked: dict[str, int]
    test_rows: tuple[str, ...]
    test_average_rank: dict[str, float]
    friedman_statistic: float
    friedman_p_value: float
    critical_difference: float
    best_method: str | None
    tied_with_best: dict[str, bool | None]
    alpha: float
    note: str


@dataclass(frozen=True)
class FractionRanking:
    """Methods compared at one fraction of the budget (see :func:`rank_at_fractions`).

    fraction: the budget fraction in (0, 1]; mean: method → mean over seeds of its anytime value
    at that fraction (NaN when no seed had evaluated yet); rank: method → rank of that mean among
    the methods with one (1 = best, ties averaged; NaN without a mean); seeds: method → how many
    seeds had a value at that fraction.
    """

    fraction: float
    mean: dict[str, float]
    rank: dict[str, float]
    seeds: dict[str, int]


def _check_probability(name: str, value: float) -> None:
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
    _check_probability("confidence", confidence)
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
    _check_probability("alpha", alpha)
    method_values = np.asarray(values, dtype=float).ravel()
    reference_values = np.asarray(reference, dtype=float).ravel()
    if method_values.shape != reference_values.shape:
        raise ValueError(
            f"values and reference must pair up seed by seed, got {method_values.size} and "
            f"{reference_values.size} values"
        )
    paired = ~(np.isnan(method_values) | np.isnan(reference_values))
    differences = method_values[paired] - reference_values[paired]
    n = int(differences.size)
    interval = mean_ci(differences, confidence=1 - alpha)

    def result(p_value: float, verdict: Verdict, test: str) -> PairedComparison:
        return PairedComparison(
            interval.mean, interval.low, interval.high, p_value, verdict, test, n
        )

    if n < 2:
        return result(math.nan, "tie", f"none: {n} complete pair(s), a test needs at least 2")
    nonzero = differences[differences != 0.0]
    m = int(nonzero.size)
    if m == 0:
        return result(1.0, "tie", "none: every paired difference is zero")
    smallest_p = 2.0 / 2.0**m
    if smallest_p >= alpha:
        return result(
            math.nan,
            "tie",
            f"none: Wilcoxon signed-rank cannot reject at alpha={alpha:g} with {m} non-zero "
            f"pair(s) (smallest possible p = {smallest_p:.4g})",
        )
    outcome = stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided")
    p_value = float(outcome.pvalue)
    ties = np.unique(np.abs(nonzero)).size < m
    if m <= 50 and not ties:
        null = "exact"
    elif m <= 13:
        null = "exhaustive permutation (tied differences)"
    else:
        null = "normal approximation"
    test = f"Wilcoxon signed-rank, two-sided, {null}, {m} non-zero pair(s)"
    if n > m:
        test += f" ({n - m} zero difference(s) discarded)"
    if not p_value < alpha:
        return result(p_value, "tie", test)
    signed_ranks = np.sign(nonzero) * stats.rankdata(np.abs(nonzero))
    larger = float(signed_ranks.sum()) > 0  # R+ > R-: the method's values tend to be larger
    return result(p_value, "better" if larger == higher_is_better else "worse", test)


def _present(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _rank(scores: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Ranks (1 = best) of ``scores`` (k,), ties sharing the average of their ranks."""
    return stats.rankdata(-scores if higher_is_better else scores, method="average")


def average_ranks(
    table: Mapping[str, Mapping[str, float]], higher_is_better: bool, alpha: float = 0.05
) -> RankTable:
    """Rank methods in each row of ``table`` and compare their average ranks (Demšar 2006).

    ``table``: row (a dataset, or a dataset×budget group) → method → score (e.g. mean test
    hypervolume over seeds); a method missing from a row, or NaN there, has no value in it.
    ``higher_is_better``: whether a larger score ranks first.

    Ranks: in each row the methods with a value get ranks 1..k_row (``scipy.stats.rankdata``,
    ties averaged: two methods sharing the best score both get 1.5). A method's average rank is
    over the rows where it has a value.

    Tests (over the ``N`` rows where all ``k`` methods have a value):

    - Friedman (``scipy.stats.friedmanchisquare``): null hypothesis that all methods are
      equivalent, i.e. their average ranks are equal. It needs k ≥ 3 methods (with two, use
      :func:`paired_comparison`) and N ≥ 2 rows; otherwise no test is run and ``note`` says why.
      When every method ties in every row the statistic is 0/0: reported as p = 1, all tied.
    - Nemenyi critical difference ``CD = q_alpha / √2 · √(k(k+1) / (6N))``, with ``q_alpha``
      the ``1 - alpha`` quantile of the studentized range for k groups and infinite degrees of
      freedom (``scipy.stats.studentized_range``; ``q_0.05 / √2`` = 2.343 for k = 3, 2.569 for
      k = 4 as in Demšar's table 5). Two methods whose average ranks differ by at least CD are
      significantly different. As Demšar prescribes, the post-hoc comparison is made only when
      Friedman rejects at ``alpha``: otherwise every method is reported tied with the best.

    A method is ``tied_with_best`` when its average rank over the test rows is less than CD
    above the best (lowest) average rank. CD is reported whenever it is defined (k ≥ 2, N ≥ 1)
    so that a page can draw it.
    """
    _check_probability("alpha", alpha)
    rows = tuple(table)
    methods: list[str] = []
    for row in rows:
        methods += [m for m in table[row] if m not in methods]
    ranks: dict[str, dict[str, float]] = {}
    for row in rows:
        present = [m for m in methods if m in table[row] and _present(table[row][m])]
        scores = np.array([table[row][m] for m in present], dtype=float)
        ranks[row] = dict(zip(present, map(float, _rank(scores, higher_is_better))))
    average_rank, rows_ranked = {}, {}
    for method in methods:
        method_ranks = [ranks[row][method] for row in rows if method in ranks[row]]
        rows_ranked[method] = len(method_ranks)
        average_rank[method] = float(np.mean(method_ranks)) if method_ranks else math.nan

    k = len(methods)
    test_rows = tuple(row for row in rows if len(ranks[row]) == k)
    n_rows = len(test_rows)
    test_average_rank = {
        m: float(np.mean([ranks[row][m] for row in test_rows])) if n_rows else math.nan
        for m in methods
    }
    critical_difference = math.nan
    if k >= 2 and n_rows >= 1:
        q_alpha = float(stats.studentized_range.ppf(1 - alpha, k, np.inf))
        critical_difference = q_alpha / math.sqrt(2) * math.sqrt(k * (k + 1) / (6 * n_rows))
    left_out = len(rows) - n_rows
    incomplete = f" ({left_out} incomplete row(s) left out)" if left_out else ""

    untested = RankTable(
        rows=rows,
        methods=tuple(methods),
        ranks=ranks,
        average_rank=average_rank,
        rows_ranked=rows_ranked,
        test_rows=test_rows,
        test_average_rank=test_average_rank,
        friedman_statistic=math.nan,
        friedman_p_value=math.nan,
        critical_difference=critical_difference,
        best_method=None,
        tied_with_best=dict.fromkeys(methods),
        alpha=alpha,
        note="",
    )
    if k < 3:
        return replace(
            untested,
            note=f"no Friedman test: it needs at least 3 methods, got {k} "
            "(compare two methods with a paired test)",
        )
    if n_rows < 2:
        return replace(
            untested,
            note="no Friedman test: it needs at least 2 rows where every method has a value, "
            f"got {n_rows}{incomplete}",
        )
    if all(len(set(ranks[row].values())) == 1 for row in test_rows):
        return replace(
            untested,
            friedman_statistic=0.0,
            friedman_p_value=1.0,
            best_method=methods[0],
            tied_with_best=dict.fromkeys(methods, True),
            note="no Friedman test: every method ties with every other in every row (all tied)",
        )
    columns = [np.array([table[row][m] for row in test_rows], dtype=float) for m in methods]
    friedman = stats.friedmanchisquare(*columns)
    statistic, p_value = float(friedman.statistic), float(friedman.pvalue)
    best_method = min(methods, key=lambda m: test_average_rank[m])
    best_rank = test_average_rank[best_method]
    tied: dict[str, bool | None]
    if p_value < alpha:
        tied = {m: test_average_rank[m] - best_rank < critical_difference for m in methods}
        verdict = f"Friedman rejects equal ranks (p = {p_value:.3g} < {alpha:g})"
    else:
        tied = dict.fromkeys(methods, True)
        verdict = f"Friedman does not reject equal ranks (p = {p_value:.3g}): all tied"
    note = (
        f"{verdict}; Nemenyi CD = {critical_difference:.3g} for k = {k} methods, "
        f"N = {n_rows} rows, alpha = {alpha:g}; tests over the rows where every method has a "
        f"value{incomplete}"
    )
    return replace(
        untested,
        friedman_statistic=statistic,
        friedman_p_value=p_value,
        best_method=best_method,
        tied_with_best=tied,
        note=note,
    )


def anytime_value(curve: Sequence[tuple[float, float]], fraction: float) -> float:
    """The value of ``curve`` at budget ``fraction``: its last evaluation at or before it.

    ``curve``: (budget_fraction, value) points of one run, in any order. The "anytime" rule: a
    run stopped at ``fraction`` of its budget would report the most recent evaluation it had
    made, so the value at f is that of the evaluation with the largest budget fraction ≤ f
    (up to :data:`FRACTION_TOLERANCE`). NaN when the run had not evaluated yet.
    """
    eligible = [(f, v) for f, v in curve if f <= fraction + FRACTION_TOLERANCE]
    return float(max(eligible, key=lambda point: point[0])[1]) if eligible else math.nan


def rank_at_fractions(
    curves: Mapping[str, Sequence[Sequence[tuple[float, float]]]],
    higher_is_better: bool,
    fractions: Sequence[float] = (0.25, 0.5, 1.0),
) -> list[FractionRanking]:
    """Mean and rank of each method at fractions of the budget, from anytime curves.

    ``curves``: method → one curve per seed, each a list of (budget_fraction, value) evaluation
    points (e.g. validation hypervolume against the fraction of the budget spent). At each
    fraction f, each seed's value is :func:`anytime_value` (the last evaluation at or before f),
    the method's value is the mean over the seeds that had one (NaN seeds counted out), and the
    methods with a mean are ranked (1 = best, ties averaged). Returns one :class:`FractionRanking`
    per fraction, in the order given.
    """
    rankings = []
    for fraction in fractions:
        means, seeds = {}, {}
        for method, seed_curves in curves.items():
            seed_values = [anytime_value(curve, fraction) for curve in seed_curves]
            summary = mean_ci(seed_values)
            means[method], seeds[method] = summary.mean, summary.n
        ranked = [m for m in curves if _present(means[m])]
        ranks = _rank(np.array([means[m] for m in ranked]), higher_is_better)
        rank = dict.fromkeys(curves, math.nan) | dict(zip(ranked, map(float, ranks)))
        rankings.append(FractionRanking(float(fraction), means, rank, seeds))
    return rankings
