"""Gradient engines: the only code that runs backward passes for a method.

A method never calls ``backward()`` itself; it asks its engine, so that (1) the budget is
charged for every pass actually made and (2) the way per-task gradients are obtained can be
swapped (a loop of T backward passes, one batched vector-Jacobian product, actors on other
devices, DeepSpeed) without touching the method.

Every engine splits the model at its representation ``z = encoder(x)``: the heads read a leaf
copy of ``z`` (``StepState.detached``), so gradients with respect to ``z`` (MGDA-UB) cost only
head work, and any combination of per-task ``z``-gradients can be pushed through the encoder with
one encoder backward.

Engines (local ones in :mod:`mtlbench.harness.engines`; others are declared in the
``mtlbench.engines`` entry-point group, mtlbench's own Ray-sharded and DeepSpeed engines included):
- ``loop``: T separate backward passes for per-task quantities (the reference; the test oracle).
- ``batched``: the same quantities from batched vector-Jacobian products, in chunks of tasks.
- ``representation``: ``batched`` restricted to gradients w.r.t. z (MGDA-UB); refuses the
  shared Jacobian. Every engine serves MGDA-UB, since every engine gives z-gradients.
Reuse: per-task rows already in hand (a Jacobian, z-gradients) feed ``gram`` and ``combine``, so
sum_t a_t g_t never costs another backward pass; both are charged for their products.

Heads may have no parameters (the ``analytic`` problems' objective heads): the heads-parameter
pass is then neither made nor charged, and every engine works as with any other heads.

Shapes: T tasks, B samples, P shared (encoder) parameters; ``z`` keeps its own shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from mtlbench.harness.engines.base import GradientEngine
from mtlbench.harness.engines.batched import BatchedEngine, BatchedOptions, RepresentationEngine
from mtlbench.harness.engines.state import (
    Batch,
    StepState,
    accumulate_flat,
    accumulate_grads,
    flatten_gradients,
    stochastic_or_stateful,
)
from mtlbench.harness.registry import ENGINES

__all__ = [
    "ENGINES",
    "Batch",
    "BatchedEngine",
    "BatchedOptions",
    "EngineFactory",
    "GradientEngine",
    "RepresentationEngine",
    "StepState",
    "accumulate_flat",
    "accumulate_grads",
    "engine_names",
    "flatten_gradients",
    "get_engine",
    "register_engine",
    "stochastic_or_stateful",
]

# (model, taskset, budget, calibration batch, **engine_options) -> engine
EngineFactory = Callable[..., GradientEngine]


def register_engine(name: str, factory: EngineFactory) -> None:
    """Make an engine selectable by name in suites (a plugin's, or a benchmark's variant).

    An installed package declares its engines in the ``mtlbench.engines`` entry-point group
    instead (``name = "package.module:EngineClass"``), so they are imported only when used.
    """
    ENGINES.add(name, factory)


def engine_names() -> list[str]:
    """Every engine a suite may name, sorted (no engine module is imported)."""
    return ENGINES.names()


def get_engine(name: str) -> EngineFactory:
    """The engine factory registered under ``name`` (importing its module if needed).

    Raises :class:`~mtlbench.harness.registry.UnknownName` (a KeyError) for an unknown name and
    :class:`~mtlbench.harness.registry.RegistryImportError` when its module cannot be imported.
    """
    return cast(EngineFactory, ENGINES.get(name))
