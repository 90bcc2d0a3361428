"""harness/statistics.py and harness/ranks.py against independent oracles: scipy's own
functions called directly, hand-computed ranks and Friedman statistics, and Demšar's (2006)
table of critical values."""

import math

import numpy as np
import pytest
from mtlbench.harness.ranks import anytime_value, average_ranks, rank_at_fractions
from mtlbench.harness.statistics import mean_ci, paired_comparison
from scipy import stats

# --- mean_ci -------------------------------------------------------------------------------


def test_mean_ci_by_hand() -> None:
    # [1, 2, 3]: mean 2, s = 1, t_{0.975, 2} = 4.3027 (any t table), half-width 4.3027 / √3
    interval = mean_ci([1.0, 2.0, 3.0])
    assert interval.n == 3 and interval.mean == pytest.approx(2.0)
    assert interval.low == pytest.approx(2 - 4.302653 / math.sqrt(3), rel=1e-6)
    assert interval.high == pytest.approx(2 + 4.302653 / math.sqrt(3), rel=1e-6)


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_mean_ci_matches_one_sample_t_test(confidence: float) -> None:
    values = np.array([0.61, 0.58, 0.66, 0.63, 0.59])
    expected = stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
    interval = mean_ci(values, confidence)
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high))
    assert interval.mean == pytest.approx(values.mean()) and interval.n == 5


def test_mean_ci_ignores_and_counts_out_nans() -> None:
    assert mean_ci([1.0, math.nan, 2.0, 3.0]) == mean_ci([1.0, 2.0, 3.0])
    single = mean_ci([math.nan, 0.4])
    assert single.n == 1 and single.mean == 0.4
    assert math.isnan(single.low) and math.isnan(single.high)
    empty = mean_ci([math.nan])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_mean_ci_constant_values_is_a_point() -> None:
    interval = mean_ci([0.5, 0.5, 0.5])
    assert (interval.mean, interval.low, interval.high, interval.n) == (0.5, 0.5, 0.5, 3)


# --- paired_comparison --------------------------------------------------------------------

REFERENCE = np.array([0.50, 0.55, 0.48, 0.52, 0.60, 0.47, 0.53, 0.51])
GAINS = np.array([0.010, 0.030, 0.020, 0.015, 0.025, 0.012, 0.018, 0.022])


def test_clear_improvement_on_eight_seeds_is_better() -> None:
    method = REFERENCE + GAINS
    result = paired_comparison(method, REFERENCE, higher_is_better=True)
    assert result.verdict == "better" and result.n == 8
    # all 8 differences positive: exact two-sided p = 2 / 2**8
    assert result.p_value == pytest.approx(2 / 2**8)
    assert result.p_value == pytest.approx(stats.wilcoxon(method, REFERENCE).pvalue)
    assert "exact" in result.test
    expected = stats.ttest_rel(method, REFERENCE).confidence_interval(0.95)
    assert result.mean_difference == pytest.approx(GAINS.mean())
    assert (result.low, result.high) == pytest.approx((expected.low, expected.high))
    # the same numbers when lower is better: the method is worse
    assert paired_comparison(method, REFERENCE, higher_is_better=False).verdict == "worse"
    assert paired_comparison(REFERENCE - GAINS, REFERENCE, True).verdict == "worse"


def test_noisy_three_seeds_is_a_tie() -> None:
    result = paired_comparison([0.62, 0.50, 0.58], [0.55, 0.57, 0.52], higher_is_better=True)
    assert result.verdict == "tie" and result.n == 3
    assert math.isnan(result.p_value) and "cannot reject" in result.test
    assert result.low < 0 < result.high


def test_five_pairs_cannot_reject_but_six_can() -> None:
    # scipy agrees that five same-sign pairs give p = 0.0625 > 0.05: the verdict must be a tie
    five_method, five_reference = REFERENCE[:5] + GAINS[:5], REFERENCE[:5]
    assert stats.wilcoxon(five_method, five_reference).pvalue == pytest.approx(0.0625)
    assert paired_comparison(five_method, five_reference, True).verdict == "tie"
    six = paired_comparison(REFERENCE[:6] + GAINS[:6], REFERENCE[:6], True)
    assert six.verdict == "better" and six.p_value == pytest.approx(2 / 2**6)


def test_mixed_signs_with_enough_seeds_is_a_tie_with_scipys_p_value() -> None:
    differences = np.array([0.02, -0.015, 0.01, -0.03, 0.005, 0.025, -0.01, 0.012])
    result = paired_comparison(REFERENCE + differences, REFERENCE, True)
    assert result.verdict == "tie" and result.p_value >= 0.05
    assert result.p_value == pytest.approx(stats.wilcoxon(differences).pvalue)


def test_nan_pairs_are_dropped_and_zero_differences_discarded() -> None:
    method = np.append(REFERENCE + GAINS, [math.nan, 0.7])
    reference = np.append(REFERENCE, [0.5, math.nan])
    result = paired_comparison(method, reference, True)
    assert result.n == 8 and result.verdict == "better"
    zeros = paired_comparison(
        np.append(REFERENCE[:6] + GAINS[:6], 0.4), np.append(REFERENCE[:6], 0.4), True
    )
    expected = stats.wilcoxon(GAINS[:6], zero_method="wilcox").pvalue
    assert zeros.n == 7 and zeros.p_value == pytest.approx(expected)
    assert "1 zero difference" in zeros.test


def test_degenerate_inputs_are_ties() -> None:
    same = paired_comparison(REFERENCE, REFERENCE, True)
    assert same.verdict == "tie" and same.p_value == 1.0
    assert (same.mean_difference, same.low, same.high) == (0.0, 0.0, 0.0)
    one = paired_comparison([0.9, math.nan], [0.1, 0.2], True)
    assert one.verdict == "tie" and one.n == 1 and math.isnan(one.p_value)
    assert math.isnan(one.low) and one.mean_difference == pytest.approx(0.8)
    with pytest.raises(ValueError, match="pair up"):
        paired_comparison([1.0, 2.0], [1.0], True)


# --- average_ranks ------------------------------------------------------------------------


def test_ranks_by_hand_with_ties_and_direction() -> None:
    table = {
        "d1": {"a": 0.9, "b": 0.8, "c": 0.7},
        "d2": {"a": 0.6, "b": 0.6, "c": 0.9},  # a and b share ranks 2 and 3: 2.5 each
        "d3": {"a": 0.5, "b": 0.4},  # c missing: ranked among a, b only
    }
    ranked = average_ranks(table, higher_is_better=True)
    assert ranked.rows == ("d1", "d2", "d3") and ranked.methods == ("a", "b", "c")
    assert ranked.ranks == {
        "d1": {"a": 1.0, "b": 2.0, "c": 3.0},
        "d2": {"a": 2.5, "b": 2.5, "c": 1.0},
        "d3": {"a": 1.0, "b": 2.0},
    }
    assert ranked.average_rank == pytest.approx({"a": 4.5 / 3, "b": 6.5 / 3, "c": 2.0})
    assert ranked.rows_ranked == {"a": 3, "b": 3, "c": 2}
    assert ranked.test_rows == ("d1", "d2")
    assert ranked.test_average_rank == pytest.approx({"a": 1.75, "b": 2.25, "c": 2.0})
    lower = average_ranks(table, higher_is_better=False)
    assert lower.ranks["d1"] == {"a": 3.0, "b": 2.0, "c": 1.0}
    assert lower.ranks["d2"] == {"a": 1.5, "b": 1.5, "c": 3.0}


def test_friedman_and_nemenyi_by_hand() -> None:
    # A constructed table in the style of Demšar (2006): k = 3 methods on N = 4 datasets, A
    # always first, B second, C third. By hand: average ranks 1, 2, 3;
    # χ²_F = 12N / (k(k+1)) · (Σ R_j² − k(k+1)²/4) = 4 · (14 − 12) = 8, and with k − 1 = 2
    # degrees of freedom p = exp(−8/2) = e⁻⁴ ≈ 0.0183 (< 0.05: reject).
    # CD = q_0.05/√2 · √(k(k+1)/(6N)) = 2.343 · √(12/24) ≈ 1.657 (Demšar's table 5: 2.343).
    table = {
        "mnist": {"A": 0.91, "B": 0.88, "C": 0.80},
        "cifar": {"A": 0.71, "B": 0.70, "C": 0.69},
        "celeba": {"A": 0.60, "B": 0.52, "C": 0.51},
        "nyu": {"A": 0.33, "B": 0.31, "C": 0.22},
    }
    ranked = average_ranks(table, higher_is_better=True)
    assert ranked.average_rank == {"A": 1.0, "B": 2.0, "C": 3.0}
    assert ranked.friedman_statistic == pytest.approx(8.0)
    assert ranked.friedman_p_value == pytest.approx(math.exp(-4.0))
    assert ranked.critical_difference == pytest.approx(2.343 * math.sqrt(0.5), rel=1e-3)
    assert ranked.best_method == "A"
    # B is 1 rank behind A (< CD): tied; C is 2 behind (≥ CD): significantly worse
    assert ranked.tied_with_best == {"A": True, "B": True, "C": False}
    assert "rejects" in ranked.note


def test_friedman_statistic_by_hand_on_mixed_ranks() -> None:
    # k = 4, N = 5, no ties; rank sums by column: w 1+2+1+1+2 = 7, x 2+1+3+2+1 = 9,
    # y 3+4+2+4+3 = 16, z 4+3+4+3+4 = 18 → average ranks 1.4, 1.8, 3.2, 3.6;
    # χ²_F = 12·5/(4·5) · (1.4² + 1.8² + 3.2² + 3.6² − 4·25/4) = 3 · (28.4 − 25) = 10.2
    ranks_by_row = [(1, 2, 3, 4), (2, 1, 4, 3), (1, 3, 2, 4), (1, 2, 4, 3), (2, 1, 3, 4)]
    table = {
        f"d{i}": {m: 10.0 - r for m, r in zip("wxyz", row, strict=True)}
        for i, row in enumerate(ranks_by_row)
    }
    ranked = average_ranks(table, higher_is_better=True)
    assert ranked.average_rank == pytest.approx({"w": 1.4, "x": 1.8, "y": 3.2, "z": 3.6})
    assert ranked.friedman_statistic == pytest.approx(10.2)
    assert ranked.friedman_p_value == pytest.approx(stats.chi2.sf(10.2, df=3))
    # Demšar's table 5: q_0.05/√2 = 2.569 for k = 4; CD = 2.569·√(20/30) ≈ 2.098
    assert ranked.critical_difference == pytest.approx(2.569 * math.sqrt(20 / 30), rel=1e-3)
    assert ranked.friedman_p_value < 0.05 and ranked.best_method == "w"
    assert ranked.tied_with_best == {"w": True, "x": True, "y": True, "z": False}


@pytest.mark.parametrize(
    ("k", "q_over_sqrt2"), [(2, 1.960), (3, 2.343), (5, 2.728), (8, 3.031), (10, 3.164)]
)
def test_critical_difference_matches_demsar_table(k: int, q_over_sqrt2: float) -> None:
    rng = np.random.default_rng(k)
    table = {f"d{i}": {f"m{j}": float(rng.random()) for j in range(k)} for i in range(6)}
    expected = q_over_sqrt2 * math.sqrt(k * (k + 1) / 36)
    assert average_ranks(table, True).critical_difference == pytest.approx(expected, rel=1e-3)


def test_friedman_not_rejecting_ties_everyone() -> None:
    table = {"d1": {"a": 3.0, "b": 2.0, "c": 1.0}, "d2": {"a": 1.0, "b": 2.0, "c": 3.0}}
    ranked = average_ranks(table, higher_is_better=True)
    assert ranked.friedman_p_value == pytest.approx(
        stats.friedmanchisquare([3.0, 1.0], [2.0, 2.0], [1.0, 3.0]).pvalue
    )
    assert ranked.friedman_p_value >= 0.05
    assert ranked.tied_with_best == {"a": True, "b": True, "c": True}


def test_all_methods_tied_everywhere_is_not_a_test() -> None:
    # Friedman's tie correction divides by zero here (scipy returns NaN): no test, all tied
    table = {"d1": {"a": 1.0, "b": 1.0, "c": 1.0}, "d2": {"a": 2.0, "b": 2.0, "c": 2.0}}
    ranked = average_ranks(table, higher_is_better=True)
    assert ranked.average_rank == {"a": 2.0, "b": 2.0, "c": 2.0}
    assert ranked.friedman_p_value == 1.0 and "every method ties" in ranked.note
    assert ranked.tied_with_best == {"a": True, "b": True, "c": True}


def test_too_few_methods_or_rows_say_why() -> None:
    two = average_ranks({"d1": {"a": 1.0, "b": 2.0}, "d2": {"a": 1.0, "b": 3.0}}, True)
    assert "at least 3 methods" in two.note and math.isnan(two.friedman_p_value)
    assert two.tied_with_best == {"a": None, "b": None} and two.best_method is None
    one_row = average_ranks(
        {"d1": {"a": 1.0, "b": 2.0, "c": math.nan}, "d2": {"a": 1.0, "b": 2.0, "c": 3.0}}, True
    )
    assert "at least 2 rows" in one_row.note and "1 incomplete" in one_row.note
    assert one_row.rows_ranked == {"a": 2, "b": 2, "c": 1}


# --- rank_at_fractions --------------------------------------------------------------------


def test_anytime_value_is_the_last_evaluation_at_or_before() -> None:
    curve = [(0.1, 0.2), (0.3, 0.5), (0.6, 0.7), (1.0, 0.8)]
    assert anytime_value(curve, 0.25) == 0.2
    assert anytime_value(curve, 0.3) == 0.5
    assert anytime_value(list(reversed(curve)), 0.5) == 0.5  # order does not matter
    assert anytime_value(curve, 1.0) == 0.8
    assert anytime_value([(0.25 + 1e-12, 0.4)], 0.25) == 0.4  # float noise tolerated
    assert math.isnan(anytime_value(curve, 0.05))


def test_rank_at_fractions_by_hand() -> None:
    curves = {
        # fast starter: good early, overtaken at the end
        "fast": [[(0.2, 0.6), (0.5, 0.65), (1.0, 0.70)], [(0.2, 0.5), (0.5, 0.6), (1.0, 0.66)]],
        # slow starter; its second seed evaluated only at 0.3: counted out at 25%
        "slow": [[(0.2, 0.3), (0.5, 0.6), (1.0, 0.80)], [(0.3, 0.4), (0.5, 0.6), (1.0, 0.76)]],
        "never": [[]],
    }
    quarter, half, full = rank_at_fractions(curves, higher_is_better=True)
    assert (quarter.fraction, half.fraction, full.fraction) == (0.25, 0.5, 1.0)
    assert quarter.mean["fast"] == pytest.approx(0.55) and quarter.mean["slow"] == 0.3
    assert quarter.seeds == {"fast": 2, "slow": 1, "never": 0}
    assert quarter.rank["fast"] == 1.0 and quarter.rank["slow"] == 2.0
    assert math.isnan(quarter.rank["never"]) and math.isnan(quarter.mean["never"])
    assert half.mean == pytest.approx({"fast": 0.625, "slow": 0.6, "never": math.nan}, nan_ok=True)
    assert full.mean["slow"] == pytest.approx(0.78) and full.rank["slow"] == 1.0
    assert full.rank["fast"] == 2.0
    lower = rank_at_fractions(curves, higher_is_better=False, fractions=[1.0])[0]
    assert lower.rank["fast"] == 1.0 and lower.rank["slow"] == 2.0


def test_rank_at_fractions_averages_ties() -> None:
    curves = {"a": [[(1.0, 0.5)]], "b": [[(1.0, 0.5)]], "c": [[(1.0, 0.9)]]}
    (full,) = rank_at_fractions(curves, True, fractions=[1.0])
    assert full.rank == {"a": 2.5, "b": 2.5, "c": 1.0}
