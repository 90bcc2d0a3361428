"""Scaling studies: how each method's cost and quality change along one axis at a time.

A study (``study: scaling`` YAML, run by ``mtlbench scale``; the page ``docs/scaling.md``) sweeps
one axis while the others stay at the study's ``base`` point:

- ``shared_parameters``: target encoder sizes of the ``synthetic`` dataset's MLP; the width is
  solved for each (the recorded value is the actual count);
- ``tasks``: T, on ``synthetic``;
- ``workers``: K, passed as an engine option (``workers.engine`` / ``workers.option``, the
  Ray-sharded engine's ``actors`` by default); skipped, with a note, when that engine is absent;
- ``datasets``: registered datasets, each with its own default model and tasks. Where a
  dataset's files are absent, the costs are measured on stand-in inputs of the real shapes
  (``stand_in`` true) and no hypervolume is computed.

For every (method, point) it records, from one process on one device: ``step_seconds`` (median
wall time of ``timing.repeats`` steps on one fixed batch, after ``timing.warmup`` steps, the
device synchronised around each), ``flops_per_step`` (the FLOPs the budget was charged per step),
``samples_per_second``, ``peak_memory_bytes`` / ``step_memory_bytes`` (:class:`PeakMemory`), the
model's ``parameter_count`` and ``task_count``, and ``hypervolume`` after a short trainer run at a
fixed budget (``budget.ew_steps`` EW steps' FLOPs at that point, or fixed ``budget.flops``).

Modules: ``config`` (the YAML), ``points`` (the axes' points), ``power_law`` (log-log fits),
``memory`` (peak memory), ``measure`` (one point), ``table`` (the Parquet table),
``mlflow_run`` (the MLflow run), ``study`` (running a study), ``report`` and ``report_plots``
(the leaderboard's scaling page). Records: ``<results_dir>/scaling/<study>.parquet``, rewritten
atomically after every point (a rerun reuses the points already measured with the same
settings); one MLflow run per invocation (experiment = study name).
"""

from mtlbench.harness.scaling.config import (
    AXES,
    NUMERIC_AXES,
    AxesConfig,
    AxisName,
    BasePoint,
    ProblemConfig,
    ScalingStudy,
    StudyBudget,
    TimingConfig,
    WorkersConfig,
    load_study,
    parse_study,
)
from mtlbench.harness.scaling.measure import (
    UNLIMITED_FLOPS,
    PointInputs,
    engine_for,
    hypervolume_point,
    measure_point,
    point_inputs,
)
from mtlbench.harness.scaling.memory import PeakMemory
from mtlbench.harness.scaling.mlflow_run import log_study, slopes
from mtlbench.harness.scaling.points import (
    DATASET,
    StudyPoint,
    axis_x,
    dataset_params,
    study_points,
)
from mtlbench.harness.scaling.power_law import PowerLawFit, fit_power_law
from mtlbench.harness.scaling.report import build_scaling_page
from mtlbench.harness.scaling.study import StudyOutcome, describe_row, run_study
from mtlbench.harness.scaling.table import (
    COST_COLUMNS,
    SCHEMA,
    point_key,
    read_table,
    table_path,
    write_table,
)

__all__ = [
    "AXES",
    "COST_COLUMNS",
    "DATASET",
    "NUMERIC_AXES",
    "SCHEMA",
    "UNLIMITED_FLOPS",
    "AxesConfig",
    "AxisName",
    "BasePoint",
    "PeakMemory",
    "PointInputs",
    "PowerLawFit",
    "ProblemConfig",
    "ScalingStudy",
    "StudyBudget",
    "StudyOutcome",
    "StudyPoint",
    "TimingConfig",
    "WorkersConfig",
    "axis_x",
    "build_scaling_page",
    "dataset_params",
    "describe_row",
    "engine_for",
    "fit_power_law",
    "hypervolume_point",
    "load_study",
    "log_study",
    "measure_point",
    "parse_study",
    "point_inputs",
    "point_key",
    "read_table",
    "run_study",
    "slopes",
    "study_points",
    "table_path",
    "write_table",
]
