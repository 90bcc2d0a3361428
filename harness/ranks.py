"""Ranks of methods for the leaderboard: over datasets (with Friedman's test and Nemenyi's
critical difference) and over fractions of the budget (from anytime curves).

- :func:`average_ranks`: ranks per dataset (row), average rank per method, the Friedman test and
  the Nemenyi critical difference (Demšar, "Statistical Comparisons of Classifiers over Multiple
  Data Sets", JMLR 7, 2006, sections 3.2.2 and 3.2.3).
- :func:`rank_at_fractions`: means and ranks at fractions of the budget from anytime curves
  (:func:`anytime_value`: a run's value at a fraction).

The tests come from ``scipy.stats``. Missing values are NaN throughout: they are left out and
counted out (every result carries the number of values it used), never imputed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from mtlbench.harness.statistics import check_probability, mean_ci
from scipy import stats

# the anytime rule compares budget fractions with this slack, so an evaluation logged at
# 0.25000000001 of the budget (float accumulation of step costs) counts as "at 25%"
FRACTION_TOLERANCE = 1e-9


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
    check_probability("alpha", alpha)
    rows, methods, ranks = _rank_rows(table, higher_is_better)
    k = len(methods)
    test_rows = tuple(row for row in rows if len(ranks[row]) == k)
    untested = RankTable(
        rows=rows,
        methods=methods,
        ranks=ranks,
        average_rank=_mean_ranks(ranks, rows, methods),
        rows_ranked={m: sum(m in ranks[row] for row in rows) for m in methods},
        test_rows=test_rows,
        test_average_rank=_mean_ranks(ranks, test_rows, methods),
        friedman_statistic=math.nan,
        friedman_p_value=math.nan,
        critical_difference=_nemenyi_critical_difference(k, len(test_rows), alpha),
        best_method=None,
        tied_with_best=dict.fromkeys(methods),
        alpha=alpha,
        note="",
    )
    return _friedman_nemenyi(untested, table)


def _rank_rows(
    table: Mapping[str, Mapping[str, float]], higher_is_better: bool
) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, dict[str, float]]]:
    """(rows, methods in the order first seen, row → method → rank among the row's methods
    with a value)."""
    rows = tuple(table)
    methods: list[str] = []
    for row in rows:
        methods += [m for m in table[row] if m not in methods]
    ranks: dict[str, dict[str, float]] = {}
    for row in rows:
        present = [m for m in methods if m in table[row] and _present(table[row][m])]
        scores = np.array([table[row][m] for m in present], dtype=float)
        ranks[row] = dict(zip(present, map(float, _rank(scores, higher_is_better)), strict=True))
    return rows, tuple(methods), ranks


def _mean_ranks(
    ranks: Mapping[str, Mapping[str, float]], rows: Sequence[str], methods: Sequence[str]
) -> dict[str, float]:
    """method → mean of its ranks over those of ``rows`` where it has one (NaN if none)."""
    means = {}
    for method in methods:
        method_ranks = [ranks[row][method] for row in rows if method in ranks[row]]
        means[method] = float(np.mean(method_ranks)) if method_ranks else math.nan
    return means


def _nemenyi_critical_difference(k: int, n_rows: int, alpha: float) -> float:
    """Nemenyi's CD (rank units) for ``k`` methods over ``n_rows`` rows; NaN unless k ≥ 2, N ≥ 1."""
    if k < 2 or n_rows < 1:
        return math.nan
    q_alpha = float(stats.studentized_range.ppf(1 - alpha, k, np.inf))
    return q_alpha / math.sqrt(2) * math.sqrt(k * (k + 1) / (6 * n_rows))


def _friedman_nemenyi(untested: RankTable, table: Mapping[str, Mapping[str, float]]) -> RankTable:
    """``untested`` with the Friedman test over its ``test_rows`` of ``table`` and, when it
    rejects, the Nemenyi comparison with the best method (see :func:`average_ranks`)."""
    methods, test_rows, alpha = untested.methods, untested.test_rows, untested.alpha
    k, n_rows = len(methods), len(test_rows)
    left_out = len(untested.rows) - n_rows
    incomplete = f" ({left_out} incomplete row(s) left out)" if left_out else ""
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
    if all(len(set(untested.ranks[row].values())) == 1 for row in test_rows):
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
    average = untested.test_average_rank
    best_method = min(methods, key=lambda m: average[m])
    critical_difference = untested.critical_difference
    tied: dict[str, bool | None]
    if p_value < alpha:
        tied = {m: average[m] - average[best_method] < critical_difference for m in methods}
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
        rank = dict.fromkeys(curves, math.nan) | dict(zip(ranked, map(float, ranks), strict=True))
        rankings.append(FractionRanking(float(fraction), means, rank, seeds))
    return rankings
