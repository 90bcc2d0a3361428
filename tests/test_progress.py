"""Progress that shows life: the ETA, the periodic line without a terminal, metrics in MLflow
while a run trains, and Ctrl-C (a real SIGINT) leaving no MLflow run RUNNING."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import _test_methods
import yaml
from mlflow.tracking import MlflowClient
from mtlbench.harness.config import parse_suite
from mtlbench.harness.progress import RunProgress, format_seconds
from mtlbench.harness.runner import run_suite
from rich.console import Console

TESTS = Path(__file__).resolve().parent
DATASET = {"name": "multidigits", "params": {"train_pairs": 64, "val_pairs": 16, "test_pairs": 16}}


def test_eta_is_the_remaining_budget_at_the_rate_spent() -> None:
    # a quarter of the budget in 10 s: the other three quarters take 30 s
    assert RunProgress(step=5, fraction=0.25, elapsed_seconds=10.0).eta_seconds == 30.0
    assert RunProgress(step=0, fraction=0.0, elapsed_seconds=3.0).eta_seconds is None
    assert [format_seconds(s) for s in (None, 12.4, 185, 3725)] == ["?", "12s", "3m05s", "1h02m"]


def test_periodic_line_without_a_terminal(tmp_path: Path) -> None:
    """A 16-step run sleeping 0.1 s a step, lines every 0.3 s to a non-terminal console."""
    data = {
        "name": "lines",
        "datasets": [DATASET],
        "methods": [{"name": "test_slow", "params": {"seconds_per_step": 0.1}}],
        "budget": {"flops": 1e15},
        "training": {"batch_size": 8, "max_steps": 16, "log_every": 1, "eval_every": 100},
    }
    _test_methods.register()
    try:
        suite = parse_suite(data)
        output = io.StringIO()
        console = Console(file=output, width=300)
        assert not console.is_terminal
        run_suite(suite, tmp_path, console=console, show_progress=True, report_seconds=0.3)
    finally:
        _test_methods.unregister()
    pattern = re.compile(
        r"^\d\d:\d\d:\d\d suite lines: 0/1 runs recorded \(none\); running: "
        r"test_slow/multidigits/seed=0 (starting|step (\d+), (\d+)% of budget, ETA (\S+))$"
    )
    lines = [line for line in output.getvalue().splitlines() if pattern.match(line)]
    assert len(lines) >= 2, output.getvalue()
    steps = [int(m.group(2)) for m in map(pattern.match, lines) if m and m.group(2)]
    assert steps and steps == sorted(steps) and steps[-1] <= 16
    percents = [int(m.group(3)) for m in map(pattern.match, lines) if m and m.group(3)]
    assert all(0 <= p <= 100 for p in percents)


def _children(client: MlflowClient, suite: str):
    experiment = client.get_experiment_by_name(suite)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id])


def test_ctrl_c_kills_open_runs_says_how_to_continue_and_exits_130(tmp_path: Path) -> None:
    """The CLI, in a subprocess, on 2 slow runs: once the first run's training metrics are in
    MLflow while it is RUNNING (live logging), SIGINT; exit 130, the message, 0 runs RUNNING."""
    data = {
        "name": "interrupt",
        "datasets": [DATASET],
        "methods": [{"name": "test_slow", "params": {"seconds_per_step": 0.2}}],
        "seeds": [0, 1],
        "budget": {"flops": 1e15},
        "training": {"batch_size": 8, "max_steps": 400, "log_every": 1, "eval_every": 1000},
    }
    suite_file = tmp_path / "interrupt.yaml"
    suite_file.write_text(yaml.safe_dump(data))
    results = tmp_path / "results"
    cli = (
        "import _test_methods; _test_methods.register(); "
        "from mtlbench.harness.cli import main; main()"
    )
    command = [sys.executable, "-c", cli, "run", str(suite_file), "--results-dir", str(results)]
    command += ["--no-progress", "--no-leaderboard"]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    driver = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    deadline = time.monotonic() + 240
    while True:
        assert driver.poll() is None, driver.stdout.read()
        assert time.monotonic() < deadline, "no live metric reached MLflow in time"
        if (results / "mlflow.db").exists():
            running = [
                r
                for r in _children(client, "interrupt")
                if r.info.status == "RUNNING" and r.data.tags.get("mtlbench.kind") == "run"
            ]
            if running and "train.budget_fraction_spent" in running[0].data.metrics:
                break
        time.sleep(0.3)
    driver.send_signal(signal.SIGINT)
    output, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, output
    assert (
        "interrupted: 0 of 2 runs recorded this time (none), 0 recorded before; 1 run(s)" in output
    )
    assert "marked KILLED in MLflow" in output
    assert f"to continue, run: mtlbench run {suite_file} --results-dir {results}" in output
    statuses = {r.info.run_id: r.info.status for r in _children(client, "interrupt")}
    assert len(statuses) == 2 and set(statuses.values()) == {"KILLED"}  # the suite run + 1 run
