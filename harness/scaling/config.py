"""The scaling-study YAML (``study: scaling``): its pydantic models, parsing and loading.

A study sweeps one axis at a time while the others stay at ``base``:
``shared_parameters`` (target encoder sizes of the ``synthetic`` MLP), ``tasks`` (T),
``workers`` (K, an engine option) and ``datasets`` (registered datasets, each with its own
default model and tasks; ``dataset_params`` gives a dataset its parameters, e.g. ``data_root``).
Errors are :class:`~mtlbench.harness.config.ConfigError` with one line naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from mtlbench.harness.config import (
    ConfigError,
    MethodEntry,
    OutputConfig,
    _first_error,
    _Strict,
    read_yaml,
    registered_with_params,
)
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.registry import DATASETS, LOOKUP_ERRORS, METHODS
from pydantic import Field, ValidationError, field_validator, model_validator

AxisName = Literal["shared_parameters", "tasks", "workers", "datasets"]
AXES: tuple[str, ...] = ("shared_parameters", "tasks", "workers", "datasets")
NUMERIC_AXES: tuple[str, ...] = ("shared_parameters", "tasks", "workers")


class AxesConfig(_Strict):
    """The values swept on each axis (an axis left out is not swept). datasets: registered
    dataset names, each measured with its own default model and tasks."""

    shared_parameters: list[float] | None = Field(None, min_length=1)
    tasks: list[int] | None = Field(None, min_length=1)
    workers: list[int] | None = Field(None, min_length=1)
    datasets: list[str] | None = Field(None, min_length=1)

    @field_validator("shared_parameters", "tasks", "workers")
    @classmethod
    def _positive_increasing(cls, values: list[float] | None) -> list[float] | None:
        if values is not None:
            if min(values) < 1:
                raise ValueError("values must be >= 1")
            if sorted(values) != list(values) or len(set(values)) != len(values):
                raise ValueError("values must be strictly increasing")
        return values

    @field_validator("datasets")
    @classmethod
    def _distinct_names(cls, names: list[str] | None) -> list[str] | None:
        if names is not None and len(set(names)) != len(names):
            raise ValueError("a dataset is listed twice")
        return names


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
    """warmup: untimed steps first; repeats: timed steps (the median is recorded);
    max_seconds: stop the warmup, and then the timed steps, once they have taken this long in
    all (at least one of each runs; None: always ``warmup`` and ``repeats``), so that a slow
    point costs one warmup and one timed step while a fast one gets every repeat."""

    warmup: int = Field(2, ge=0)
    repeats: int = Field(7, ge=1)
    max_seconds: float | None = Field(None, gt=0)


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
    """A scaling study. methods: ``all`` (every registered method but the baselines,
    ``Method.is_baseline``) or a list of suite method entries (name, label, params, engine,
    engine_options). dataset_params: parameters of the datasets on the ``datasets`` axis, by
    name (default: the dataset's defaults; ``synthetic`` defaults to the base point)."""

    name: str = Field(min_length=1)
    study: Literal["scaling"] = "scaling"
    methods: Literal["all"] | list[MethodEntry] = "all"
    axes: AxesConfig
    base: BasePoint = BasePoint()
    problem: ProblemConfig = ProblemConfig()
    dataset_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
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
            raise ValueError(f"axes: give at least one of {', '.join(AXES)}")
        return self

    def method_entries(self) -> list[MethodEntry]:
        if self.methods == "all":
            return [
                MethodEntry(name=name)
                for name in METHODS.names()
                if not METHODS.get(name).is_baseline
            ]
        return list(self.methods)


def _check_methods(study: ScalingStudy, source: str) -> None:
    """Each method is registered, its params validate, and labels are unique."""
    labels: set[str] = set()
    for index, entry in enumerate(study.method_entries()):
        field = f"methods[{index}]"
        registered_with_params(METHODS, entry.name, entry.params, f"{source}: {field}")
        label = entry.label or entry.name
        if label in labels:
            raise ConfigError(f"{source}: {field}.label: {label!r} is used twice; give a label")
        labels.add(label)


def _check_datasets(study: ScalingStudy, source: str) -> None:
    """Each dataset of the axis is registered; each ``dataset_params`` entry validates."""
    for index, name in enumerate(study.axes.datasets or []):
        try:
            DATASETS.get(name)
        except LOOKUP_ERRORS as error:
            raise ConfigError(f"{source}: axes.datasets[{index}]: {error}") from None
    for name, params in study.dataset_params.items():
        field = f"dataset_params.{name}"
        if name == "synthetic":
            raise ConfigError(f"{source}: {field}: set the synthetic problem under 'problem'")
        try:
            dataset_cls = DATASETS.get(name)
        except LOOKUP_ERRORS as error:
            raise ConfigError(f"{source}: {field}: {error}") from None
        try:
            dataset_cls.Params.model_validate(params)
        except ValidationError as error:
            raise ConfigError(f"{source}: {_first_error(error, field)}") from None


def parse_study(data: Any, source: str = "study") -> ScalingStudy:
    """Validate a loaded YAML mapping (including each method's and dataset's own parameters)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the study must be a YAML mapping, got {type(data).__name__}")
    try:
        study = ScalingStudy.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_first_error(error)}") from None
    _check_methods(study, source)
    _check_datasets(study, source)
    return study


def load_study(path: Path | str) -> ScalingStudy:
    """Read and validate a scaling-study YAML file."""
    return parse_study(read_yaml(path, "study"), str(path))
