"""Suite configuration: the YAML a researcher writes, validated into typed objects.

A suite names methods (with their parameters), datasets, seeds, one compute budget shared by
every run, the training protocol, which checkpoint is scored, the executor and where records go.
Errors are :class:`ConfigError` with one line naming the file, the field and the problem.
Everything the suite alone decides is checked here, before any run starts: the YAML itself (UTF-8,
no key given twice), every field's type and range, seeds (unique, in the range NumPy's legacy
seeding accepts), finite budgets, each method's and dataset's own parameters, and each method's
``engine_options`` against its engine's constructor. What depends on this machine (a CUDA device,
the FLOPs of one training step) is :mod:`mtlbench.harness.preflight`.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.registry import DATASETS, METHODS, UnknownName
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

# ``np.random.seed`` (called by the trainer's ``seed_everything``) accepts 0 <= seed < 2**32; the
# other RNGs it seeds (``random``, ``torch.manual_seed``, the shuffle's ``torch.Generator``)
# accept that whole range too.
SEED_LIMIT = 2**32
Seed = Annotated[int, Field(strict=True, ge=0, lt=SEED_LIMIT)]


class ConfigError(ValueError):
    """A suite cannot be used; the message is one line naming the field and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BudgetConfig(_Strict):
    """Exactly one of ``flops`` (FLOPs counted by the harness) or ``seconds`` (wall time)."""

    flops: float | None = Field(None, gt=0, allow_inf_nan=False)
    seconds: float | None = Field(None, gt=0, allow_inf_nan=False)

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
    max_retries: int = Field(2, ge=0)


class OutputConfig(_Strict):
    """results_dir: Parquet tables, MLflow store, leaderboard (relative to the working directory).
    tracking_uri: an MLflow server or store (default: ``sqlite:///<results_dir>/mlflow.db``)."""

    results_dir: Path = Path("results")
    tracking_uri: str | None = None
    keep_checkpoints: bool = False


class SuiteConfig(_Strict):
    """The whole suite. scoring: ``final`` (last checkpoint) or ``best_val`` (the checkpoint with
    the best validation hypervolume); device: ``cpu``, ``cuda`` or ``auto``."""

    name: str = Field(min_length=1)
    methods: list[MethodEntry] = Field(min_length=1)
    datasets: list[DatasetEntry] = Field(min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    budget: BudgetConfig
    training: TrainingConfig = TrainingConfig()
    scoring: Literal["final", "best_val"] = "final"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    executor: ExecutorConfig = ExecutorConfig()
    output: OutputConfig = OutputConfig()

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if repeated:
            raise ValueError(f"seed {repeated[0]} is listed twice (the same runs twice)")
        return seeds


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
        problem = engine_options_problem(engine, entry.engine_options)
        if problem:
            raise ConfigError(f"{source}: {field}.engine_options{problem}")
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


# The parameters every engine constructor takes before its options (see harness.gradients).
_ENGINE_ARGUMENTS = 4


def _engine_options_model(factory: Any) -> type[BaseModel] | None:
    """A pydantic model of the keyword options ``factory`` accepts (unknown ones forbidden), read
    from its signature and annotations; None if it takes no options.

    An engine whose constructor takes ``**options`` validates them with the pydantic model of
    its ``options_model`` class attribute (the DeepSpeed engine's ``DeepSpeedOptions``); without
    one, ``**options`` takes none (the ``loop`` engine refuses any).
    """
    parameters = list(inspect.signature(factory).parameters.values())[_ENGINE_ARGUMENTS:]
    declared = getattr(factory, "options_model", None)
    if declared is not None and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return declared
    hints = typing.get_type_hints(getattr(factory, "__init__", factory))
    fields: dict[str, Any] = {
        p.name: (hints.get(p.name, Any), p.default if p.default is not p.empty else ...)
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    if not fields:
        return None
    # strict: the constructor receives the suite's values as written, so "4" is no int
    config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    return create_model("EngineOptions", __config__=config, **fields)


def engine_options_problem(engine: str, options: dict[str, Any]) -> str:
    """'' if ``engine`` accepts ``options``, else the problem as ``.<option>: <what is wrong>``.

    Cluster engines are imported for their signature (Ray is imported, not started).
    """
    from mtlbench.harness.gradients import get_engine

    try:
        factory = get_engine(engine)
    except ImportError as error:
        return f": engine {engine!r} cannot be imported here: {error}"
    model = _engine_options_model(factory)
    if model is None:
        return f".{next(iter(options))}: engine {engine!r} takes no options" if options else ""
    known = ", ".join(model.model_fields) or "none"
    try:
        model.model_validate(options)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            return f".{where}: unknown option of engine {engine!r} (known: {known})"
        return f".{where}: {first['msg']} (engine {engine!r}; options: {known})"
    return ""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    keeps the last value silently). Merge keys (``<<``) may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} is given twice (first at line {first_line[key] + 1})",
                        key_node.start_mark,
                    )
                first_line[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: SafeLoader names it below
                pass
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path | str, what: str = "suite") -> Any:
    """The parsed YAML of ``path``. A missing, unreadable, empty, non-UTF-8 or malformed file, or
    one with a key given twice, is one ConfigError line naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a {what} file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what} file")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the {what} file: {error.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = raw[error.start]
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{byte:02x} at offset {error.start}); "
            "save the file as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the {what} file is empty")
    return data


def load_suite(path: Path | str) -> SuiteConfig:
    """Read and validate a suite YAML file."""
    return parse_suite(read_yaml(path, "suite"), str(path))
