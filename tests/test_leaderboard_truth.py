"""Fronts held to a known truth (issue 22): HV / true HV and the distance to the front.

A dataset registered for these tests only declares the front f1 + f2 = 1 (errors of the two
tasks of ``_hand_runs.py``), sampled at 1001 evenly spaced points; every expected number is
worked out by hand from that line and the hand-built runs' test errors.
"""

import math

import numpy as np
import pytest
from _hand_runs import baseline_rows, one_solution_run, two_solution_run
from mtlbench.harness.dataset import DatasetParams, MultiTaskDataset
from mtlbench.harness.leaderboard import build_leaderboard
from mtlbench.harness.leaderboard_plots import plot_fronts
from mtlbench.harness.leaderboard_tables import method_summaries
from mtlbench.harness.leaderboard_truth import (
    distances_to_front,
    sample_spacing,
    true_front,
    truth_numbers,
)
from mtlbench.harness.metrics import hypervolume
from mtlbench.harness.registry import DATASETS
from mtlbench.harness.runner import result_rows
from mtlbench.harness.selection import with_selection
from mtlbench.harness.store import ResultStore
from test_leaderboard import _check_html, _table

DATASET = "line_front_for_tests"
SAMPLES = 1001  # spacing h = 1/1000: every foot of a perpendicular below lies on the grid
SEEDS = (0, 1, 2)
# the sample's staircase up to (1, 1): Σ_{i<N-1} h · (i h) = (N - 2) / (2 (N - 1)) = 0.4995
TRUE_HV = (SAMPLES - 2) / (2 * (SAMPLES - 1))
EW_ACCURACIES = {0: [0.7, 0.5], 1: [0.6, 0.5], 2: [0.8, 0.5]}  # errors (0.3|0.4|0.2, 0.5)


class LineFront(MultiTaskDataset):
    """Objectives on the segment f1 + f2 = 1, f1 in [0, 1]; nothing to load or train."""

    @classmethod
    def taskset(cls, params):
        raise NotImplementedError

    def load(self):
        raise NotImplementedError

    def build_model(self):
        raise NotImplementedError

    @classmethod
    def true_front(cls, params: DatasetParams) -> np.ndarray:
        first = np.linspace(0.0, 1.0, SAMPLES)
        return np.stack([first, 1.0 - first], axis=1)


@pytest.fixture
def line_dataset(monkeypatch):
    """``LineFront`` registered as DATASET for one test (the registry has no removal)."""
    DATASETS.names()  # load the real datasets first, so the entry is not overwritten
    monkeypatch.setitem(DATASETS._entries, DATASET, LineFront)
    monkeypatch.setattr(LineFront, "registry_name", DATASET, raising=False)
    return DATASET


def _store(tmp_path) -> ResultStore:
    """Baselines, EW (one solution, EW_ACCURACIES) and MGDA (solutions A and B) on DATASET."""
    store = ResultStore(tmp_path)
    for seed in SEEDS:
        for row in baseline_rows(seed, dataset=DATASET):
            store.write_run(row["run_hash"], [row])
        for run in (
            one_solution_run(EW_ACCURACIES[seed], seed, "ew", DATASET),
            two_solution_run(seed, "mgda", DATASET),
        ):
            store.write_run(run.spec.run_hash, result_rows(run, "", store.rows()))
    return store


def test_distances_match_brute_force_in_three_objectives() -> None:
    generator = np.random.default_rng(0)
    front = generator.random((500, 3))
    points = generator.random((40, 3))
    brute = np.linalg.norm(points[:, None, :] - front[None, :, :], axis=2).min(axis=1)
    assert distances_to_front(points, front) == pytest.approx(brute, abs=1e-12)
    assert sample_spacing(np.array([[0.0, 1.0], [0.25, 0.75], [1.0, 0.0]])) == pytest.approx(
        0.75 * math.sqrt(2)
    )


def test_hv_ratio_and_distances_against_the_line(tmp_path, line_dataset) -> None:
    rows = with_selection(_store(tmp_path).rows())
    front = true_front(rows[0])
    assert front.shape == (SAMPLES, 2)
    assert hypervolume(front, [1.0, 1.0]).value == pytest.approx(TRUE_HV, rel=1e-12)
    by_label = {s.label: s for s in method_summaries(rows)}

    ew = truth_numbers(by_label["ew"], front, TRUE_HV)
    # a single point (e1, e2): HV (1 - e1)(1 - e2); distance to the line |e1 + e2 - 1| / √2
    errors = [(1 - a, 1 - b) for a, b in EW_ACCURACIES.values()]
    ratios = [(1 - e1) * (1 - e2) / TRUE_HV for e1, e2 in errors]  # 0.35, 0.3, 0.4 / 0.4995
    distances = [abs(e1 + e2 - 1) / math.sqrt(2) for e1, e2 in errors]  # 0.2, 0.1, 0.3 / √2
    assert ew.hv_ratio.mean == pytest.approx(np.mean(ratios), rel=1e-9)
    assert ew.hv_ratio.n == 3 and ew.hv_ratio.low < ew.hv_ratio.mean < ew.hv_ratio.high
    assert ew.distance_mean.mean == pytest.approx(np.mean(distances), abs=1e-12)
    assert ew.distance_max == pytest.approx(0.3 / math.sqrt(2), abs=1e-12)
    assert ew.solutions == 3

    mgda = truth_numbers(by_label["mgda"], front, TRUE_HV)
    # A's errors (0.05, 0.64): HV 0.95 · 0.36 (A dominates B), distance 0.31 / √2;
    # B's errors (0.15, 0.70): distance 0.15 / √2
    assert mgda.hv_ratio.mean == pytest.approx(0.342 / TRUE_HV, rel=1e-9)
    assert mgda.distance_mean.mean == pytest.approx((0.31 + 0.15) / 2 / math.sqrt(2), abs=1e-12)
    assert mgda.distance_max == pytest.approx(0.31 / math.sqrt(2), abs=1e-12)
    assert mgda.solutions == 6


def test_page_shows_the_truth_table_and_the_front(tmp_path, line_dataset) -> None:
    rows = with_selection(_store(tmp_path).rows())
    page = build_leaderboard(tmp_path).read_text()
    markdown = (tmp_path / "leaderboard" / "index.md").read_text()
    assert "could not be built" not in markdown
    table = {r[0]: r for r in _table(markdown, "Against the true Pareto front")}
    # ranked as in the ranking: EW's mean HV 0.35 above MGDA's 0.342
    assert list(table) == ["ew", "mgda", "single_task (reference)"]
    assert table["mgda"][1].startswith(f"{0.342 / TRUE_HV:.4g} ")  # 0.6847
    assert table["mgda"][3] == f"{0.31 / math.sqrt(2):.4g}"  # 0.2192
    assert table["mgda"][4:] == ["6", "3"]
    assert f"True HV {TRUE_HV:.4g} (exact)" in markdown
    _check_html(page)

    # the plot's axes hold the whole true front behind the methods' points
    limits = plot_fronts(
        method_summaries(rows), "t", tmp_path / "f.png", ["left", "right"], true_front(rows[0])
    )
    (x_low, x_high), (y_low, y_high) = limits
    assert x_low < 0 and x_high > 1 and y_low < 0 and y_high > 1


def test_learning_datasets_have_no_front(tmp_path) -> None:
    row = baseline_rows()[0]
    assert true_front(row) is None  # multidigits: the default, unknown
    assert true_front({**row, "dataset": "no_longer_registered"}) is None


def test_a_front_of_the_wrong_shape_is_named_and_the_rest_is_written(
    tmp_path, line_dataset, monkeypatch
) -> None:
    _store(tmp_path)
    monkeypatch.setattr(LineFront, "true_front", classmethod(lambda cls, params: np.zeros((5, 3))))
    markdown_path = tmp_path / "leaderboard" / "index.md"
    build_leaderboard(tmp_path)
    markdown = markdown_path.read_text()
    assert (
        f"Table 'true front, {DATASET} · 1e9 FLOPs' could not be built: ValueError: "
        f"{DATASET}.true_front returned shape (5, 3), expected (N, 2)" in markdown
    )
    assert "Against the true Pareto front" not in markdown
    assert "Ranking at the end of the budget" in markdown and "![fronts]" in markdown
