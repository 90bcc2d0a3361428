"""MLflow records a user can follow, read back from the real SQLite store: measurement-time
timestamps, hypervolume and wall time at every evaluation, no (key, step) written twice."""

from __future__ import annotations

import io
import time

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from mtlbench.harness.config import parse_suite
from mtlbench.harness.runner import run_suite
from rich.console import Console

SUITE = {
    "name": "history",
    "datasets": [
        {"name": "multidigits", "params": {"train_pairs": 64, "val_pairs": 16, "test_pairs": 16}}
    ],
    "methods": [{"name": "ew"}],
    "budget": {"flops": 1e15},
    "training": {"batch_size": 8, "max_steps": 12, "log_every": 2, "eval_every": 5},
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    results = tmp_path_factory.mktemp("history") / "results"
    console = Console(file=io.StringIO(), width=200)
    before_ms = int(time.time() * 1000)
    summary = run_suite(parse_suite(SUITE), results, console=console, show_progress=False)
    after_ms = int(time.time() * 1000)
    assert [r.status for r in summary.recorded] == ["completed"]
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    run = pq.read_table(results / "runs").to_pylist()[0]
    return client, run, results, before_ms, after_ms


def test_every_point_has_its_measurement_time(recorded) -> None:
    client, run, _, before_ms, after_ms = recorded
    run_id = run["mlflow_run_id"]
    keys = client.get_run(run_id).data.metrics
    assert "train.task_losses.left" in keys and "anytime.wall_seconds" in keys
    for key in keys:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        stamps = [m.timestamp for m in history]
        assert all(before_ms <= t <= after_ms for t in stamps), (key, stamps)
        assert stamps == sorted(stamps), key  # measured in step order
    losses = client.get_metric_history(run_id, "train.task_losses.left")
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == [2, 4, 6, 8, 10, 12]
    # points of a 12-step run are measured over its training, not all when it was written
    first, last = min(m.timestamp for m in losses), max(m.timestamp for m in losses)
    final = client.get_metric_history(run_id, "hypervolume")[0].timestamp
    assert first < last <= final


def test_no_key_step_pair_is_written_twice(recorded) -> None:
    client, run, _, _, _ = recorded
    run_id = run["mlflow_run_id"]
    for key in client.get_run(run_id).data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), key


def test_anytime_history_has_one_point_per_evaluation(recorded) -> None:
    """Evaluations at steps 5, 10 and the final 12: val HV, test HV and wall seconds each have
    3 points, at the FLOPs spent, equal to the evaluation table; wall seconds grow."""
    client, run, results, _, _ = recorded
    evaluations = pq.read_table(results / "evaluations").to_pylist()
    assert [e["step"] for e in evaluations] == [5, 10, 12]
    flops = [int(e["budget_spent_flops"]) for e in evaluations]
    run_id = run["mlflow_run_id"]
    for key, column in (
        ("anytime.val_hypervolume", "val_hypervolume"),
        ("anytime.test_hypervolume", "test_hypervolume"),
    ):
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == flops
        assert [m.value for m in history] == pytest.approx([e[column] for e in evaluations])
    wall = sorted(client.get_metric_history(run_id, "anytime.wall_seconds"), key=lambda m: m.step)
    assert [m.step for m in wall] == flops
    seconds = [m.value for m in wall]
    assert seconds == sorted(seconds) and 0 < seconds[-1] <= run["wall_seconds"]
