"""Running a study: every (point, method) not already recorded is measured, written to the
Parquet table after each point, and the whole study logged as one MLflow run."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mtlbench.harness.config import MethodEntry
from mtlbench.harness.scaling.config import ScalingStudy
from mtlbench.harness.scaling.measure import engine_for, hypervolume_point, measure_point
from mtlbench.harness.scaling.mlflow_run import log_study
from mtlbench.harness.scaling.points import StudyPoint, study_points
from mtlbench.harness.scaling.table import point_key, read_table, table_path, write_table

Row = dict[str, Any]


@dataclass
class StudyOutcome:
    """table: the Parquet file; rows: this invocation's rows; measured / reused: how many rows
    were measured now or taken from the table; notes: skipped axes and why; mlflow_run_id."""

    table: Path
    rows: list[Row]
    measured: int
    reused: int
    notes: list[str]
    mlflow_run_id: str


def _skip_reason(study: ScalingStudy, entry: MethodEntry, point: StudyPoint) -> str:
    from mtlbench.harness.gradients import engine_names

    engine, _ = engine_for(study, entry, point)
    if engine not in engine_names():
        return f"engine {engine!r} is not available (known: {', '.join(engine_names())})"
    if point.axis == "workers":
        try:
            from mtlbench.harness.gradients import get_engine

            get_engine(engine)
        except ImportError as error:
            return f"engine {engine!r} cannot be loaded: {error}"
    return ""


def _identity_row(
    study: ScalingStudy,
    entry: MethodEntry,
    point: StudyPoint,
    key: str,
    device: torch.device,
    env: dict[str, str],
) -> Row:
    """The columns a row has before it is measured (what, where, with which software)."""
    return {
        "study": study.name,
        "point_key": key,
        "axis": point.axis,
        "axis_value": float(point.axis_value),
        "method": entry.name,
        "method_label": entry.label or entry.name,
        "dataset": point.dataset,
        "tasks": point.tasks,
        "width": point.width,
        "workers": point.workers,
        "batch_size": study.training.batch_size,
        "device": str(device),
        "device_name": env.get("device_name", ""),
        "torch_threads": torch.get_num_threads(),
        "torch_version": env.get("torch", ""),
        "package_version": env.get("mtlbench_version", ""),
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "error": "",
    }


def _measure_row(
    study: ScalingStudy, entry: MethodEntry, point: StudyPoint, device: torch.device, row: Row
) -> None:
    """Fill ``row`` with the point's costs and, on real data with a budget, its hypervolume.
    A failure is recorded in the row (status ``failed``, the error's first line)."""
    try:
        row.update(measure_point(study, entry, point, device))
        if study.budget is not None and not row["stand_in"]:
            row.update(hypervolume_point(study, entry, point, row))
        row["status"] = "ok"
    except Exception as error:  # a failing point is recorded, the study goes on
        row.update(status="failed", error=f"{type(error).__name__}: {error}".splitlines()[0])


def run_study(
    study: ScalingStudy,
    results_dir: Path | None = None,
    tracking_uri: str | None = None,
    log: Callable[[str], None] = print,
) -> StudyOutcome:
    """Measure every (method, point) not already recorded; write Parquet and one MLflow run."""
    from mtlbench.harness.trainer import environment, resolve_device

    results_dir = Path(results_dir or study.output.results_dir)
    device = resolve_device(study.device)
    env = environment(device)
    path = table_path(results_dir, study.name)
    existing = read_table(path)
    previous = {row["point_key"]: row for row in existing if row["status"] == "ok"}
    rows: list[Row] = []

    def save() -> None:  # this invocation's rows, plus earlier rows of points it did not visit
        visited = {row["point_key"] for row in rows}
        write_table(path, rows + [row for row in existing if row["point_key"] not in visited])

    notes: list[str] = []
    measured = reused = 0
    for point in study_points(study):
        for entry in study.method_entries():
            key = point_key(study, entry, point, device)
            if key in previous:
                rows.append(previous[key])
                reused += 1
                continue
            row = _identity_row(study, entry, point, key, device, env)
            reason = _skip_reason(study, entry, point)
            if reason:
                row.update(status="skipped", error=reason)
                note = f"{point.axis}: {reason}"
                if note not in notes:
                    notes.append(note)
                    log(f"skipped {note}")
                rows.append(row)
                continue
            _measure_row(study, entry, point, device, row)
            measured += 1
            rows.append(row)
            save()
            log(describe_row(row))
    save()
    run_id = log_study(study, rows, notes, results_dir, tracking_uri, path)
    return StudyOutcome(path, rows, measured, reused, notes, run_id)


def describe_row(row: Row) -> str:
    """One line for the console: the point, method and its costs (and HV when measured)."""
    where = f"{row['axis']}={row['axis_value']:.4g}"
    if row["axis"] == "datasets":
        where = f"datasets={row['dataset']}"
    head = f"{where} {row['method_label']}"
    if row["status"] != "ok":
        return f"{head}: {row['status']} {row['error']}"
    text = (
        f"{head}: P={row['shared_parameters']:,} step {1e3 * row['step_seconds']:.2f} ms, "
        f"{row['flops_per_step']:.3g} FLOPs, step memory {row['step_memory_bytes'] / 2**20:.1f} MiB"
    )
    if row["axis"] == "datasets":
        text = (
            f"{head}: {row['parameter_count']:,} parameters, T={row['task_count']}, "
            f"step {1e3 * row['step_seconds']:.2f} ms, {row['flops_per_step']:.3g} FLOPs, "
            f"peak memory {row['peak_memory_bytes'] / 2**20:.1f} MiB"
        )
    if row.get("stand_in"):
        text += ", stand-in inputs (files absent: no HV)"
    elif row.get("hv_status"):
        text += f", HV {row['hypervolume']:.4g} ({row['hv_steps']} steps, {row['hv_status']})"
    return text
