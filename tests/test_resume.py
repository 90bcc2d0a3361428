"""Resume inside a run: a run killed by SIGKILL after its second checkpoint, then run again,
ends with the numbers of a run that was never interrupted (CPU, bit for bit), for every
registered method; checkpoints are atomic, damaged ones are skipped, finished runs are pruned.

The oracle is the same run uninterrupted. The kill is deterministic: the child's progress
callback sends SIGKILL to its own process once two checkpoints are on disk (no timing involved).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import torch
from mtlbench.harness.checkpoints import RunCheckpoints, checkpoint_sidecars
from mtlbench.harness.data import training_batches
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.registry import DATASETS, METHODS
from mtlbench.harness.suite import RunSpec
from mtlbench.harness.trainer import RunResult, train_run
from torch.utils.data import DataLoader, Dataset

DATASET_PARAMS = {
    "num_tasks": 2,
    "input_features": 8,
    "width": 8,
    "depth": 1,
    "train_samples": 96,
    "val_samples": 32,
    "test_samples": 32,
}
TRAINING = {
    "batch_size": 16,
    "max_steps": 14,
    "log_every": 1,
    "eval_every": 5,
    "checkpoint_every": 3,
}
SMALL_PARAMS = {  # fewer solutions to evaluate; pareto_expansion killed in its expansion phase
    "pml": {"grid_divisions": 4},
    "pareto_expansion": {"num_seeds": 2, "seed_steps": 4, "minres_max_iterations": 10},
}


def _spec(method: str, scoring: str = "final") -> RunSpec:
    method_cls = METHODS.get(method)
    dataset_cls = DATASETS.get("synthetic")
    taskset = dataset_cls.taskset(dataset_cls.Params.model_validate(DATASET_PARAMS))
    small = SMALL_PARAMS.get(method, {})  # fewer solutions to evaluate, same algorithm
    params = method_cls.expand(method_cls.Params.model_validate(small), taskset)[0]
    return RunSpec(
        suite="resume",
        method=method,
        method_label=method,
        method_params=params.model_dump(mode="json"),
        engine=method_cls.default_engine,
        engine_options={},
        dataset="synthetic",
        dataset_params=DATASET_PARAMS,
        seed=3,
        budget_kind="flops",
        budget_limit=1e12,
        training=TRAINING,
        scoring=scoring,
        device="cpu",
    )


def _killed_after_second_checkpoint(spec: RunSpec, folder: Path) -> None:
    """The child: train until two checkpoints exist, then SIGKILL itself."""
    torch.set_num_threads(1)

    def progress(_update) -> None:
        if len(checkpoint_sidecars(folder, warn=False)) >= 2:
            os.kill(os.getpid(), signal.SIGKILL)

    train_run(spec, folder, progress, mlflow_run_id="run-id")
    os._exit(0)  # not killed: the test below fails on the exit code


def _kill_then_resume(spec: RunSpec, folder: Path) -> RunResult:
    child = multiprocessing.get_context("fork").Process(
        target=_killed_after_second_checkpoint, args=(spec, folder)
    )
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert len(checkpoint_sidecars(folder)) == 2
    return train_run(spec, folder, mlflow_run_id="run-id")


def _numbers(result: RunResult) -> dict:
    """What must not change with a resume (timings and dates excluded)."""
    return {
        "status": (result.status, result.stop_reason, result.error, result.steps),
        "budget": result.budget,
        "history": result.history,
        "evaluations": result.evaluations,
        "points": [(p.key, p.value, p.step) for p in result.metric_points if "wall" not in p.key],
        "solutions": [vars(solution) for solution in result.solutions],
        "scored_step": result.scored_step,
        "hypervolume": result.hypervolume,
    }


@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_killed_run_resumes_bit_for_bit(method: str, tmp_path: Path) -> None:
    spec = _spec(method)
    uninterrupted = train_run(spec, tmp_path / "whole")
    assert uninterrupted.status == "completed", uninterrupted.error
    resumed = _kill_then_resume(spec, tmp_path / "killed")
    assert _numbers(resumed) == _numbers(uninterrupted)
    # finished: only the last checkpoint is kept, and it names the MLflow run
    sidecars = checkpoint_sidecars(tmp_path / "killed")
    assert [s["step"] for s in sidecars] == [resumed.steps]
    assert sidecars[0]["mlflow_run_id"] == "run-id"


# ---- the pieces ------------------------------------------------------------------------------
class _Indexed(Dataset):
    """A map-style dataset (not a TensorDataset), so batches go through a DataLoader."""

    def __len__(self) -> int:
        return 50

    def __getitem__(self, index: int):
        return torch.tensor([float(index)]), torch.tensor(index)


def test_batches_follow_the_dataloader_and_resume_mid_epoch() -> None:
    """The order is DataLoader(shuffle=True)'s (the oracle), and a state taken mid-epoch gives
    the same continuation without reading the batches skipped."""
    loader = DataLoader(
        _Indexed(),
        batch_size=8,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(5),
    )
    expected = [targets for _ in range(3) for _, targets in loader]
    batches = training_batches(_Indexed(), 8, 5, torch.device("cpu"))
    drawn = [next(batches)[1] for _ in range(8)]  # 6 per epoch: 2 into the second epoch
    state = batches.state_dict()
    resumed = training_batches(_Indexed(), 8, 5, torch.device("cpu"))
    resumed.load_state_dict(state)
    drawn += [next(resumed)[1] for _ in range(len(expected) - 8)]
    assert all(torch.equal(a, b) for a, b in zip(drawn, expected, strict=True))


def test_damaged_checkpoints_are_skipped_with_a_warning(tmp_path: Path, capsys) -> None:
    checkpoints = RunCheckpoints(tmp_path, 1, "flops", 1e9, 100)
    for step in (1, 2, 3):
        checkpoints.write(step, {"step": step}, budget_spent=float(step))
    (tmp_path / "step_00000003.pt").write_bytes(b"truncated")  # a torn .pt
    (tmp_path / "step_00000002.json").unlink()  # a .pt whose sidecar never landed
    assert checkpoints.latest() == {"step": 1}
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2 and all(line.startswith("warning: skipping") for line in warnings)
    assert not list(tmp_path.glob("*.tmp"))


def test_finished_run_keeps_only_its_last_checkpoint(tmp_path: Path) -> None:
    result = train_run(_spec("ew"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"step_{result.steps:08d}.json",
        f"step_{result.steps:08d}.pt",
    ]
    again = train_run(_spec("ew"), tmp_path)  # a rerun of a finished run trains nothing more
    assert _numbers(again) == _numbers(result)


def test_keep_checkpoints_keeps_every_checkpoint_of_a_finished_run(tmp_path: Path) -> None:
    spec = _spec("ew")
    result = train_run(spec, tmp_path, keep_checkpoints=True)
    every = TrainingConfig.model_validate(spec.training).checkpoint_every
    steps = [*range(every, result.steps + 1, every), result.steps]
    expected = sorted({f"step_{s:08d}.{kind}" for s in steps for kind in ("pt", "json")})
    assert len(steps) > 2 and sorted(p.name for p in tmp_path.iterdir()) == expected


def test_best_val_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    spec = _spec("rlw", scoring="best_val")
    uninterrupted = train_run(spec, tmp_path / "whole")
    resumed = _kill_then_resume(spec, tmp_path / "killed")
    assert _numbers(resumed) == _numbers(uninterrupted)


# ---- through the CLI: `mtlbench run` killed by SIGKILL, then run again -------------------------
CLI_SUITE = """
name: resume_cli
datasets:
  - name: synthetic
    params: {num_tasks: 2, input_features: 8, width: 16, depth: 1, train_samples: 256,
             val_samples: 32, test_samples: 32}
methods: [{name: ew}]
seeds: [0]
budget: {flops: 1.0e12}
training: {batch_size: 16, max_steps: 300, log_every: 10, eval_every: 100, checkpoint_every: 20}
"""
TIMING_COLUMNS = {
    "wall_seconds",
    "train_seconds",
    "evaluation_seconds",
    "peak_memory_bytes",
    "started_at",
    "environment",
    "mlflow_run_id",
    "engine_stats",
}


def _run_rows(results: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = pq.read_table(results / "runs").to_pylist()
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def test_cli_run_killed_then_rerun_continues_the_same_mlflow_run(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient
    from mtlbench.harness.cli import app
    from typer.testing import CliRunner

    suite = tmp_path / "suite.yaml"
    suite.write_text(CLI_SUITE)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    command = [sys.executable, "-m", "mtlbench.harness.cli", "run", str(suite)]
    child = subprocess.Popen(
        [*command, "--results-dir", str(killed), "--no-progress", "--no-leaderboard"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while len(list(killed.glob("checkpoints/*/step_*.json"))) < 2 and child.poll() is None:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        assert child.wait() == -signal.SIGKILL
    assert not (killed / "runs").exists()  # killed half-way: nothing recorded yet
    client = MlflowClient(f"sqlite:///{killed / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("resume_cli")
    (before,) = client.search_runs([experiment.experiment_id], "tags.`mtlbench.kind` = 'run'")
    assert before.info.status == "RUNNING" and before.data.metrics  # points logged live
    for results in (killed, whole):  # the rerun in this process (the CLI's code, faster)
        outcome = CliRunner().invoke(
            app,
            ["run", str(suite), "--results-dir", str(results), "--no-progress", "--no-leaderboard"],
        )
        assert outcome.exit_code == 0, outcome.output
        assert ("resuming from step" in outcome.output) == (results == killed)
    assert json.dumps(_run_rows(killed)) == json.dumps(_run_rows(whole))  # NaN equals NaN

    runs = client.search_runs([experiment.experiment_id], "tags.`mtlbench.kind` = 'run'")
    assert [(r.info.run_id, r.info.status) for r in runs] == [(before.info.run_id, "FINISHED")]
    for key in runs[0].data.metrics:
        steps = [point.step for point in client.get_metric_history(runs[0].info.run_id, key)]
        assert len(steps) == len(set(steps)), key
    losses = client.get_metric_history(runs[0].info.run_id, "train.task_losses.task0")
    assert sorted(point.step for point in losses) == list(range(10, 301, 10))


def test_rng_streams_and_budget_continue_where_they_were_saved() -> None:
    import random

    import numpy as np
    from mtlbench.harness.budget import Budget
    from mtlbench.harness.checkpoints import capture_rng, restore_rng

    def draws() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    saved = capture_rng()
    expected = draws()
    draws()
    restore_rng(saved)
    assert draws() == expected

    budget = Budget("seconds", 3600.0)
    budget.charge("encoder_forward", 5.0, passes=2)
    state = budget.state_dict()
    resumed = Budget("seconds", 3600.0)
    resumed.load_state_dict(state)
    assert resumed.summary()["flops_encoder_forward"] == 5.0
    assert resumed.passes_by_kind == {"encoder_forward": 2}
    assert resumed.elapsed_seconds >= float(state["elapsed_seconds"])  # the clock goes on
