"""The record types of the result store: one dataclass per Parquet table, its schema derived
from it.

``RunRecord`` is one row of ``results/runs/`` (one per run and solution); ``EvaluationRecord`` is
one row of ``results/evaluations/`` (one per run and evaluation during training, the anytime
curve). Each field's annotation gives its Arrow type (``str`` → string, ``float`` → float64,
``list[float]`` → list<float64>, ...). A field annotated ``HypervolumeResult`` is flattened into
one column per field of that dataclass (``value`` → ``hypervolume``, any other ``x`` →
``hv_x``), so a field added to :class:`~mtlbench.harness.metrics.HypervolumeResult` becomes a
column without touching this module.

Rows travel as plain dicts (what Parquet gives back); :func:`to_row` turns a record into one and
:func:`schema_of` gives the table's schema. Files written before a column existed read back with
that column null.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from mtlbench.harness.metrics import HypervolumeResult

Row = dict[str, Any]
HV_FIELD = "hv"  # the record field flattened into the hypervolume columns

_SCALARS: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
}


@dataclass
class RunRecord:
    """One (run, solution) row. Lists marked (T,) hold one value per task, in ``task_names`` order.

    Selection (harness/selection.py): ``selected`` marks the solution reported for the run,
    chosen by ``selection_rule`` on validation numbers only; ``val_delta_m_pct`` is the
    validation Δm% that rule minimises; ``delta_m_pct`` the solution's test Δm% and
    ``run_delta_m_pct`` the test Δm% of the selected solution (reported, never used to choose).
    ``delta_m_reason`` says why a Δm% is NaN (empty when it is defined).
    """

    run_hash: str
    suite: str
    method: str
    method_label: str
    method_params: str  # JSON
    is_baseline: bool
    engine: str
    dataset: str
    dataset_params: str  # JSON
    seed: int
    budget_kind: str
    budget_limit: float
    budget_spent: float = math.nan
    budget_spent_flops: float = math.nan
    training: str = "{}"  # JSON
    scoring: str = ""
    scored_step: int = 0
    device: str = ""
    status: str = ""
    stop_reason: str = ""
    error: str = ""
    steps: int = 0
    train_seconds: float = math.nan
    evaluation_seconds: float = math.nan  # uncharged evaluation during and after training
    wall_seconds: float = math.nan
    peak_memory_bytes: int = 0
    memory_measure: str = ""
    engine_stats: str = "{}"  # JSON of the engine's report (e.g. ray_sharded's bytes)
    hv: HypervolumeResult | None = None  # flattened: hypervolume, hv_method, hv_<field>...
    hv_reference: list[float] = field(default_factory=list)
    task_names: list[str] = field(default_factory=list)
    higher_is_better: list[bool] = field(default_factory=list)
    solution_index: int = -1  # -1: the placeholder row of a run with no scored solution
    solution_label: str = ""
    coordinates: list[float] | None = None
    on_front: bool = False
    val_losses: list[float] | None = None  # (T,)
    val_metrics: list[float] | None = None  # (T,)
    val_objectives: list[float] | None = None  # (T,)
    test_losses: list[float] | None = None  # (T,)
    test_metrics: list[float] | None = None  # (T,)
    test_objectives: list[float] | None = None  # (T,)
    selected: bool = False
    selection_rule: str = ""
    val_delta_m_pct: float = math.nan
    delta_m_pct: float = math.nan
    run_delta_m_pct: float = math.nan
    delta_m_reason: str = ""
    delta_m_baseline_runs: list[str] = field(default_factory=list)
    mlflow_run_id: str = ""
    package_version: str = ""
    torch_version: str = ""
    environment: str = "{}"  # JSON
    started_at: str = ""


@dataclass
class EvaluationRecord:
    """One evaluation during training (the anytime curve): the front's hypervolume on
    validation and on test against the budget spent so far. ``budget_spent`` is in the budget's
    unit (FLOPs or seconds), ``budget_fraction`` = spent / limit; the last row of a run is its
    final state."""

    run_hash: str
    suite: str
    method: str
    method_label: str
    is_baseline: bool
    dataset: str
    seed: int
    budget_kind: str
    budget_limit: float
    step: int
    budget_spent: float
    budget_spent_flops: float
    budget_fraction: float
    val_hypervolume: float
    test_hypervolume: float
    hv_method: str
    num_solutions: int
    mlflow_run_id: str = ""


# ---- column descriptions (the docs' results-schema page is generated from them) ------------
_IDENTITY_COLUMNS = {
    "run_hash": "content hash of what determines the run's numbers (method + params, engine, "
    "dataset + params, seed, budget, training protocol, scoring, device): the run's key",
    "suite": "name of the suite that ran it",
    "method": "registered method name",
    "method_label": "the suite entry's `label` (the method name when none was given)",
    "is_baseline": "true for runs of the Δm% reference method (`single_task`)",
    "dataset": "registered dataset name",
    "seed": "the run's seed (0 ≤ seed < 2³²): model init, batch order, dropout",
    "budget_kind": "`flops` or `seconds`",
    "budget_limit": "the run's budget, in the unit of `budget_kind` (FLOPs or seconds)",
    "mlflow_run_id": "id of the run's MLflow run (empty when it was not tracked)",
}
_RUN_COLUMNS = {
    "method_params": "the method's validated parameters, JSON",
    "engine": "gradient engine name (`loop`, `batched`, `representation`, `ray_sharded`, ...)",
    "dataset_params": "the dataset's parameters, JSON",
    "budget_spent": "budget spent when training ended, in the unit of `budget_kind`",
    "budget_spent_flops": "FLOPs charged to the budget (measured per pass kind), whatever the kind",
    "training": "the training protocol (batch size, optimizer, lr, intervals), JSON",
    "scoring": "`final` (last checkpoint) or `best_val` (best validation hypervolume)",
    "scored_step": "training step of the scored state",
    "device": "device the run trained on (`cpu`, `cuda`, `cuda:1`)",
    "status": "`completed`, `diverged` or `failed`",
    "stop_reason": "`budget`, `max_steps`, `exploration_finished`, `diverged` or `error`",
    "error": "first lines of the error of a failed run, or why a run diverged (empty otherwise)",
    "steps": "training steps taken",
    "train_seconds": "wall seconds spent training (evaluation excluded)",
    "evaluation_seconds": "wall seconds of the uncharged evaluations during and after training",
    "wall_seconds": "wall seconds of the whole run",
    "peak_memory_bytes": "peak memory in bytes, measured as `memory_measure` says",
    "memory_measure": "`cuda_max_allocated` (GPU) or `process_max_rss` (the worker's RSS)",
    "engine_stats": "the engine's report, JSON (e.g. `ray_sharded`'s bytes per step by kind, "
    "workers, transport)",
    "hypervolume": "test hypervolume of the run's front (the estimate when `hv_method` is `fpras`)",
    "hv_method": "`exact`, `exact-product`, `exact-inclusion-exclusion` or `fpras` (estimated)",
    "hv_epsilon": "relative error bound ε of the hypervolume (0 when exact)",
    "hv_delta": "probability δ that the ε bound fails (0 when exact)",
    "hv_ci_low": "lower end of the interval holding the hypervolume with probability ≥ 1 − δ",
    "hv_ci_high": "upper end of that interval",
    "hv_standard_error": "empirical standard error of the estimate (0 when exact), for information",
    "hv_samples": "trials of the estimator (0 when exact)",
    "hv_reference": "(T,) the hypervolume's reference point, in objective units",
    "task_names": "(T,) the tasks, in the order of every per-task list",
    "higher_is_better": "(T,) direction of each task's metric",
    "solution_index": "index of the solution in the method's `solutions()` (-1: the placeholder "
    "row of a run with no scored solution)",
    "solution_label": "the solution's label (e.g. its preference or α)",
    "coordinates": "(T,) the simplex point or preference that produced the solution, if any",
    "on_front": "true when no other solution of the run dominates it (test objectives)",
    "val_losses": "(T,) mean validation loss per task",
    "val_metrics": "(T,) validation metric per task (accuracy, MAE in the dataset's units, ...)",
    "val_objectives": "(T,) validation objectives, minimized (`1 − accuracy`, MAE, ...)",
    "test_losses": "(T,) mean test loss per task",
    "test_metrics": "(T,) test metric per task",
    "test_objectives": "(T,) test objectives, minimized: the coordinates of the front",
    "selected": "true for the solution reported for the run (chosen on validation numbers only)",
    "selection_rule": "the rule that chose `selected` (lowest validation Δm%, or lowest mean "
    "validation objective without a baseline)",
    "val_delta_m_pct": "validation Δm% (percent) against the baselines' validation metrics",
    "delta_m_pct": "the solution's test Δm% (percent; negative is better)",
    "run_delta_m_pct": "test Δm% (percent) of the run's selected solution (reported only)",
    "delta_m_reason": "why the Δm% is NaN (empty when it is defined)",
    "delta_m_baseline_runs": "run hashes of the baseline runs the Δm% compares with",
    "package_version": "mtlbench version and git commit of the code that produced the row",
    "torch_version": "torch version of the worker",
    "environment": "host, device, library versions and thread counts, JSON",
    "started_at": "when the run started (ISO 8601, UTC)",
}
_EVALUATION_COLUMNS = {
    "step": "training step of the evaluation",
    "budget_spent": "budget spent at the evaluation, in the unit of `budget_kind`",
    "budget_spent_flops": "FLOPs charged at the evaluation",
    "budget_fraction": "`budget_spent / budget_limit` (0 to 1)",
    "val_hypervolume": "hypervolume of the solutions' front on the validation split",
    "test_hypervolume": "hypervolume of the solutions' front on the test split",
    "hv_method": "how the hypervolumes were computed (as in the run table)",
    "num_solutions": "solutions evaluated",
}
COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "RunRecord": {**_IDENTITY_COLUMNS, **_RUN_COLUMNS},
    "EvaluationRecord": {**_IDENTITY_COLUMNS, **_EVALUATION_COLUMNS},
}
"""Per record type (class name), the meaning and unit of every column of its Parquet schema.
``tests/test_docs.py`` checks that they name exactly the schema's columns."""


# ---- schema derivation -----------------------------------------------------------------------
def _arrow_type(hint: Any) -> pa.DataType:
    """The Arrow type of a field annotation (``X | None`` is X, nullable)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return _arrow_type(inner[0])
        return pa.string()  # a true union is stored as JSON
    if origin in (list, tuple):
        arguments = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return pa.list_(_arrow_type(arguments[0]) if arguments else pa.float64())
    if hint in _SCALARS:
        return _SCALARS[hint]
    return pa.string()  # dicts and anything else: JSON


def _hv_columns() -> list[tuple[str, pa.DataType, str]]:
    """(column, type, HypervolumeResult field) for every field of the hypervolume result."""
    hints = typing.get_type_hints(HypervolumeResult)
    return [
        (
            "hypervolume" if f.name == "value" else f"hv_{f.name}",
            _arrow_type(hints[f.name]),
            f.name,
        )
        for f in dataclasses.fields(HypervolumeResult)
    ]


def schema_of(record_type: type) -> pa.Schema:
    """The Parquet schema of a record dataclass (the hypervolume field flattened)."""
    hints = typing.get_type_hints(record_type)
    columns: list[tuple[str, pa.DataType]] = []
    for f in dataclasses.fields(record_type):
        if f.name == HV_FIELD:
            columns += [(name, arrow) for name, arrow, _ in _hv_columns()]
        else:
            columns.append((f.name, _arrow_type(hints[f.name])))
    return pa.schema(columns)


def hypervolume_columns(result: HypervolumeResult | None) -> Row:
    """The flattened hypervolume columns of ``result`` (NaN / empty when there is none)."""
    values: Row = {}
    for name, arrow, attribute in _hv_columns():
        value = getattr(result, attribute) if result is not None else None
        if value is None and result is None:
            value = (
                math.nan if pa.types.is_floating(arrow) else ("" if arrow == pa.string() else None)
            )
        elif isinstance(value, tuple):
            value = list(value)
        elif arrow == pa.string() and not isinstance(value, str):
            value = json.dumps(value)
        values[name] = value
    return values


def to_row(record: RunRecord | EvaluationRecord) -> Row:
    """The record as a flat dict, one key per column of its schema."""
    row: Row = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name == HV_FIELD:
            row.update(hypervolume_columns(value))
        else:
            row[f.name] = value
    return row


def complete_row(row: Row, schema: pa.Schema) -> Row:
    """``row`` with exactly the schema's columns (missing ones None); unknown keys are an error."""
    unknown = set(row) - set(schema.names)
    if unknown:
        raise KeyError(f"columns not in the record type: {sorted(unknown)}")
    return {name: row.get(name) for name in schema.names}


RUN_SCHEMA = schema_of(RunRecord)
EVALUATION_SCHEMA = schema_of(EvaluationRecord)
