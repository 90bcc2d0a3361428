"""What every registered method is, in one table: ``mtlbench info``, the leaderboard and the
README's method table are all read from here, so none of them can forget a method."""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.harness.registry import METHODS


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
