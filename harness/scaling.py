"""Scaling studies: how each method's cost and quality change along one axis at a time.

A study (``study: scaling`` YAML, run by ``mtlbench scale``) sweeps one axis while the others stay
at the study's ``base`` point, on the ``synthetic`` dataset (MLP encoder of any width, any number
of tasks; ``datasets/synthetic.py``):

- ``shared_parameters``: target encoder sizes; the MLP width is solved for each (the recorded
  value is the actual count);
- ``tasks``: T;
- ``workers``: K, passed as an engine option (``workers.engine`` / ``workers.option``, the
  Ray-sharded engine's ``actors`` by default); skipped, with a note, when that engine is absent.

For every (method, point) it records, from one process on one device:

- ``step_seconds``: median wall time of ``timing.repeats`` steps on one fixed batch (after
  ``timing.warmup`` steps; the device is synchronised around each step);
- ``flops_per_step``: FLOPs the budget was charged per step (the engine's FlopCounterMode-measured
  pass costs, so the same tally that budgets runs);
- ``samples_per_second``: batch size / ``step_seconds``;
- ``peak_memory_bytes`` and ``step_memory_bytes``: the peak over the timed steps, in total and
  above what was resident before them. CUDA: ``torch.cuda.max_memory_allocated``. CPU: the
  process's resident-set high-water mark (``VmHWM``), reset before the steps through
  ``/proc/self/clear_refs`` (Linux) after ``malloc_trim`` has returned freed heap pages (so
  memory freed by earlier points does not hide a later peak); elsewhere ``ru_maxrss``
  (monotonic, total only);
- ``hypervolume``: test hypervolume after a short run of the trainer at a fixed budget
  (``budget.ew_steps`` EW steps' FLOPs at that point, or fixed ``budget.flops``).

Records: one Parquet table per study, ``<results_dir>/scaling/<study>.parquet``, rewritten
atomically after every point (a rerun reuses the points already measured with the same settings);
one MLflow run per study invocation (experiment = study name), metrics named
``<axis>.<method>.<quantity>`` with step = the axis value, and the fitted log-log slopes.
``harness/scaling_report.py`` draws the leaderboard's scaling page from the Parquet tables.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import json
import math
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from mtlbench.harness.budget import Budget
from mtlbench.harness.config import (
    ConfigError,
    MethodEntry,
    OutputConfig,
    _first_error,
    _Strict,
    read_yaml,
)
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.registry import METHODS, UnknownName
from pydantic import Field, ValidationError, field_validator, model_validator

AxisName = Literal["shared_parameters", "tasks", "workers"]
AXES: tuple[str, ...] = ("shared_parameters", "tasks", "workers")
DATASET = "synthetic"
UNLIMITED_FLOPS = 1e30


class AxesConfig(_Strict):
    """The values swept on each axis (an axis left out is not swept)."""

    shared_parameters: list[float] | None = Field(None, min_length=1)
    tasks: list[int] | None = Field(None, min_length=1)
    workers: list[int] | None = Field(None, min_length=1)

    @field_validator("shared_parameters", "tasks", "workers")
    @classmethod
    def _positive_increasing(cls, values: list[float] | None) -> list[float] | None:
        if values is not None:
            if min(values) < 1:
                raise ValueError("values must be >= 1")
            if sorted(values) != list(values) or len(set(values)) != len(values):
                raise ValueError("values must be strictly increasing")
        return values


class BasePoint(_Strict):
    """Where the axes not being swept stay."""

    shared_parameters: float = Field(1e5, ge=1)
    tasks: int = Field(4, ge=1)
    workers: int = Field(1, ge=1)


class ProblemConfig(_Strict):
    """The ``synthetic`` dataset's fixed settings (see ``datasets/synthetic.py``)."""

    input_features: int = Field(64, ge=1)
    depth: int = Field(3, ge=1)
    classes: int = Field(4, ge=2)
    train_samples: int = Field(4096, gt=0)
    val_samples: int = Field(512, gt=0)
    test_samples: int = Field(1024, gt=0)
    label_noise: float = Field(0.1, ge=0, le=1)


class TimingConfig(_Strict):
    """warmup: untimed steps first; repeats: timed steps (the median is recorded)."""

    warmup: int = Field(2, ge=0)
    repeats: int = Field(7, ge=1)


class WorkersConfig(_Strict):
    """The engine the ``workers`` axis runs every method on, its option that takes K, and other
    options it passes (``options``; omitted on ``ray_sharded``: ``driver_share: false``, so the
    K actors are the K processes that compute per-task gradients)."""

    engine: str = "ray_sharded"
    option: str = "actors"
    options: dict[str, Any] | None = None

    def engine_options(self) -> dict[str, Any]:
        if self.options is not None:
            return dict(self.options)
        return {"driver_share": False} if self.engine == "ray_sharded" else {}


class StudyBudget(_Strict):
    """Budget of the short run that gives the hypervolume: ``ew_steps`` (that many EW steps'
    FLOPs at each point) or ``flops`` (fixed). Omit the budget to skip the hypervolume."""

    ew_steps: float | None = Field(None, gt=0)
    flops: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> StudyBudget:
        if (self.ew_steps is None) == (self.flops is None):
            raise ValueError("give exactly one of 'ew_steps' or 'flops'")
        return self


class ScalingStudy(_Strict):
    """A scaling study. methods: ``all`` (every registered method but the baselines, ``Method.is_baseline``) or a
    list of suite method entries (name, label, params, engine, engine_options)."""

    name: str = Field(min_length=1)
    study: Literal["scaling"] = "scaling"
    methods: Literal["all"] | list[MethodEntry] = "all"
    axes: AxesConfig
    base: BasePoint = BasePoint()
    problem: ProblemConfig = ProblemConfig()
    timing: TimingConfig = TimingConfig()
    budget: StudyBudget | None = None
    training: TrainingConfig = TrainingConfig()
    workers: WorkersConfig = WorkersConfig()
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _some_axis(self) -> ScalingStudy:
        if all(getattr(self.axes, axis) is None for axis in AXES):
            raise ValueError("axes: give at least one of shared_parameters, tasks, workers")
        return self

    def method_entries(self) -> list[MethodEntry]:
        if self.methods == "all":
            return [
                MethodEntry(name=name)
                for name in METHODS.names()
                if not METHODS.get(name).is_baseline
            ]
        return list(self.methods)


def parse_study(data: Any, source: str = "study") -> ScalingStudy:
    """Validate a loaded YAML mapping (including each method's own parameters)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the study must be a YAML mapping, got {type(data).__name__}")
    try:
        study = ScalingStudy.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_first_error(error)}") from None
    labels: set[str] = set()
    for index, entry in enumerate(study.method_entries()):
        field = f"methods[{index}]"
        try:
            method_cls = METHODS.get(entry.name)
            method_cls.Params.model_validate(entry.params)
        except UnknownName as error:
            raise ConfigError(f"{source}: {field}.name: {error}") from None
        except ValidationError as error:
            raise ConfigError(f"{source}: {_first_error(error, field + '.params')}") from None
        label = entry.label or entry.name
        if label in labels:
            raise ConfigError(f"{source}: {field}.label: {label!r} is used twice; give a label")
        labels.add(label)
    return study


def load_study(path: Path | str) -> ScalingStudy:
    """Read and validate a scaling-study YAML file."""
    return parse_study(read_yaml(path, "study"), str(path))


# ---- points ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyPoint:
    """One point of one axis: the synthetic problem's size and the worker count."""

    axis: str
    axis_value: float
    tasks: int
    width: int
    workers: int


def study_points(study: ScalingStudy) -> list[StudyPoint]:
    """Every point, axis by axis, each axis in increasing order (memory peaks then only grow)."""
    from mtlbench.datasets.synthetic import width_for_shared_parameters

    problem, base = study.problem, study.base

    def width(target: float) -> int:
        return width_for_shared_parameters(target, problem.input_features, problem.depth)

    points = []
    for value in study.axes.shared_parameters or []:
        points.append(
            StudyPoint("shared_parameters", value, base.tasks, width(value), base.workers)
        )
    for value in study.axes.tasks or []:
        points.append(
            StudyPoint(
                "tasks", float(value), int(value), width(base.shared_parameters), base.workers
            )
        )
    for value in study.axes.workers or []:
        points.append(
            StudyPoint(
                "workers", float(value), base.tasks, width(base.shared_parameters), int(value)
            )
        )
    return points


def dataset_params(study: ScalingStudy, point: StudyPoint) -> dict[str, Any]:
    return {
        **study.problem.model_dump(),
        "num_tasks": point.tasks,
        "width": point.width,
        "teacher_seed": study.seed,
    }


def axis_x(row: dict[str, Any]) -> float:
    """A row's x on its axis: the actual shared-parameter count on ``shared_parameters``
    (not the target), else the axis value."""
    return float(
        row["shared_parameters"] if row["axis"] == "shared_parameters" else row["axis_value"]
    )


# ---- power laws ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PowerLawFit:
    """y ≈ exp(intercept) · x^slope, fitted by least squares on (log x, log y)."""

    slope: float
    intercept: float
    points: int


def fit_power_law(x: Any, y: Any) -> PowerLawFit:
    """Least-squares line through (log x, log y) (``numpy.polyfit``, degree 1).

    Points with a non-finite or non-positive x or y are left out; fewer than two points left give
    NaN slope and intercept.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if keep.sum() < 2 or len(np.unique(x[keep])) < 2:
        return PowerLawFit(math.nan, math.nan, int(keep.sum()))
    slope, intercept = np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)
    return PowerLawFit(float(slope), float(intercept), int(keep.sum()))


# ---- memory ----------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory over a stretch of work on ``device``: ``reset()``, work, ``read()``.

    ``read`` returns (peak total bytes, peak bytes above the level at ``reset``); ``measure``
    names the source (``cuda_max_allocated`` | ``rss_high_water`` | ``process_max_rss``).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0
        self._libc = None
        if device.type == "cuda":
            self.measure = "cuda_max_allocated"
            return
        self.measure = "rss_high_water" if self._can_reset_rss() else "process_max_rss"
        try:  # glibc: malloc_trim(0) gives freed heap pages back before each measurement
            self._libc = ctypes.CDLL("libc.so.6")
            self._libc.malloc_trim  # noqa: B018 - raises AttributeError where it is missing
        except (OSError, AttributeError):
            self._libc = None

    @staticmethod
    def _can_reset_rss() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _status_bytes(field: str) -> int:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = int(torch.cuda.memory_allocated(self.device))
            return
        if self._libc is not None:
            self._libc.malloc_trim(0)
        if self.measure == "rss_high_water":
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.baseline = self._status_bytes("VmRSS")
        else:
            self.baseline = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def read(self) -> tuple[int, int]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = int(torch.cuda.max_memory_allocated(self.device))
        elif self.measure == "rss_high_water":
            peak = self._status_bytes("VmHWM")
        else:
            peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        return peak, max(peak - self.baseline, 0)


# ---- one (method, point) ---------------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _engine_for(
    study: ScalingStudy, entry: MethodEntry, point: StudyPoint
) -> tuple[str, dict[str, Any]]:
    method_cls = METHODS.get(entry.name)
    engine = entry.engine or method_cls.default_engine
    options = dict(entry.engine_options)
    if point.axis == "workers":
        engine = study.workers.engine
        options.update(study.workers.engine_options())
        options[study.workers.option] = point.workers
    return engine, options


def measure_point(
    study: ScalingStudy, entry: MethodEntry, point: StudyPoint, device: torch.device
) -> dict[str, Any]:
    """Time ``timing.repeats`` steps of one method at one point; return the cost columns."""
    from mtlbench.harness.data import training_batches
    from mtlbench.harness.gradients import get_engine
    from mtlbench.harness.trainer import load_dataset, seed_everything

    dataset, splits = load_dataset(DATASET, dataset_params(study, point))
    taskset = type(dataset).taskset(dataset.params)
    method_cls = METHODS.get(entry.name)
    params = method_cls.expand(method_cls.Params.model_validate(entry.params), taskset)[0]
    method_cls.check(params, taskset)
    seed_everything(study.seed)
    model = dataset.build_model().to(device)
    shared = sum(p.numel() for p in model.shared_parameters())
    method = method_cls(params, model, taskset, study.training)
    method.model.to(device)
    batch = next(training_batches(splits.train, study.training.batch_size, study.seed, device))
    engine_name, options = _engine_for(study, entry, point)
    budget = Budget("flops", UNLIMITED_FLOPS)
    engine = get_engine(engine_name)(method.model, taskset, budget, batch, **options)
    method.bind(engine)
    size = int(batch[0].shape[0])
    ew_step_flops = sum(
        engine.costs.flops(kind, size)
        for kind in ("encoder_forward", "heads_forward", "heads_backward", "encoder_backward")
    )
    for _ in range(study.timing.warmup):
        method.step(batch, engine)
    memory = PeakMemory(device)
    memory.reset()
    flops_before = budget.spent_flops
    seconds = []
    for _ in range(study.timing.repeats):
        _synchronize(device)
        started = time.perf_counter()
        method.step(batch, engine)
        _synchronize(device)
        seconds.append(time.perf_counter() - started)
    peak, above = memory.read()
    step_seconds = statistics.median(seconds)
    return {
        "engine": engine_name,
        "engine_options": json.dumps(options, sort_keys=True),
        "method_params": json.dumps(params.model_dump(mode="json"), sort_keys=True),
        "shared_parameters": int(shared),
        "method_parameters": int(sum(p.numel() for p in method.model.parameters())),
        "step_seconds": step_seconds,
        "step_seconds_repeats": seconds,
        "flops_per_step": (budget.spent_flops - flops_before) / study.timing.repeats,
        "ew_step_flops": ew_step_flops,
        "samples_per_second": size / step_seconds if step_seconds > 0 else math.nan,
        "peak_memory_bytes": int(peak),
        "step_memory_bytes": int(above),
        "memory_measure": memory.measure,
    }


def hypervolume_point(
    study: ScalingStudy, entry: MethodEntry, point: StudyPoint, measured: dict[str, Any]
) -> dict[str, Any]:
    """A short trainer run at the study's fixed budget; its test hypervolume and outcome.

    measured: the point's :func:`measure_point` columns (its EW step FLOPs and method params).
    """
    from mtlbench.harness.suite import RunSpec
    from mtlbench.harness.trainer import train_run

    assert study.budget is not None
    if study.budget.flops is not None:
        budget_flops = study.budget.flops
    else:
        budget_flops = study.budget.ew_steps * measured["ew_step_flops"]
    engine, options = _engine_for(study, entry, point)
    spec = RunSpec(
        suite=study.name,
        method=entry.name,
        method_label=entry.label or entry.name,
        method_params=json.loads(measured["method_params"]),
        engine=engine,
        engine_options=options,
        dataset=DATASET,
        dataset_params=dataset_params(study, point),
        seed=study.seed,
        budget_kind="flops",
        budget_limit=float(budget_flops),
        training=study.training.model_dump(mode="json"),
        scoring="final",
        device=study.device,
    )
    result = train_run(spec)
    return {
        "hv_budget_flops": float(budget_flops),
        "hypervolume": result.hypervolume.value if result.hypervolume else math.nan,
        "hv_steps": int(result.steps),
        "hv_status": result.status,
        "hv_error": result.error.splitlines()[0] if result.error else "",
    }


# ---- records ---------------------------------------------------------------------------------
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
    return Path(results_dir) / "scaling" / f"{study_name}.parquet"


def read_table(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path, schema=SCHEMA).to_pylist() if path.is_file() else []


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
    identity = {
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
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


# ---- the study -------------------------------------------------------------------------------
@dataclass
class StudyOutcome:
    table: Path
    rows: list[dict[str, Any]]
    measured: int
    reused: int
    notes: list[str]
    mlflow_run_id: str


def _skip_reason(study: ScalingStudy, entry: MethodEntry, point: StudyPoint) -> str:
    from mtlbench.harness.gradients import engine_names

    engine, _ = _engine_for(study, entry, point)
    if engine not in engine_names():
        return f"engine {engine!r} is not available (known: {', '.join(engine_names())})"
    if point.axis == "workers":
        try:
            from mtlbench.harness.gradients import get_engine

            get_engine(engine)
        except ImportError as error:
            return f"engine {engine!r} cannot be loaded: {error}"
    return ""


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
    rows: list[dict[str, Any]] = []

    def save() -> None:  # this invocation's rows, plus earlier rows of points it did not visit
        visited = {row["point_key"] for row in rows}
        write_table(path, rows + [row for row in existing if row["point_key"] not in visited])

    notes: list[str] = []
    measured = reused = 0
    for point in study_points(study):
        for entry in study.method_entries():
            key = point_key(study, entry, point, device)
            label = entry.label or entry.name
            if key in previous:
                rows.append(previous[key])
                reused += 1
                continue
            row: dict[str, Any] = {
                "study": study.name,
                "point_key": key,
                "axis": point.axis,
                "axis_value": float(point.axis_value),
                "method": entry.name,
                "method_label": label,
                "tasks": point.tasks,
                "width": point.width,
                "workers": point.workers,
                "batch_size": study.training.batch_size,
                "device": str(device),
                "device_name": env.get("device_name", ""),
                "torch_threads": torch.get_num_threads(),
                "torch_version": env.get("torch", ""),
                "package_version": env.get("mtlbench_version", ""),
                "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"
                ),
                "error": "",
            }
            reason = _skip_reason(study, entry, point)
            if reason:
                row.update(status="skipped", error=reason)
                note = f"{point.axis}: {reason}"
                if note not in notes:
                    notes.append(note)
                    log(f"skipped {note}")
                rows.append(row)
                continue
            try:
                row.update(measure_point(study, entry, point, device))
                if study.budget is not None:
                    row.update(hypervolume_point(study, entry, point, row))
                row["status"] = "ok"
            except Exception as error:  # noqa: BLE001 - a failing point is recorded, the study goes on
                row.update(
                    status="failed", error=f"{type(error).__name__}: {error}".splitlines()[0]
                )
            measured += 1
            rows.append(row)
            save()
            log(_describe(row))
    save()
    run_id = log_study(study, rows, notes, results_dir, tracking_uri, path)
    return StudyOutcome(path, rows, measured, reused, notes, run_id)


def _describe(row: dict[str, Any]) -> str:
    head = f"{row['axis']}={row['axis_value']:.4g} {row['method_label']}"
    if row["status"] != "ok":
        return f"{head}: {row['status']} {row['error']}"
    text = (
        f"{head}: P={row['shared_parameters']:,} step {1e3 * row['step_seconds']:.2f} ms, "
        f"{row['flops_per_step']:.3g} FLOPs, step memory {row['step_memory_bytes'] / 2**20:.1f} MiB"
    )
    if row.get("hv_status"):
        text += f", HV {row['hypervolume']:.4g} ({row['hv_steps']} steps, {row['hv_status']})"
    return text


def slopes(rows: list[dict[str, Any]]) -> Iterator[tuple[str, str, str, PowerLawFit]]:
    """(axis, method label, cost column, fit of cost vs axis value) for every curve of ``rows``.

    On the ``shared_parameters`` axis x is the actual shared-parameter count."""
    curves: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "ok":
            curves.setdefault((row["axis"], row["method_label"]), []).append(row)
    for (axis, label), points in sorted(curves.items()):
        x = [axis_x(p) for p in points]
        for column in COST_COLUMNS:
            yield axis, label, column, fit_power_law(x, [p[column] for p in points])


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
    from mlflow.entities import Metric, Param, RunTag
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
    timestamp = int(time.time() * 1000)
    metrics = []
    for row in rows:
        if row["status"] != "ok":
            continue
        step = int(axis_x(row))
        for column in (*COST_COLUMNS, "hypervolume"):
            value = row.get(column)
            if value is not None and math.isfinite(value):
                metrics.append(
                    Metric(
                        f"{row['axis']}.{row['method_label']}.{column}",
                        float(value),
                        timestamp,
                        step,
                    )
                )
    for axis, label, column, fit in slopes(rows):
        if math.isfinite(fit.slope):
            metrics.append(Metric(f"{axis}.{label}.slope.{column}", fit.slope, timestamp, 0))
    for start in range(0, len(metrics), BATCH_LIMIT):
        client.log_batch(run_id, metrics=metrics[start : start + BATCH_LIMIT])
    settings = {
        "axes": study.axes.model_dump_json(),
        "base": study.base.model_dump_json(),
        "problem": study.problem.model_dump_json(),
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
