"""The records engine ``ray_sharded`` keeps per step and per run: what an actor needs to replay
a step (``Replay``, carried by the step's ``ShardedStepState``), an exchange the actors were
asked for (``Exchange``), and the bytes that crossed between processes (``TransferStats``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mtlbench.harness.gradients import StepState
from torch import Tensor


@dataclass
class TransferStats:
    """Logical bytes moved between the driver and the actors (and among actors), by kind.

    ``steps`` counts forward passes, so ``bytes_per_step`` is the mean over the run.
    """

    bytes_by_kind: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    restarts: int = 0
    prefetched: int = 0  # exchanges launched before the driver's forward (see ``forward``)
    prefetch_dropped: int = 0  # of those, never asked for (work done, not charged)

    def add(self, kind: str, nbytes: int) -> None:
        self.bytes_by_kind[kind] = self.bytes_by_kind.get(kind, 0) + int(nbytes)

    def bytes_per_step(self) -> dict[str, float]:
        steps = max(self.steps, 1)
        return {kind: value / steps for kind, value in sorted(self.bytes_by_kind.items())}


@dataclass
class Exchange:
    """A parameter-shard exchange the actors were asked for.

    calls: refs of the actors' calls (their partial Grams (T, T); None from a one-call step,
    which hands them over in the arena); None while they wait for the driver's own blocks
    (object store, driver's share). exchange_id: the (first) barrier id (shared memory), else
    None. blocks: the actors' outgoing blocks, ``blocks[i][rank]`` (object store), else None.
    """

    calls: list[Any] | None
    exchange_id: int | None = None
    blocks: list[list[Any]] | None = None

    def refs(self) -> list[Any]:
        """Everything the actors are still working on."""
        if self.calls is not None:
            return self.calls
        return [ref for blocks in self.blocks or [] for ref in blocks]

    def started_calls(self) -> list[Any]:
        """The actors' calls, once launched (all but an object-store exchange awaiting the
        driver's blocks)."""
        if self.calls is None:
            raise RuntimeError("ray_sharded: the actors' calls of this exchange are not launched")
        return self.calls

    def barrier_id(self) -> int:
        """The first barrier id of a shared-memory exchange."""
        if self.exchange_id is None:
            raise RuntimeError("ray_sharded: an object-store exchange has no barrier")
        return self.exchange_id


@dataclass
class Replay:
    """What an actor needs to redo the driver's forward of one step, and what the step made."""

    token: int
    rng: dict[str, np.ndarray]
    heads_rng: dict[str, np.ndarray]
    training: bool
    version: tuple[int, ...]
    per_task_heads: bool  # the actors' z-gradients come from one per-task heads pass
    step_ref: Any = None  # (ObjectRef of {inputs, targets, rng}, batch bytes, rng bytes): put once
    gram: Tensor | None = None  # the step's Gram, once formed
    in_flight: Exchange | None = None  # the step's exchange, launched before it was asked for


@dataclass
class ShardedStepState(StepState):
    """A step of ``ray_sharded``: the harness's StepState plus the step's ``Replay``."""

    replay: Replay | None = None

    @classmethod
    def of(cls, state: StepState, replay: Replay) -> ShardedStepState:
        """``state`` (as the base engine's forward made it) carrying ``replay``."""
        fields = {name: getattr(state, name) for name in state.__dataclass_fields__}
        return cls(**fields, replay=replay)


def replay_of(state: StepState) -> Replay:
    """The replay record of a step this engine's ``forward`` made."""
    if not isinstance(state, ShardedStepState) or state.replay is None:
        raise TypeError("ray_sharded: a gradient request for a step another engine made")
    return state.replay
