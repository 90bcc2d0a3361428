"""The study's Parquet table: one row per (method, point), its schema and atomic writes.

``<results_dir>/scaling/<study>.parquet``; ``point_key`` hashes everything that determines a
row's numbers, so a rerun reuses the rows already measured with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from mtlbench.harness.config import MethodEntry
from mtlbench.harness.scaling.config import ScalingStudy
from mtlbench.harness.scaling.points import SYNTHETIC, StudyPoint, dataset_params

SCHEMA = pa.schema(
    [
        ("study", pa.string()),
        ("point_key", pa.string()),
        ("axis", pa.string()),
        ("axis_value", pa.float64()),
        ("method", pa.string()),
        ("method_label", pa.string()),
        ("method_params", pa.string()),
        ("engine", pa.string()),
        ("engine_options", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("dataset", pa.string()),
        ("dataset_params", pa.string()),
        ("stand_in", pa.bool_()),
        ("stand_in_reason", pa.string()),
        ("input_shape", pa.string()),
        ("parameter_count", pa.int64()),
        ("task_count", pa.int64()),
        ("tasks", pa.int64()),
        ("width", pa.int64()),
        ("workers", pa.int64()),
        ("shared_parameters", pa.int64()),
        ("method_parameters", pa.int64()),
        ("batch_size", pa.int64()),
        ("step_seconds", pa.float64()),
        ("step_seconds_repeats", pa.list_(pa.float64())),
        ("flops_per_step", pa.float64()),
        ("ew_step_flops", pa.float64()),
        ("samples_per_second", pa.float64()),
        ("peak_memory_bytes", pa.int64()),
        ("step_memory_bytes", pa.int64()),
        ("memory_measure", pa.string()),
        ("hv_budget_flops", pa.float64()),
        ("hypervolume", pa.float64()),
        ("hv_steps", pa.int64()),
        ("hv_status", pa.string()),
        ("hv_error", pa.string()),
        ("device", pa.string()),
        ("device_name", pa.string()),
        ("torch_threads", pa.int64()),
        ("torch_version", pa.string()),
        ("package_version", pa.string()),
        ("started_at", pa.string()),
    ]
)
COST_COLUMNS = (
    "step_seconds",
    "flops_per_step",
    "peak_memory_bytes",
    "step_memory_bytes",
    "samples_per_second",
)


def table_path(results_dir: Path, study_name: str) -> Path:
    """Where a study's table lies under a results folder."""
    return Path(results_dir) / "scaling" / f"{study_name}.parquet"


def read_table(path: Path) -> list[dict[str, Any]]:
    """The rows of a study table ([] if absent). Columns a table written before they existed
    lacks read as None, except ``dataset``: those rows were all on ``synthetic``."""
    if not path.is_file():
        return []
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        for name in SCHEMA.names:
            row.setdefault(name, None)
        row["dataset"] = row["dataset"] or SYNTHETIC
    return rows


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write the study's rows atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    full = [{name: row.get(name) for name in SCHEMA.names} for row in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=SCHEMA), temporary)
    os.replace(temporary, path)


def point_key(
    study: ScalingStudy, entry: MethodEntry, point: StudyPoint, device: torch.device
) -> str:
    """Hash of everything that determines a point's numbers (not the study's name)."""
    identity: dict[str, Any] = {
        "entry": entry.model_dump(mode="json"),
        "point": [point.axis, point.axis_value, point.tasks, point.width, point.workers],
        "problem": study.problem.model_dump(mode="json"),
        "timing": study.timing.model_dump(mode="json"),
        "budget": study.budget.model_dump(mode="json") if study.budget else None,
        "training": study.training.model_dump(mode="json"),
        "workers": study.workers.model_dump(mode="json") if point.axis == "workers" else None,
        "seed": study.seed,
        "device": str(device),
    }
    if point.axis == "datasets":  # the numeric axes' keys stay those of earlier versions
        from mtlbench.datasets._files import DATA_ROOT_ENV

        params = dataset_params(study, point)
        # where the files are looked for: a point measured on stand-in inputs is measured again
        # once a data root is given
        root = params.get("data_root") or os.environ.get(DATA_ROOT_ENV)
        identity["dataset"] = [point.dataset, params, str(root or "")]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
