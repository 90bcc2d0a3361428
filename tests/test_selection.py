"""The record type, the selection of a run's solution on validation numbers, Δm% with reasons.

Runs are built by hand (no training): two tasks ``left`` and ``right`` scored by accuracy, with
single-task baselines whose numbers make the validation choice differ from the test choice; every
expected Δm% below is computed by hand from the formula.
"""

import dataclasses
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _hand_runs import baseline_rows, two_solution_run
from mtlbench.harness.metrics import HypervolumeResult
from mtlbench.harness.records import RUN_SCHEMA, RunRecord, hypervolume_columns
from mtlbench.harness.runner import backfill_delta_m, result_rows
from mtlbench.harness.selection import (
    RULE_VAL_DELTA_M,
    RULE_VAL_MEAN_OBJECTIVE,
    selected_row,
    with_selection,
)
from mtlbench.harness.store import ResultStore


def test_schema_is_derived_from_the_record_type() -> None:
    fields = [f.name for f in dataclasses.fields(RunRecord)]
    hv_columns = list(hypervolume_columns(None))
    assert RUN_SCHEMA.names == [name for f in fields for name in (hv_columns if f == "hv" else [f])]
    # every field of the hypervolume estimate has its column, whatever fields it grows
    assert hv_columns[0] == "hypervolume"
    assert {f"hv_{f.name}" for f in dataclasses.fields(HypervolumeResult)} - {"hv_value"} <= set(
        hv_columns
    )
    for name in ("is_baseline", "selected", "selection_rule", "val_delta_m_pct", "delta_m_reason"):
        assert name in RUN_SCHEMA.names


def test_validation_choice_is_reported_not_the_test_one() -> None:
    rows = result_rows(two_solution_run(), "", baseline_rows())
    by_label = {r["solution_label"]: r for r in rows}
    assert by_label["A"]["val_delta_m_pct"] == pytest.approx(-100 / 2 * 0.05 / 0.9)
    assert by_label["B"]["val_delta_m_pct"] == pytest.approx(-5.0)
    assert by_label["A"]["delta_m_pct"] == pytest.approx(-100 / 2 * (0.05 / 0.9 + 0.2))
    assert by_label["B"]["delta_m_pct"] == pytest.approx(100 / 2 * 0.05 / 0.9)
    assert [r["selected"] for r in rows] == [False, True]
    assert selected_row(rows)["solution_label"] == "B"
    # the run's Δm% is B's TEST Δm%, although A has the better test Δm%
    assert all(r["run_delta_m_pct"] == pytest.approx(100 / 2 * 0.05 / 0.9) for r in rows)
    assert {r["selection_rule"] for r in rows} == {RULE_VAL_DELTA_M}
    assert all(not r["is_baseline"] and r["delta_m_reason"] == "" for r in rows)
    assert all(len(r["delta_m_baseline_runs"]) == 2 for r in rows)


def test_baseline_rows_are_marked_and_not_scored() -> None:
    rows = baseline_rows()
    assert all(r["is_baseline"] and r["selected"] for r in rows)
    assert all(math.isnan(r["run_delta_m_pct"]) and "baseline" in r["delta_m_reason"] for r in rows)


def test_missing_seed_uses_the_mean_over_seeds() -> None:
    # baselines for seeds 1 and 2 only: left 0.8 and 1.0 (mean 0.9), right 0.2 and 0.4 (mean 0.3)
    previous = baseline_rows(1, [0.8, 0.2]) + baseline_rows(2, [1.0, 0.4])
    rows = result_rows(two_solution_run(seed=0), "", previous)
    assert selected_row(rows)["solution_label"] == "B"
    assert rows[1]["val_delta_m_pct"] == pytest.approx(-5.0)
    assert len(rows[0]["delta_m_baseline_runs"]) == 4


def test_without_baseline_the_lowest_mean_validation_objective_is_selected() -> None:
    rows = result_rows(two_solution_run(), "", [])
    assert selected_row(rows)["solution_label"] == "A"  # mean val error 0.375 < 0.385
    assert {r["selection_rule"] for r in rows} == {RULE_VAL_MEAN_OBJECTIVE}
    assert math.isnan(rows[0]["run_delta_m_pct"])
    assert rows[0]["delta_m_reason"] == "no single-task baseline recorded"


def test_zero_baseline_metric_gives_nan_with_a_reason() -> None:
    rows = result_rows(two_solution_run(), "", baseline_rows(metrics=[0.9, 0.0]))
    assert all(math.isnan(r["delta_m_pct"]) and math.isnan(r["val_delta_m_pct"]) for r in rows)
    assert rows[0]["delta_m_reason"] == "baseline metric of task 'right' is 0"
    assert {r["selection_rule"] for r in rows} == {RULE_VAL_MEAN_OBJECTIVE}
    assert math.isnan(rows[0]["run_delta_m_pct"])


def test_backfill_follows_the_same_rule(tmp_path) -> None:
    store = ResultStore(tmp_path)
    run = two_solution_run()
    store.write_run(run.spec.run_hash, result_rows(run, "", []))
    assert selected_row(store.rows())["solution_label"] == "A"  # fallback rule, no baseline yet
    for row in baseline_rows():
        store.write_run(row["run_hash"], [row])
    assert backfill_delta_m(store) == 1
    rows = [r for r in store.rows() if r["method"] == "ew"]
    assert selected_row(rows)["solution_label"] == "B"
    assert rows[0]["run_delta_m_pct"] == pytest.approx(100 / 2 * 0.05 / 0.9)
    assert backfill_delta_m(store) == 0


def test_zero_baseline_is_not_rewritten_by_every_backfill(tmp_path) -> None:
    store = ResultStore(tmp_path)
    for row in baseline_rows(metrics=[0.9, 0.0]):
        store.write_run(row["run_hash"], [row])
    run = two_solution_run()
    store.write_run(run.spec.run_hash, result_rows(run, "", store.rows()))
    assert backfill_delta_m(store) == 0


def _legacy_file(path, rows: list[dict]) -> None:
    """A run file as the previous version wrote it: without the columns added since."""
    added = {"is_baseline", "selected", "selection_rule", "val_delta_m_pct", "delta_m_reason"}
    added.add("evaluation_seconds")
    schema = pa.schema([f for f in RUN_SCHEMA if f.name not in added])
    legacy = [{k: v for k, v in row.items() if k in schema.names} for row in rows]
    pq.write_table(pa.Table.from_pylist(legacy, schema=schema), path)


def test_old_files_read_back_and_get_the_same_selection(tmp_path) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    baseline = baseline_rows()
    for row in baseline:
        _legacy_file(folder / f"{row['run_hash']}.parquet", [row])
    run = two_solution_run()
    _legacy_file(folder / f"{run.spec.run_hash}.parquet", result_rows(run, "", baseline))
    rows = ResultStore(tmp_path).rows()
    assert all(r["selected"] is None and r["is_baseline"] is None for r in rows)
    rows = with_selection(rows)
    ew = [r for r in rows if r["method"] == "ew"]
    assert selected_row(ew)["solution_label"] == "B"
    assert sum(r["is_baseline"] for r in rows) == 2
    assert json.loads(ew[0]["method_params"]) == {}
