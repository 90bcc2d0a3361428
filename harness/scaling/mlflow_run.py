"""The study's MLflow run: every cost per (axis, method) with step = the axis's x, the fitted
log-log slopes, the study's settings as parameters and its Parquet table as an artifact."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtlbench.harness.scaling.config import ScalingStudy
from mtlbench.harness.scaling.points import axis_x
from mtlbench.harness.scaling.power_law import PowerLawFit, fit_power_law
from mtlbench.harness.scaling.table import COST_COLUMNS


def slopes(rows: list[dict[str, Any]]) -> Iterator[tuple[str, str, str, PowerLawFit]]:
    """(axis, method label, cost column, fit of cost vs axis value) for every curve of ``rows``.

    x is :func:`axis_x`: on ``shared_parameters`` the actual shared-parameter count, on
    ``datasets`` each model's whole parameter count."""
    curves: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "ok":
            curves.setdefault((row["axis"], row["method_label"]), []).append(row)
    for (axis, label), points in sorted(curves.items()):
        x = [axis_x(p) for p in points]
        for column in COST_COLUMNS:
            yield axis, label, column, fit_power_law(x, [p[column] for p in points])


def metric_name(row: dict[str, Any], column: str) -> str:
    """``<axis>.<method>.<column>``; on the datasets axis ``datasets.<dataset>.<method>.<column>``
    (its step, the parameter count, would not tell two datasets of one size apart)."""
    axis = row["axis"] if row["axis"] != "datasets" else f"datasets.{row['dataset']}"
    return f"{axis}.{row['method_label']}.{column}"


def study_metrics(rows: list[dict[str, Any]], timestamp_ms: int) -> list[Any]:
    """MLflow ``Metric`` entities: each finite cost and hypervolume of the ``ok`` rows (step =
    the row's x, :func:`axis_x`), then each finite fitted slope (step 0)."""
    from mlflow.entities import Metric

    metrics = []
    for row in rows:
        if row["status"] != "ok":
            continue
        step = int(axis_x(row))
        for column in (*COST_COLUMNS, "hypervolume"):
            value = row.get(column)
            if value is not None and math.isfinite(value):
                metrics.append(Metric(metric_name(row, column), float(value), timestamp_ms, step))
    for axis, label, column, fit in slopes(rows):
        if math.isfinite(fit.slope):
            metrics.append(Metric(f"{axis}.{label}.slope.{column}", fit.slope, timestamp_ms, 0))
    return metrics


def log_study(
    study: ScalingStudy,
    rows: list[dict[str, Any]],
    notes: list[str],
    results_dir: Path,
    tracking_uri: str | None,
    table: Path,
) -> str:
    """One MLflow run for the study: a metric per (axis, method, quantity) with step = the axis
    value, the fitted slopes, the study's settings as parameters and its table as an artifact."""
    from mlflow.entities import Param, RunTag
    from mtlbench.harness.tracking import BATCH_LIMIT, default_tracking_uri, experiment_id_for
    from mtlbench.harness.tracking_store import open_tracking_client

    client = open_tracking_client(
        tracking_uri or study.output.tracking_uri or default_tracking_uri(results_dir), results_dir
    )
    experiment_id = experiment_id_for(client, study.name, results_dir)
    run = client.create_run(
        experiment_id,
        run_name=f"scaling:{study.name}",
        tags={"mtlbench.kind": "scaling", "mtlbench.study": study.name},
    )
    run_id = run.info.run_id
    metrics = study_metrics(rows, int(time.time() * 1000))
    for start in range(0, len(metrics), BATCH_LIMIT):
        client.log_batch(run_id, metrics=metrics[start : start + BATCH_LIMIT])
    settings = {
        "axes": study.axes.model_dump_json(),
        "base": study.base.model_dump_json(),
        "problem": study.problem.model_dump_json(),
        "dataset_params": json.dumps(study.dataset_params, sort_keys=True, default=str),
        "timing": study.timing.model_dump_json(),
        "budget": study.budget.model_dump_json() if study.budget else "none",
        "training": study.training.model_dump_json(),
        "device": study.device,
        "methods": ",".join(e.label or e.name for e in study.method_entries()),
    }
    client.log_batch(
        run_id,
        params=[Param(k, v[:500]) for k, v in settings.items()],
        tags=[RunTag("mtlbench.notes", " | ".join(notes)[:5000])] if notes else [],
    )
    client.log_artifact(run_id, str(table))
    failed = any(row["status"] == "failed" for row in rows)
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
    return run_id
