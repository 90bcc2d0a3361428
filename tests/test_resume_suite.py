"""Resume through the suite runner, for every registered method: Parquet rows and MLflow.

tests/test_resume.py holds each method's resumed numbers to an uninterrupted run's; this module
checks what the driver records around a resume. One results folder runs the whole suite
uninterrupted (the oracle). In a second folder each method's runs start in a forked child that
SIGKILLs itself right after its second checkpoint is written (deterministic: the kill is in the
checkpoint writer, no timing involved); one `run_suite` then resumes them all. Each run's
Parquet rows must equal the oracle's (timing columns aside), and each run must have exactly one
MLflow run, FINISHED, whose metric histories repeat no step.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient
from mtlbench.harness.checkpoints import RunCheckpoints
from mtlbench.harness.config import parse_suite
from mtlbench.harness.registry import METHODS
from mtlbench.harness.runner import run_suite
from rich.console import Console
from test_resume import DATASET_PARAMS, SMALL_PARAMS, TIMING_COLUMNS, TRAINING

METHOD_NAMES = sorted(METHODS.names())


def _suite(methods: list[str]):
    return parse_suite(
        {
            "name": "resume_suite",
            "methods": [{"name": m, "params": SMALL_PARAMS.get(m, {})} for m in methods],
            "datasets": [{"name": "synthetic", "params": DATASET_PARAMS}],
            "seeds": [3],
            "budget": {"flops": 1e12},
            "training": TRAINING,
        }
    )


def _quiet() -> Console:
    return Console(stderr=True, quiet=True)


def _killed_child(method: str, results: Path) -> None:
    """Run ``method``'s runs of the suite; SIGKILL this process after the 2nd checkpoint write."""
    torch.set_num_threads(1)
    write = RunCheckpoints.write
    written = {"count": 0}

    def write_then_maybe_die(self, *args, **kwargs):
        path = write(self, *args, **kwargs)
        written["count"] += 1
        if written["count"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    RunCheckpoints.write = write_then_maybe_die  # type: ignore[method-assign]  # child only
    run_suite(_suite([method]), results, console=_quiet(), show_progress=False)
    os._exit(0)  # not killed: the exit code check below fails


def _rows_by_run(results: Path) -> dict[str, list[dict]]:
    by_run: dict[str, list[dict]] = {}
    for row in pq.read_table(results / "runs").to_pylist():
        kept = {k: v for k, v in row.items() if k not in TIMING_COLUMNS}
        by_run.setdefault(row["run_hash"], []).append(kept)
    return {k: sorted(v, key=lambda r: r["solution_index"]) for k, v in by_run.items()}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume_suite")
    whole, killed = root / "whole", root / "killed"
    run_suite(_suite(METHOD_NAMES), whole, console=_quiet(), show_progress=False)
    context = multiprocessing.get_context("fork")
    for method in METHOD_NAMES:
        child = context.Process(target=_killed_child, args=(method, killed))
        child.start()
        child.join()
        assert child.exitcode == -signal.SIGKILL, method
    summary = run_suite(_suite(METHOD_NAMES), killed, console=_quiet(), show_progress=False)
    assert summary.skipped == 0  # the killed runs had recorded nothing
    return whole, killed


def test_every_method_resumed_by_the_runner_records_the_uninterrupted_rows(folders) -> None:
    whole, killed = folders
    expected, resumed = _rows_by_run(whole), _rows_by_run(killed)
    assert sorted(resumed) == sorted(expected)
    assert {rows[0]["method"] for rows in resumed.values()} == set(METHOD_NAMES)
    for run_hash, rows in expected.items():
        method = rows[0]["method"]
        assert rows[0]["status"] == "completed", method
        assert json.dumps(resumed[run_hash]) == json.dumps(rows), method  # NaN equals NaN


def _mlflow_runs(results: Path) -> tuple[MlflowClient, dict[str, list]]:
    """The MLflow client of ``results`` and its child runs grouped by run hash."""
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("resume_suite")
    runs = client.search_runs([experiment.experiment_id], "tags.`mtlbench.kind` = 'run'")
    by_hash: dict[str, list] = {}
    for run in runs:
        by_hash.setdefault(run.data.tags["mtlbench.run_hash"], []).append(run)
    return client, by_hash


def _histories(client: MlflowClient, run) -> dict[str, list[int]]:
    """Each metric's logged steps, in the order MLflow returns them."""
    return {
        key: [point.step for point in client.get_metric_history(run.info.run_id, key)]
        for key in run.data.metrics
    }


def test_every_resumed_run_has_one_finished_mlflow_run_without_repeated_steps(folders) -> None:
    whole, killed = folders
    client, resumed = _mlflow_runs(killed)
    oracle_client, oracle = _mlflow_runs(whole)
    assert sorted(resumed) == sorted(oracle)
    for run_hash, found in resumed.items():
        method = found[0].data.params["method"]
        assert [r.info.status for r in found] == ["FINISHED"], method
        histories = _histories(client, found[0])
        for key, steps in histories.items():
            assert len(steps) == len(set(steps)), (method, key)
        # the same points as the uninterrupted run's MLflow run: nothing lost, nothing doubled
        expected = _histories(oracle_client, oracle[run_hash][0])
        assert {k: sorted(v) for k, v in histories.items()} == {
            k: sorted(v) for k, v in expected.items()
        }, method
