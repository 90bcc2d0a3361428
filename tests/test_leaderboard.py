"""The leaderboard page from hand-built records (no training): what it ranks, what it reports,
what it shows when a number is undefined or a table fails, and the anytime ranking.

Expected numbers are computed by hand from the constructed rows (see ``_hand_runs.py``).
"""

import base64
import math
import re
from html.parser import HTMLParser

import pytest
from _hand_runs import baseline_rows, one_solution_run, two_solution_run
from mtlbench.harness import leaderboard
from mtlbench.harness.leaderboard import build_leaderboard
from mtlbench.harness.leaderboard_plots import plot_fronts
from mtlbench.harness.leaderboard_tables import anytime_table, ideal_point, method_summaries
from mtlbench.harness.records import EvaluationRecord, to_row
from mtlbench.harness.runner import result_rows
from mtlbench.harness.selection import with_selection
from mtlbench.harness.store import ResultStore

SEEDS = (0, 1, 2)
EW_ACCURACIES = [0.9, 0.3]  # test errors (0.1, 0.7): HV = 0.9 * 0.3 = 0.27, Δm% = 0


def _store(tmp_path, baseline=(0.9, 0.3), datasets=("multidigits",)) -> ResultStore:
    """Baselines, EW (one solution) and MGDA (solutions A and B) on every seed."""
    store = ResultStore(tmp_path)
    for dataset in datasets:
        for seed in SEEDS:
            for row in baseline_rows(seed, list(baseline), dataset):
                store.write_run(row["run_hash"], [row])
            for run in (
                one_solution_run(EW_ACCURACIES, seed, "ew", dataset),
                two_solution_run(seed, "mgda", dataset),
            ):
                store.write_run(run.spec.run_hash, result_rows(run, "", store.rows()))
    return store


def _table(markdown: str, title: str) -> list[list[str]]:
    """The rows (cells) of the Markdown table under heading ``title``."""
    section = markdown[markdown.index(title) :]
    lines = [line for line in section.splitlines()[1:] if line.strip()]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


class _TagBalance(HTMLParser):
    VOID = frozenset({"img", "meta", "br"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def _check_html(page: str) -> None:
    parser = _TagBalance()
    parser.feed(page)
    assert not parser.errors and not parser.stack
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert images
    for encoded in images:
        assert base64.b64decode(encoded).startswith(b"\x89PNG")


def test_ranking_reports_the_validation_choice_and_the_baseline_as_reference(tmp_path) -> None:
    _store(tmp_path)
    page = build_leaderboard(tmp_path)
    markdown = (tmp_path / "leaderboard" / "index.md").read_text()
    rows = _table(markdown, "Ranking at the end of the budget")
    by_method = {row[1]: row for row in rows}
    # MGDA's front: A (errors 0.05, 0.64) dominates B: HV = 0.95 * 0.36 = 0.342 > EW's 0.27
    assert [row[:2] for row in rows] == [["1", "mgda"], ["2", "ew"], ["reference", "single_task"]]
    assert by_method["mgda"][2].startswith("0.342 [0.342, 0.342]")
    # Δm% and metrics are B's (best on validation), not A's (best on test): Δm% = +2.78
    assert by_method["mgda"][4] == "2.78 [2.78, 2.78]"
    assert by_method["mgda"][6].startswith("0.85 ") and by_method["mgda"][7].startswith("0.3 ")
    assert by_method["ew"][4] == "0 [0, 0]"
    # paired against EW on 3 seeds: the Wilcoxon test cannot resolve it, so a tie
    assert by_method["mgda"][3].startswith("tie")
    # the baseline row: each task's own run's metric
    assert by_method["single_task"][6].startswith("0.9 ") and by_method["single_task"][
        7
    ].startswith("0.3 ")
    html_page = page.read_text()
    _check_html(html_page)
    assert "could not be built" not in html_page
    assert "estimator: exact" in markdown


def test_front_plot_fits_the_fronts_and_the_ideal_point(tmp_path) -> None:
    rows = with_selection(_store(tmp_path).rows())
    summaries = method_summaries(rows)
    baseline = next(s for s in summaries if s.is_baseline)
    assert ideal_point(baseline) == pytest.approx([0.1, 0.7])  # single-task test errors
    limits = plot_fronts(summaries, "t", tmp_path / "fronts.png", ["left", "right"])
    (x_low, x_high), (y_low, y_high) = limits
    # off-task errors of the single-task runs (0.98) would stretch the axes; they are not drawn
    assert x_low < 0.05 and 0.15 < x_high < 0.3 and y_low < 0.64 and 0.7 < y_high < 0.8
    assert (tmp_path / "fronts.png").stat().st_size > 0


def test_zero_baseline_shows_a_dash_and_the_reason(tmp_path) -> None:
    _store(tmp_path, baseline=(0.9, 0.0))
    build_leaderboard(tmp_path)
    markdown = (tmp_path / "leaderboard" / "index.md").read_text()
    rows = _table(markdown, "Ranking at the end of the budget")
    assert {row[4] for row in rows if row[0] != "reference"} == {"—"}
    assert "baseline metric of task 'right' is 0" in markdown


def test_a_failing_table_is_named_and_the_rest_is_written(tmp_path, monkeypatch) -> None:
    _store(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(leaderboard, "anytime_table", broken)
    page = build_leaderboard(tmp_path).read_text()
    assert "Table &#x27;anytime, multidigits" in page and "RuntimeError: boom" in page
    assert "Ranking at the end of the budget" in page and "<h2>Methods</h2>" in page
    _check_html(page)


def test_old_results_still_build(tmp_path) -> None:
    from test_selection import _legacy_file

    folder = tmp_path / "runs"
    folder.mkdir()
    rows = baseline_rows()
    for row in rows:
        _legacy_file(folder / f"{row['run_hash']}.parquet", [row])
    run = two_solution_run(0, "mgda")
    _legacy_file(folder / f"{run.spec.run_hash}.parquet", result_rows(run, "", rows))
    build_leaderboard(tmp_path)
    markdown = (tmp_path / "leaderboard" / "index.md").read_text()
    by_method = {r[1]: r for r in _table(markdown, "Ranking at the end of the budget")}
    assert by_method["mgda"][4] == "2.78 (n=1)"  # B, selected on validation
    assert "No anytime evaluations recorded" in markdown


def _evaluation(method: str, seed: int, step: int, fraction: float, value: float) -> dict:
    return to_row(
        EvaluationRecord(
            run_hash=f"{method}-{seed}",
            suite="hand",
            method=method,
            method_label=method,
            is_baseline=False,
            dataset="multidigits",
            seed=seed,
            budget_kind="flops",
            budget_limit=100.0,
            step=step,
            budget_spent=100 * fraction,
            budget_spent_flops=100 * fraction,
            budget_fraction=fraction,
            val_hypervolume=value,
            test_hypervolume=value,
            hv_method="exact",
            num_solutions=1,
        )
    )


def test_anytime_ranking_at_fractions_of_the_budget(tmp_path) -> None:
    # fractions 0.1, 0.3, 0.6, 1.0; at 25% the value at 0.1, at 50% the one at 0.3, at 100% 1.0
    curves = {
        ("ew", 0): [0.1, 0.2, 0.3, 0.4],
        ("ew", 1): [0.3, 0.4, 0.5, 0.6],  # ew means: 0.2, 0.3, 0.5
        ("mgda", 0): [0.0, 0.5, 0.6, 0.7],
        ("mgda", 1): [0.0, 0.3, 0.4, 0.5],  # mgda means: 0.0, 0.4, 0.6
    }
    store = ResultStore(tmp_path)
    for (method, seed), values in curves.items():
        points = [
            _evaluation(method, seed, step, fraction, value)
            for step, fraction, value in zip(
                (1, 3, 6, 10), (0.1, 0.3, 0.6, 1.0), values, strict=True
            )
        ]
        store.write_evaluations(f"{method}-{seed}", points)
    table = anytime_table(store.evaluation_rows(), "anytime")
    by_method = {row[0]: row[1:] for row in table.rows}
    assert by_method["ew"] == ["0.2 (1; n=2)", "0.3 (2; n=2)", "0.5 (2; n=2)"]
    assert by_method["mgda"] == ["0 (2; n=2)", "0.4 (1; n=2)", "0.6 (1; n=2)"]
    assert [row[0] for row in table.rows] == ["mgda", "ew"]  # ordered by the final rank


def test_average_rank_across_datasets(tmp_path) -> None:
    _store(tmp_path, datasets=("multidigits", "other"))
    build_leaderboard(tmp_path)
    markdown = (tmp_path / "leaderboard" / "index.md").read_text()
    rows = {r[0]: r for r in _table(markdown, "Average rank across datasets")}
    assert rows["mgda"][1] == "1" and rows["ew"][1] == "2" and rows["mgda"][2] == "2"
    assert "single_task" not in rows
    assert not math.isnan(float(rows["ew"][1]))
