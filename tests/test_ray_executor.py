"""Executor ``ray``: runs as Ray tasks, records written by the driver alone, failures recorded.

One local Ray (``start_local(num_cpus=2)``, loopback only) for the module, shut down at its end;
its workers import ``tests/_test_methods.py`` at start-up (a ``worker_process_setup_hook``) so
they know the test-only methods that raise, diverge or kill their worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _test_methods
import pyarrow.parquet as pq
import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient
from mtlbench.cluster._ray_setup import start_local
from mtlbench.harness.cli import app
from mtlbench.harness.config import parse_suite
from mtlbench.harness.suite import expand_suite
from mtlbench.harness.trainer import train_run
from typer.testing import CliRunner

TESTS = Path(__file__).resolve().parent
DATASET = {"name": "multidigits", "params": {"train_pairs": 256, "val_pairs": 64, "test_pairs": 64}}
TRAINING = {"batch_size": 32, "max_steps": 8, "log_every": 1}
EXECUTOR = {"kind": "ray", "cpus_per_run": 1, "max_concurrent_runs": 2}


@pytest.fixture(scope="module")
def ray_address():
    context = start_local(
        num_cpus=2,
        runtime_env={
            "env_vars": {"PYTHONPATH": str(TESTS)},
            "worker_process_setup_hook": "_test_methods.register",
        },
    )
    yield context.address_info["gcs_address"]
    ray.shutdown()


def _children(results: Path, suite: str):
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(suite)
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if r.data.tags.get("mtlbench.kind") == "run"]


def _first_recorded_next_running(results: Path, suite: str) -> bool:
    """A run is in Parquet and finished in MLflow, and the next one is RUNNING (in flight) with
    training metrics already in MLflow (sent by its worker through the driver while it trains)."""
    if not list((results / "runs").glob("*.parquet")) or not (results / "mlflow.db").exists():
        return False
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    if client.get_experiment_by_name(suite) is None:
        return False
    children = _children(results, suite)
    running = [r for r in children if r.info.status == "RUNNING"]
    live = any("train.budget_fraction_spent" in r.data.metrics for r in running)
    return any(r.info.status == "FINISHED" for r in children) and live


def test_failures_are_recorded_and_the_suite_goes_on(ray_address, tmp_path: Path) -> None:
    """A run that raises → failed; NaN → diverged; its worker killed → failed; EW completes,
    with the numbers of the same run in this process."""
    data = {
        "name": "faults",
        "datasets": [DATASET],
        "methods": [
            {"name": "ew"},
            {"name": "test_raises", "params": {"at_step": 3}},
            {"name": "test_nan", "params": {"at_step": 2}},
            {"name": "test_kills_worker", "params": {"at_step": 2}},
        ],
        "budget": {"flops": 1e15},
        "training": TRAINING,
        "executor": EXECUTOR,
    }
    suite_file = tmp_path / "faults.yaml"
    suite_file.write_text(yaml.safe_dump(data))
    results = tmp_path / "results"
    _test_methods.register()  # the driver validates the suite against the registry
    try:
        outcome = CliRunner().invoke(
            app,
            [
                "run",
                str(suite_file),
                "--results-dir",
                str(results),
                "--no-progress",
                "--no-leaderboard",
            ],
        )
        ew_spec = expand_suite(parse_suite(data))[0]
    finally:
        _test_methods.unregister()
    assert outcome.exit_code == 0, outcome.output
    assert "1 completed, 1 diverged, 2 failed" in outcome.output

    rows = {r["method"]: r for r in pq.read_table(results / "runs").to_pylist()}
    assert len(rows) == 4
    assert rows["ew"]["status"] == "completed" and rows["ew"]["steps"] == 8
    assert rows["test_raises"]["status"] == "failed"
    assert "RuntimeError: test_raises: failing on purpose at step 3" in rows["test_raises"]["error"]
    assert (
        rows["test_nan"]["status"] == "diverged" and rows["test_nan"]["stop_reason"] == "diverged"
    )
    # NaN weights at step 2 make the parameters NaN by the end of that step (its loss, computed
    # before the update, is still finite)
    assert rows["test_nan"]["error"] == "non-finite parameters at step 2"
    assert rows["test_kills_worker"]["status"] == "failed"
    assert "WorkerCrashedError" in rows["test_kills_worker"]["error"]

    statuses = {r.data.params["method"]: r.info.status for r in _children(results, "faults")}
    assert statuses == {
        "ew": "FINISHED",
        "test_nan": "FINISHED",
        "test_raises": "FAILED",
        "test_kills_worker": "FAILED",
    }

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on the worker (cpus_per_run: 1)
    try:
        local = train_run(ew_spec)
    finally:
        torch.set_num_threads(threads)
    assert rows["ew"]["test_losses"] == pytest.approx(local.solutions[0].test_losses, abs=1e-6)


def test_driver_killed_mid_suite_rerun_completes_only_missing(ray_address, tmp_path: Path) -> None:
    """SIGKILL the CLI once a run is recorded; the rerun runs the rest, 0 duplicates, 0 RUNNING."""
    data = {
        "name": "interrupted",
        "datasets": [DATASET],
        "methods": [{"name": "test_slow", "params": {"seconds_per_step": 0.5}}],
        "seeds": [0, 1, 2],
        "budget": {"flops": 1e15},
        "training": TRAINING,
        "executor": {**EXECUTOR, "max_concurrent_runs": 1},
    }
    suite_file = tmp_path / "interrupted.yaml"
    suite_file.write_text(yaml.safe_dump(data))
    results = tmp_path / "results"
    # the CLI, in a process that first registers the test-only methods
    cli = (
        "import _test_methods; _test_methods.register(); "
        "from mtlbench.harness.cli import main; main()"
    )
    command = [
        sys.executable,
        "-c",
        cli,
        "run",
        str(suite_file),
        "--results-dir",
        str(results),
        "--address",
        ray_address,
        "--no-progress",
        "--no-leaderboard",
    ]
    workers = {
        "env_vars": {"PYTHONPATH": str(TESTS)},
        "worker_process_setup_hook": "_test_methods.register",
    }
    env = {**os.environ, "PYTHONPATH": str(TESTS), "MTLBENCH_RAY_RUNTIME_ENV": json.dumps(workers)}
    driver = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    deadline = time.monotonic() + 240
    while not _first_recorded_next_running(results, "interrupted"):
        assert driver.poll() is None, driver.stdout.read()
        assert time.monotonic() < deadline, "no run was recorded in time"
        time.sleep(0.5)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    recorded_before = len(list((results / "runs").glob("*.parquet")))
    assert 1 <= recorded_before < 3
    running = [r for r in _children(results, "interrupted") if r.info.status == "RUNNING"]
    assert len(running) == 1, "the killed driver should leave the run in flight RUNNING"
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    live = client.get_metric_history(running[0].info.run_id, "train.budget_fraction_spent")
    steps = [m.step for m in live]
    assert steps and len(steps) == len(set(steps)) and max(steps) < 8  # logged mid-run, once

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{recorded_before} already recorded, {3 - recorded_before} to run" in rerun.stderr
    assert f"marked {len(running)} interrupted MLflow run(s) as KILLED" in rerun.stderr

    rows = pq.read_table(results / "runs").to_pylist()
    keys = [(r["run_hash"], r["solution_index"]) for r in rows]
    assert len(rows) == 3 and len(set(keys)) == 3  # one row per run, no duplicate
    assert {r["seed"] for r in rows} == {0, 1, 2} and {r["status"] for r in rows} == {"completed"}
    children = _children(results, "interrupted")
    statuses = sorted(r.info.status for r in children)
    assert "RUNNING" not in statuses
    assert statuses.count("KILLED") == len(running) and statuses.count("FINISHED") == 3
    recorded_ids = {r["mlflow_run_id"] for r in rows}
    assert recorded_ids == {r.info.run_id for r in children if r.info.status == "FINISHED"}
    for run_id in recorded_ids:  # live points and the final record together: no pair twice
        history = client.get_metric_history(run_id, "train.budget_fraction_spent")
        assert sorted(m.step for m in history) == list(range(1, 9))


def test_worker_killed_mid_run_is_retried_from_its_checkpoint(ray_address, tmp_path: Path) -> None:
    """SIGKILL the worker (its PID from the first checkpoint's sidecar): Ray retries the task,
    which continues from the checkpoint; one row, one MLflow run FINISHED, no step twice."""
    import threading

    data = {
        "name": "preempted",
        "datasets": [DATASET],
        "methods": [{"name": "test_slow", "params": {"seconds_per_step": 0.3}}],
        "budget": {"flops": 1e15},
        "training": {**TRAINING, "checkpoint_every": 2},
        "executor": {**EXECUTOR, "max_concurrent_runs": 1},
    }
    suite_file = tmp_path / "preempted.yaml"
    suite_file.write_text(yaml.safe_dump(data))
    results = tmp_path / "results"
    killed: list[int] = []

    def kill_the_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for sidecar in (results / "checkpoints").glob("*/step_*.json"):
                killed.append(json.loads(sidecar.read_text())["pid"])
                os.kill(killed[0], signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_worker)
    killer.start()
    _test_methods.register()
    try:
        outcome = CliRunner().invoke(
            app,
            [
                "run",
                str(suite_file),
                "--results-dir",
                str(results),
                "--address",
                ray_address,
                "--no-progress",
                "--no-leaderboard",
            ],
        )
        spec = expand_suite(parse_suite(data))[0]
    finally:
        _test_methods.unregister()
        killer.join()
    assert killed and killed[0] != os.getpid()
    assert outcome.exit_code == 0, outcome.output
    assert "resumed from its checkpoint at step" in outcome.output
    (row,) = pq.read_table(results / "runs").to_pylist()
    assert row["status"] == "completed" and row["steps"] == 8
    (child,) = _children(results, "preempted")
    assert child.info.status == "FINISHED" and child.info.run_id == row["mlflow_run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    history = client.get_metric_history(child.info.run_id, "train.budget_fraction_spent")
    assert sorted(m.step for m in history) == list(range(1, 9))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on the worker (cpus_per_run: 1)
    _test_methods.register()
    try:
        local = train_run(spec)
    finally:
        _test_methods.unregister()
        torch.set_num_threads(threads)
    assert row["test_losses"] == local.solutions[0].test_losses
    assert row["budget_spent"] == local.budget["budget_spent"]


def test_wait_for_nodes_sees_the_live_head(ray_address) -> None:
    """The SLURM recipe's wait step against a live head: exit 0 once 1 node is up; 2 times out."""
    command = [sys.executable, "-m", "mtlbench.cluster.wait_for_nodes", "--address", ray_address]
    up = subprocess.run(
        [*command, "--nodes", "1", "--timeout", "60"], capture_output=True, text=True
    )
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == f"1 Ray nodes up at {ray_address}"
    short = subprocess.run(
        [*command, "--nodes", "2", "--timeout", "3"], capture_output=True, text=True
    )
    assert short.returncode == 1
    assert (
        short.stderr.strip().splitlines()[-1]
        == "wait_for_nodes: 1 of 2 Ray nodes joined within 3 s"
    )
