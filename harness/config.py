"""Suite configuration: the YAML a researcher writes, validated into typed objects.

A suite names methods (with their parameters), datasets, seeds, one compute budget shared by
every run, the training protocol, which checkpoint is scored, the executor and where records go.
Errors are :class:`ConfigError` with one line naming the file, the field and the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.registry import DATASETS, METHODS, UnknownName
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A suite cannot be used; the message is one line naming the field and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BudgetConfig(_Strict):
    """Exactly one of ``flops`` (FLOPs counted by the harness) or ``seconds`` (wall time)."""

    flops: float | None = Field(None, gt=0)
    seconds: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetConfig:
        if (self.flops is None) == (self.seconds is None):
            raise ValueError("give exactly one of 'flops' or 'seconds'")
        return self

    @property
    def kind(self) -> Literal["flops", "seconds"]:
        return "flops" if self.flops is not None else "seconds"

    @property
    def limit(self) -> float:
        return float(self.flops if self.flops is not None else self.seconds)  # type: ignore[arg-type]


class MethodEntry(_Strict):
    """name: registered method; label: its name in records (default: name); engine: gradient
    engine (default: the method's); engine_options: keyword options of that engine (e.g.
    ``chunk_size`` for ``batched``); params: the method's own parameters."""

    name: str
    label: str | None = None
    engine: str | None = None
    engine_options: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)


class DatasetEntry(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ExecutorConfig(_Strict):
    """kind: ``local`` (in-process) or ``ray``; address: a Ray cluster (None: start one locally);
    cpus_per_run / gpus_per_run: resources each run asks of Ray; max_concurrent_runs: bound."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    cpus_per_run: float = Field(1.0, gt=0)
    gpus_per_run: float = Field(0.0, ge=0)
    max_concurrent_runs: int = Field(2, gt=0)


class OutputConfig(_Strict):
    """results_dir: Parquet tables, MLflow store, leaderboard (relative to the working directory).
    tracking_uri: an MLflow server or store (default: ``sqlite:///<results_dir>/mlflow.db``)."""

    results_dir: Path = Path("results")
    tracking_uri: str | None = None


class SuiteConfig(_Strict):
    """The whole suite. scoring: ``final`` (last checkpoint) or ``best_val`` (the checkpoint with
    the best validation hypervolume); device: ``cpu``, ``cuda`` or ``auto``."""

    name: str = Field(min_length=1)
    methods: list[MethodEntry] = Field(min_length=1)
    datasets: list[DatasetEntry] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    budget: BudgetConfig
    training: TrainingConfig = TrainingConfig()
    scoring: Literal["final", "best_val"] = "final"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    executor: ExecutorConfig = ExecutorConfig()
    output: OutputConfig = OutputConfig()


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "suite"


def _first_error(error: ValidationError, prefix: str = "") -> str:
    first = error.errors()[0]
    loc = _location(tuple(first["loc"]))
    where = f"{prefix}.{loc}" if prefix and loc != "suite" else (prefix or loc)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{where}: {message}"


def parse_suite(data: Any, source: str = "suite") -> SuiteConfig:
    """Validate a loaded YAML mapping, including each method's and dataset's own parameters."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the suite must be a YAML mapping, got {type(data).__name__}")
    try:
        suite = SuiteConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_first_error(error)}") from None
    from mtlbench.harness.gradients import engine_names

    tasksets = {}
    for index, entry in enumerate(suite.datasets):
        field = f"datasets[{index}]"
        try:
            dataset_cls = DATASETS.get(entry.name)
            dataset_params = dataset_cls.Params.model_validate(entry.params)
        except UnknownName as error:
            raise ConfigError(f"{source}: {field}.name: {error}") from None
        except ValidationError as error:
            raise ConfigError(f"{source}: {_first_error(error, field + '.params')}") from None
        tasksets[index] = dataset_cls.taskset(dataset_params)
    labels = set()
    for index, entry in enumerate(suite.methods):
        field = f"methods[{index}]"
        try:
            method_cls = METHODS.get(entry.name)
            method_params = method_cls.Params.model_validate(entry.params)
        except UnknownName as error:
            raise ConfigError(f"{source}: {field}.name: {error}") from None
        except ValidationError as error:
            raise ConfigError(f"{source}: {_first_error(error, field + '.params')}") from None
        engine = entry.engine or method_cls.default_engine
        if engine not in engine_names():
            known = ", ".join(engine_names())
            raise ConfigError(
                f"{source}: {field}.engine: unknown engine {engine!r} (known: {known})"
            )
        if method_cls.engines is not None and engine not in method_cls.engines:
            raise ConfigError(
                f"{source}: {field}.engine: method {entry.name!r} does not run on {engine!r} "
                f"(it runs on: {', '.join(method_cls.engines)})"
            )
        for taskset in tasksets.values():
            try:
                method_cls.check(method_params, taskset)
            except ValueError as error:
                raise ConfigError(f"{source}: {field}.params: {error}") from None
        label = entry.label or entry.name
        if label in labels:
            raise ConfigError(f"{source}: {field}.label: {label!r} is used twice; give a label")
        labels.add(label)
    return suite


def read_yaml(path: Path | str, what: str = "suite") -> Any:
    """The parsed YAML of ``path``; a missing file or malformed YAML is one ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what} file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None


def load_suite(path: Path | str) -> SuiteConfig:
    """Read and validate a suite YAML file."""
    return parse_suite(read_yaml(path, "suite"), str(path))
