"""Suite configuration: the YAML a researcher writes, validated into typed objects.

A suite names methods (with their parameters), datasets, seeds, one compute budget shared by
every run, the training protocol, which checkpoint is scored, the executor and where records go.
Errors are :class:`ConfigError` with one line naming the file, the field and the problem.
Everything the suite alone decides is checked here, before any run starts: the YAML itself (UTF-8,
no key given twice), every field's type and range, seeds (unique, in the range NumPy's legacy
seeding accepts), finite budgets, each method's and dataset's own parameters, each method's
``engine_options`` against its engine's ``options_model``, and the executor's name. The suite's
``plugins`` are imported first, so the names they register are known. What depends on this
machine (a CUDA device, the FLOPs of one training step) is :mod:`mtlbench.harness.preflight`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.plugins import PluginError, import_plugins
from mtlbench.harness.registry import (
    DATASETS,
    ENGINES,
    EXECUTORS,
    LOOKUP_ERRORS,
    METHODS,
    Registry,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    """kind: a registered executor, ``local`` (in-process) or ``ray``; address: a Ray cluster
    (None: start one locally); cpus_per_run / gpus_per_run: resources each run asks of Ray;
    max_concurrent_runs: bound; max_retries: Ray retries of a run whose worker died."""

    kind: str = Field("local", min_length=1)
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
    the best validation hypervolume); device: ``cpu``, ``cuda`` or ``auto``; plugins: modules
    imported before the names are looked up (:mod:`mtlbench.harness.plugins`)."""

    name: str = Field(min_length=1)
    plugins: list[str] = Field(default_factory=list)
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


def parse_suite(
    data: Any,
    source: str = "suite",
    extra_plugins: Sequence[str] = (),
    suite_folder: Path | None = None,
) -> SuiteConfig:
    """Validate a loaded YAML mapping, including each method's and dataset's own parameters.

    The suite's ``plugins`` (then ``extra_plugins``, e.g. from ``--plugin``, already imported by
    the caller) are imported first, searched in ``suite_folder``, the working directory and
    ``sys.path`` (:mod:`mtlbench.harness.plugins`); the suite returned lists both.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the suite must be a YAML mapping, got {type(data).__name__}")
    try:
        suite = SuiteConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_first_error(error)}") from None
    for index, module in enumerate(suite.plugins):
        try:
            import_plugins([module], suite_folder)
        except PluginError as error:
            raise ConfigError(f"{source}: plugins[{index}]: {error}") from None
    plugins = list(dict.fromkeys([*suite.plugins, *extra_plugins]))
    suite = suite.model_copy(update={"plugins": plugins})
    tasksets = [
        _checked_dataset(entry, f"{source}: datasets[{index}]")
        for index, entry in enumerate(suite.datasets)
    ]
    labels: set[str] = set()
    for index, entry in enumerate(suite.methods):
        field = f"{source}: methods[{index}]"
        _check_method(entry, field, tasksets)
        label = entry.label or entry.name
        if label in labels:
            raise ConfigError(f"{field}.label: {label!r} is used twice; give a label")
        labels.add(label)
    _check_executor(suite.executor.kind, f"{source}: executor.kind")
    return suite


def registered_with_params(registry: Registry, name: str, params: Any, field: str) -> Any:
    """``(registered class, its validated Params)`` for an entry naming ``name`` with
    ``params``; ConfigError "``field``.name: ..." for a name that is unknown or whose module does
    not import, "``field``.params.<key>: ..." for parameters its ``Params`` refuses. Shared by
    suites and scaling studies, so both report the same line for the same mistake."""
    try:
        registered = registry.get(name)
        return registered, registered.Params.model_validate(params)
    except LOOKUP_ERRORS as error:
        raise ConfigError(f"{field}.name: {error}") from None
    except ValidationError as error:
        raise ConfigError(_first_error(error, field + ".params")) from None


def _checked_dataset(entry: DatasetEntry, field: str) -> Any:
    """The task set of a dataset entry whose name and parameters are valid (ConfigError else)."""
    dataset_cls, dataset_params = registered_with_params(DATASETS, entry.name, entry.params, field)
    return dataset_cls.taskset(dataset_params)


def _check_method(entry: MethodEntry, field: str, tasksets: list[Any]) -> None:
    """A method entry's name, parameters (also against each task set), engine and options."""
    method_cls, method_params = registered_with_params(METHODS, entry.name, entry.params, field)
    engine = entry.engine or method_cls.default_engine
    if engine not in ENGINES:
        known = ", ".join(ENGINES.names())
        raise ConfigError(f"{field}.engine: unknown engine {engine!r} (known: {known})")
    if method_cls.engines is not None and engine not in method_cls.engines:
        raise ConfigError(
            f"{field}.engine: method {entry.name!r} does not run on {engine!r} "
            f"(it runs on: {', '.join(method_cls.engines)})"
        )
    try:
        problem = engine_options_problem(engine, entry.engine_options)
    except LOOKUP_ERRORS as error:
        raise ConfigError(f"{field}.engine: {error}") from None
    if problem:
        raise ConfigError(f"{field}.engine_options{problem}")
    for taskset in tasksets:
        try:
            method_cls.check(method_params, taskset)
        except ValueError as error:
            raise ConfigError(f"{field}.params: {error}") from None


def _check_executor(kind: str, field: str) -> None:
    """The executor is registered and its module imports (Ray is imported, not started)."""
    try:
        EXECUTORS.get(kind)
    except LOOKUP_ERRORS as error:
        raise ConfigError(f"{field}: {error}") from None


def engine_options_problem(engine: str, options: dict[str, Any]) -> str:
    """'' if ``engine`` accepts ``options``, else the problem as ``.<option>: <what is wrong>``.

    Options are validated against the engine class's ``options_model`` (None: it takes none), in
    strict mode: the engine receives the suite's values as written, so ``"4"`` is no int. A
    cluster engine's module is imported for its model (Ray is imported, not started); one that
    cannot be imported raises RegistryImportError.
    """
    model = getattr(ENGINES.get(engine), "options_model", None)
    if model is None:
        return f".{next(iter(options))}: engine {engine!r} takes no options" if options else ""
    known = ", ".join(model.model_fields) or "none"
    try:
        model.model_validate(options, strict=True)
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


def load_suite(path: Path | str, extra_plugins: Sequence[str] = ()) -> SuiteConfig:
    """Read and validate a suite YAML file; its plugins are searched first in its folder.

    extra_plugins: modules already imported by the caller (``--plugin``), added to the suite's.
    """
    data = read_yaml(path, "suite")
    return parse_suite(data, str(path), extra_plugins, Path(path).resolve().parent)
