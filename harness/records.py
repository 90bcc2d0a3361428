"""The record types of the result store: one dataclass per Parquet table, the schema derived from it.

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
