"""``mtlbench status SUITE``: each run's state read from a real results folder, and nothing changed.

The folder holds one run of each state: ``done`` (a real tiny run of the ``synthetic`` dataset
through ``run_suite``), ``running`` (an MLflow child run left RUNNING, made with MlflowClient),
``resumable`` (a checkpoint and its JSON sidecar as the trainer writes them, next to a newer
corrupt one and a newer one whose ``.pt`` is missing), ``failed`` and ``done`` as diverged
(records written with ResultStore), ``not started`` (only a KILLED MLflow run) and, as
``resumable``, a run left RUNNING in MLflow whose checkpoint names a process that has ended.
The numbers are checked against the recorded run and against the sidecar's arithmetic; every
file of the folder is compared byte for byte before and after.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
import torch
import yaml
from _tiny_suite import tiny_suite
from mlflow.tracking import MlflowClient
from mtlbench.harness.cli import app
from mtlbench.harness.config import load_suite
from mtlbench.harness.runner import run_suite
from mtlbench.harness.status import Checkpoint, newest_checkpoint
from mtlbench.harness.store import ResultStore
from mtlbench.harness.suite import expand_suite
from mtlbench.harness.tracking import RUN_HASH_TAG
from rich.console import Console
from typer.testing import CliRunner

BUDGET_FLOPS = 2.0e5  # about 20 steps of the tiny problem below


def _suite(seeds: list[int]) -> dict:
    """Tiny runs (seconds each): 2 tasks, an 8-unit encoder, 64 training samples."""
    return tiny_suite("tiny", seeds, BUDGET_FLOPS, checkpoint_every=10)


def _write_checkpoint(directory: Path, step: int, sidecar: dict | str | None) -> None:
    """``step_<step>.pt`` (unless ``sidecar`` is None, then only a sidecar with no .pt: pass
    a dict) and its sidecar (a dict as JSON, or raw text)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"step": step}, directory / f"step_{step:08d}.pt")
    text = sidecar if isinstance(sidecar, str) else json.dumps(sidecar)
    (directory / f"step_{step:08d}.json").write_text(text)


def _sidecar(step: int, spent: float, **changes) -> dict:
    return {
        "step": step,
        "budget_kind": "flops",
        "budget_limit": BUDGET_FLOPS,
        "budget_spent": spent,
        "max_steps": 100_000,
        "mlflow_run_id": "0123abcd",
        "written_at": "2026-12-07T03:00:00.250000+00:00",  # datetime.isoformat() in UTC
        **changes,
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(suite file, results folder, expectations): seeds 0..6 in states done, running,
    resumable, failed, not started, done (diverged), resumable (left RUNNING by a dead process)."""
    root = tmp_path_factory.mktemp("status")
    suite_file = root / "tiny.yaml"
    suite_file.write_text(yaml.safe_dump(_suite([0, 1, 2, 3, 4, 5, 6])))
    results = root / "results"
    suite = load_suite(suite_file)
    hashes = {spec.seed: spec.run_hash for spec in expand_suite(suite)}

    # done: seed 0 really run (same run hash as in the five-seed suite: the name is not hashed)
    summary = run_suite(
        suite.model_copy(update={"seeds": [0]}),
        results,
        console=Console(file=io.StringIO()),
        show_progress=False,
    )
    [done] = summary.recorded
    assert done.status == "completed"

    # running (seed 1) and, for seed 4, a run its driver marked KILLED: not running
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    running = client.create_run(experiment.experiment_id, tags={RUN_HASH_TAG: hashes[1]})
    killed = client.create_run(experiment.experiment_id, tags={RUN_HASH_TAG: hashes[4]})
    client.set_terminated(killed.info.run_id, status="KILLED")

    # a running run's checkpoint, written by this live process: step 10, a fifth of the budget
    alive = {"hostname": platform.node(), "pid": os.getpid()}
    _write_checkpoint(
        results / "checkpoints" / hashes[1], 10, _sidecar(10, 0.2 * BUDGET_FLOPS, **alive)
    )
    # seed 6: left RUNNING in MLflow, but the process that wrote its checkpoint here has ended
    finished = subprocess.Popen(["sleep", "0"])
    finished.wait()
    orphan = client.create_run(experiment.experiment_id, tags={RUN_HASH_TAG: hashes[6]})
    dead = {"hostname": platform.node(), "pid": finished.pid}
    _write_checkpoint(
        results / "checkpoints" / hashes[6], 30, _sidecar(30, 0.5 * BUDGET_FLOPS, **dead)
    )

    # resumable (seed 2): step 40 valid; step 60 corrupt; step 80 without its .pt
    checkpoints = results / "checkpoints" / hashes[2]
    _write_checkpoint(checkpoints, 40, _sidecar(40, 0.4 * BUDGET_FLOPS))
    _write_checkpoint(checkpoints, 60, '{"step": 60, "budget_')
    _write_checkpoint(checkpoints, 80, _sidecar(80, 0.8 * BUDGET_FLOPS))
    (checkpoints / "step_00000080.pt").unlink()

    # failed (seed 3) and diverged (seed 5, no scored solution: a placeholder row)
    store = ResultStore(results)
    error = (
        "RuntimeError: CUDA out of memory on [red]cuda:0[/]\nTraceback (most recent call last): ..."
    )
    store.write_run(hashes[3], [_record(hashes[3], 3, status="failed", error=error)])
    store.write_run(hashes[5], [_record(hashes[5], 5, status="diverged", steps=7)])
    expected = {
        "done": done,
        "running": running,
        "orphan": orphan,
        "dead_pid": finished.pid,
        "hashes": hashes,
    }
    return suite_file, results, expected


def _record(run_hash: str, seed: int, **columns) -> dict:
    """A hand-made row of the run table (the columns not named are left null)."""
    identity = {"suite": "tiny", "method": "ew", "method_label": "ew", "is_baseline": False}
    return {
        "run_hash": run_hash,
        **identity,
        "dataset": "synthetic",
        "seed": seed,
        "budget_kind": "flops",
        "budget_limit": BUDGET_FLOPS,
        **columns,
    }


def _invoke(*args: str, columns: int = 80):
    """``mtlbench ARGS`` on a terminal ``columns`` wide (rich reads COLUMNS)."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})


def _strict_json(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON that every parser reads")


def _snapshot(results: Path) -> dict[str, bytes | None]:
    """Every path under ``results`` → its bytes (None for a folder)."""
    return {
        str(path.relative_to(results)): (path.read_bytes() if path.is_file() else None)
        for path in sorted(results.rglob("*"))
    }


def test_each_run_gets_its_state_and_numbers(folder) -> None:
    suite_file, results, expected = folder
    outcome = _invoke("status", str(suite_file), "--results-dir", str(results), "--json")
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout, parse_constant=_strict_json)
    by_seed = {run["seed"]: run for run in report["runs"]}
    assert {seed: run["state"] for seed, run in by_seed.items()} == {
        0: "done",
        1: "running",
        2: "resumable",
        3: "failed",
        4: "not started",
        5: "done",
        6: "resumable",
    }
    assert {seed: run["run_hash"] for seed, run in by_seed.items()} == expected["hashes"]
    assert report["counts"] == {
        "done": 2,
        "running": 1,
        "resumable": 2,
        "failed": 1,
        "not started": 1,
    }
    assert report["warnings"] == []

    done = expected["done"]
    assert by_seed[0]["record_status"] == "completed"
    assert by_seed[0]["hypervolume"] == pytest.approx(done.hypervolume.value, rel=1e-12)
    assert done.hypervolume.value > 0
    assert by_seed[0]["detail"].startswith(f"completed, HV {done.hypervolume.value:.4g}")

    running = expected["running"]
    assert by_seed[1]["mlflow_run_id"] == running.info.run_id
    started = datetime.fromisoformat(by_seed[1]["running_since"])
    assert started.timestamp() == running.info.start_time // 1000  # whole seconds, UTC
    since = started.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert by_seed[1]["detail"] == (
        f"MLflow run {running.info.run_id} since {since}, checkpoint at step 10 of about 50"
    )

    # step 40 after 40% of the budget: 40 / 0.4 = 100 steps in all
    assert (by_seed[2]["step"], by_seed[2]["estimated_steps"]) == (40, 100)
    assert by_seed[2]["budget_spent_fraction"] == pytest.approx(0.4)
    assert by_seed[2]["detail"] == (
        "at step 40 of about 100, 40% of the flops budget spent "
        "(checkpoint 2026-12-07 03:00:00 UTC)"
    )

    assert by_seed[3]["error"] == "RuntimeError: CUDA out of memory on [red]cuda:0[/]"
    assert by_seed[3]["detail"] == by_seed[3]["error"]
    assert by_seed[4]["detail"] == ""
    assert by_seed[5]["record_status"] == "diverged" and by_seed[5]["hypervolume"] is None
    assert by_seed[5]["detail"] == "diverged, no HV, 7 steps"
    orphan_id = expected["orphan"].info.run_id
    assert (by_seed[6]["step"], by_seed[6]["estimated_steps"]) == (30, 60)
    assert by_seed[6]["mlflow_run_id"] == orphan_id
    assert by_seed[6]["detail"] == (
        "at step 30 of about 60, 50% of the flops budget spent (checkpoint 2026-12-07 03:00:00 UTC)"
        f"; process {expected['dead_pid']} ended"
    )


def test_table_and_summary_line(folder) -> None:
    suite_file, results, _ = folder
    outcome = _invoke("status", str(suite_file), "--results-dir", str(results), columns=200)
    assert outcome.exit_code == 0, outcome.output
    lines = outcome.stdout.splitlines()
    assert lines[-1] == (
        "suite tiny: 2 done, 1 running, 2 resumable, 1 failed, 1 not started (7 runs)"
    )
    rows = [line for line in lines if "synthetic" in line]
    assert len(rows) == 7
    for state, count in (("done", 2), ("running", 1), ("resumable", 2), ("failed", 1)):
        assert sum(state in row for row in rows) == count, state
    assert sum("not started" in row for row in rows) == 1
    assert sum("out of memory on [red]cuda:0[/]" in row for row in rows) == 1  # not markup


def test_status_changes_nothing(folder, tmp_path: Path) -> None:
    """Byte-identical files and no new path, even with a damaged Parquet file (one warning
    line, not moved to quarantine) and read through the default and an explicit SQLite URI."""
    suite_file, recorded, _ = folder
    results = tmp_path / "results"
    shutil.copytree(recorded, results)
    damaged = results / "runs" / "0000damaged00000.parquet"
    damaged.write_bytes(b"PAR1 not really parquet")
    before = _snapshot(results)
    outcomes = [
        _invoke("status", str(suite_file), "--results-dir", str(results)),
        _invoke("status", str(suite_file), "--results-dir", str(results), "--json"),
        _invoke(
            "status",
            str(suite_file),
            "--results-dir",
            str(results),
            "--tracking-uri",
            f"sqlite:///{results / 'mlflow.db'}",
        ),
    ]
    for outcome in outcomes:
        assert outcome.exit_code == 0, outcome.output
        warnings = outcome.stderr.splitlines()
        assert len(warnings) == 1 and warnings[0].startswith(
            f"mtlbench: warning: {damaged}: unreadable, skipped ("
        )
    assert _snapshot(results) == before  # same paths (none new), same bytes


def test_absent_results_folder_is_not_created(tmp_path: Path) -> None:
    suite_file = tmp_path / "tiny.yaml"
    suite_file.write_text(yaml.safe_dump(_suite([0, 1])))
    results = tmp_path / "never-run"
    outcome = _invoke("status", str(suite_file), "--results-dir", str(results), "--json")
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout)
    assert [run["state"] for run in report["runs"]] == ["not started", "not started"]
    assert not results.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.yaml"], "mtlbench: error: missing.yaml: no such suite file"),
        (["{suite}", "--tracking-uri", "file:///tmp/mlruns"], "mtlbench: error: --tracking-uri: "),
        (
            ["{suite}", "--tracking-uri", "http://127.0.0.1:1"],
            "mtlbench: error: http://127.0.0.1:1: no MLflow tracking server answers",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    suite_file = tmp_path / "tiny.yaml"
    suite_file.write_text(yaml.safe_dump(_suite([0])))
    outcome = _invoke(
        "status", *[a.format(suite=suite_file) for a in args], "--results-dir", str(tmp_path / "r")
    )
    assert outcome.exit_code == 2
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert outcome.stdout == ""


@pytest.mark.parametrize(
    ("step", "spent", "limit", "max_steps", "expected"),
    [
        (40, 80.0, 200.0, 100_000, 100),  # 40 steps per 80 units: 200 units pay for 100
        (30, 10.0, 100.0, 150, 150),  # the budget would pay for 300: max_steps ends it first
        (5, 0.0, 100.0, 500, 500),  # nothing spent yet: only max_steps is known
        (50, 120.0, 100.0, 500, 50),  # budget overspent (the last step): never below the step
    ],
)
def test_estimated_steps(
    step: int, spent: float, limit: float, max_steps: int, expected: int
) -> None:
    checkpoint = Checkpoint(step, "seconds", limit, spent, max_steps, "", "")
    assert checkpoint.estimated_steps == expected


def test_newest_checkpoint_needs_both_files_and_every_field(tmp_path: Path) -> None:
    assert newest_checkpoint(tmp_path / "absent") is None
    _write_checkpoint(tmp_path, 10, _sidecar(10, 1.0))
    _write_checkpoint(tmp_path, 20, _sidecar(20, 2.0, max_steps="many"))  # wrong type
    _write_checkpoint(tmp_path, 30, {k: v for k, v in _sidecar(30, 3.0).items() if k != "step"})
    _write_checkpoint(tmp_path, 40, "[1, 2]")  # JSON, not an object
    _write_checkpoint(tmp_path, 50, _sidecar(50, 5.0))
    (tmp_path / "step_00000050.pt").unlink()  # the sidecar of a .pt that is gone
    found = newest_checkpoint(tmp_path)
    assert found is not None and (found.step, found.budget_spent) == (10, 1.0)
    _write_checkpoint(tmp_path, 200, _sidecar(200, 20.0))  # more digits still sorts by step
    assert newest_checkpoint(tmp_path).step == 200  # type: ignore[union-attr]


def test_a_writer_is_judged_ended_only_on_this_machine() -> None:
    finished = subprocess.Popen(["sleep", "0"])
    finished.wait()
    here = Checkpoint(1, "flops", 1.0, 0.5, 10, "", "", platform.node(), finished.pid)
    assert here.writer_has_ended()
    assert not dataclasses.replace(here, pid=os.getpid()).writer_has_ended()  # alive
    assert not dataclasses.replace(here, hostname=f"not-{platform.node()}").writer_has_ended()
    assert not dataclasses.replace(here, pid=None).writer_has_ended()  # not recorded
