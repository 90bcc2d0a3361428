"""What every registered method and engine is, in one table each: ``mtlbench info``, the
leaderboard, the README's method table and the docs' engines page are read from here, so none of
them can forget one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtlbench.harness.registry import ENGINES, LOOKUP_ERRORS, METHODS
from pydantic import BaseModel


@dataclass(frozen=True)
class MethodEntry:
    """One method: its name, family (``Gram weighting`` | ``loss weighting`` | ``method``),
    paper, what a step consumes, what a step costs, its default engine and the engines it runs
    on (``all`` when unrestricted), and its parameters with their defaults."""

    name: str
    family: str
    paper: str
    consumes: str
    cost: str
    default_engine: str
    engines: str
    parameters: str


def _family(method_cls: type) -> str:
    from mtlbench.harness.weighting import GramWeighting, LossWeighting

    if issubclass(method_cls, GramWeighting):
        return "Gram weighting"
    if issubclass(method_cls, LossWeighting):
        return "loss weighting"
    return "method"


def method_catalog() -> list[MethodEntry]:
    """Every registered method (test doubles, named ``test_*`` or ``_*``, left out), by name."""
    entries = []
    for name, method_cls in METHODS.items():
        if name.startswith(("test_", "_")):
            continue
        parameters = ", ".join(
            f"{key}={field.default!r}" for key, field in method_cls.Params.model_fields.items()
        )
        engines = method_cls.engines
        entries.append(
            MethodEntry(
                name=name,
                family=_family(method_cls),
                paper=method_cls.paper,
                consumes=method_cls.consumes,
                cost=method_cls.cost,
                default_engine=method_cls.default_engine,
                engines="all" if engines is None else ", ".join(engines),
                parameters=parameters,
            )
        )
    return entries


@dataclass(frozen=True)
class EngineOption:
    """One ``engine_options`` key of an engine: its name, type, default and meaning."""

    name: str
    type: str
    default: str
    description: str


@dataclass(frozen=True)
class EngineEntry:
    """One gradient engine: its name, where it is defined (``module:Class``), the first paragraph
    of its docstring, and its options (from its ``options_model``); ``error``: why it could not be
    imported here ("" if it was; then summary and options are empty)."""

    name: str
    target: str
    summary: str
    options: tuple[EngineOption, ...]
    error: str = ""


def _type_name(annotation: Any) -> str:
    """``int``, ``int | None``, ``Literal['fp32', 'bf16']``: the type as a suite author reads it."""
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _options_of(model: type[BaseModel] | None) -> tuple[EngineOption, ...]:
    if model is None:
        return ()
    return tuple(
        EngineOption(
            name=name,
            type=_type_name(field.annotation),
            default=repr(field.get_default(call_default_factory=True)),
            description=field.description or "",
        )
        for name, field in model.model_fields.items()
    )


def engine_catalog() -> list[EngineEntry]:
    """Every registered engine, by name, with its options (imports each engine's module; one
    that cannot be imported here, e.g. DeepSpeed not installed, is listed with the error)."""
    entries = []
    for name in ENGINES.names():
        target = ENGINES.target(name) or ""
        try:
            engine_class = ENGINES.get(name)
        except LOOKUP_ERRORS as error:
            entries.append(EngineEntry(name, target, "", (), str(error)))
            continue
        target = target or f"{engine_class.__module__}:{engine_class.__qualname__}"
        summary = " ".join((engine_class.__doc__ or "").strip().split("\n\n")[0].split())
        options = _options_of(getattr(engine_class, "options_model", None))
        entries.append(EngineEntry(name, target, summary, options))
    return entries
