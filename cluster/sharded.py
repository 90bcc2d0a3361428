"""Engine ``ray_sharded``: per-task gradients sharded over K Ray actors (one per device).

The driver keeps the method's model (its optimizer updates it) and makes the passes that do not
grow with T, as the ``loop`` engine does; only the T-fold work is sharded. Each actor
(``ShardWorker``, ``cluster/shard_actors.py``) holds a replica of the model, replays the
driver's forward and computes the Jacobian rows of its share of the tasks with the ``batched``
engine's code; with ``driver_share`` the driver computes a share too (W = K + 1 workers). The
Gram ``J Jᵀ`` (T x T) is formed either by gathering the rows on the driver (``gram: gather``)
or, by default, by an all-to-all of the rows by parameter shard and a sum of the workers'
partial Grams (``gram: parameter``); Σ aₜgₜ is then combined slice by slice where the rows lie.
What crosses between processes goes through ``torch.distributed`` collectives among the workers
(``transport: collective``: NCCL on GPUs, gloo on CPUs), one node-local shared-memory arena
(``shared_memory``) or Ray's object store (``object_store``); ``auto`` picks.

The full explanation, with the bytes moved per step by each strategy and transport, what is
charged to the budget, prefetching and failure recovery, is ``docs/engines/ray-sharded.md``.

This module is the facade; the layers it stands on are, bottom up: ``_shard_options``
(the options model), ``_shard_records`` (per-step records, byte counts),
``_shard_transport`` (placement, arena, shipping parameters and batches), ``_shard_exchange``
(the exchange protocol, prefetch, failures), ``_shard_gram`` (the Gram strategies and the
requests a method makes) and ``_shard_collective`` (the collective transport).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from itertools import count
from typing import Any, ClassVar, Literal

import numpy as np
import ray
from mtlbench.cluster._shard_collective import ShardCollective
from mtlbench.cluster._shard_options import (
    ACTORS_ENV,
    TRANSPORTS,
    RayShardedOptions,
    checked_options,
)
from mtlbench.cluster._shard_records import (
    Exchange,
    Replay,
    ShardedStepState,
    TransferStats,
    replay_of,
)
from mtlbench.cluster._shard_replica import per_task_heads, rng_state
from mtlbench.cluster.node_shared import NodeBarrier, SharedArena
from mtlbench.harness.budget import Budget
from mtlbench.harness.gradients import Batch, StepState
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet
from pydantic import BaseModel

__all__ = [
    "ACTORS_ENV",
    "TRANSPORTS",
    "Exchange",
    "NodeBarrier",
    "RayShardedEngine",
    "RayShardedOptions",
    "Replay",
    "SharedArena",
    "TransferStats",
    "replay_of",
]


class RayShardedEngine(ShardCollective):
    """Per-task gradients computed by K Ray actors, each owning a contiguous share of the tasks
    (options: ``RayShardedOptions``; the whole story: ``docs/engines/ray-sharded.md``)."""

    name: ClassVar[str] = "ray_sharded"
    options_model: ClassVar[type[BaseModel] | None] = RayShardedOptions
    _tokens = count()

    def __init__(
        self,
        model: MultiTaskModel,
        taskset: TaskSet,
        budget: Budget,
        calibration: Batch,
        actors: int | None = None,
        gram: Literal["parameter", "gather"] = "parameter",
        cpus_per_actor: float = 1.0,
        gpus_per_actor: float = 0.0,
        threads_per_actor: int | None = None,
        chunk_size: int = 64,
        shard_representation: bool = False,
        max_restarts: int = 3,
        ready_timeout_s: float = 120.0,
        transport: Literal["auto", "shared_memory", "object_store", "collective"] = "auto",
        prefetch: bool = True,
        driver_share: bool | None = None,
    ):
        options = checked_options(
            actors=actors,
            gram=gram,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
            threads_per_actor=threads_per_actor,
            chunk_size=chunk_size,
            shard_representation=shard_representation,
            max_restarts=max_restarts,
            ready_timeout_s=ready_timeout_s,
            transport=transport,
            prefetch=prefetch,
            driver_share=driver_share,
        )
        super().__init__(model, taskset, budget, calibration)
        self.options = options
        self._init_transport(calibration, options)
        self._init_exchange(options)
        self._init_grams(options)
        self._init_collective()
        self._heads_rng: dict[str, np.ndarray] = {}  # the RNG state the step's heads drew from
        self._hook = model.heads.register_forward_pre_hook(_HeadsRngHook(self))

    def actor_pids(self) -> list[int]:
        """Process ids of the K actors (tests kill them to check recovery)."""
        return self.pool.pids()

    def report(self) -> dict[str, float | str]:
        """K, the transport and Gram strategy, actor restarts, and bytes moved per step (total
        and by kind, as on the docs page); K = 0 when no request ever started the actors."""
        if self._pool is None:
            return {"actors": 0}
        per_step = self.stats.bytes_per_step()
        return {
            "actors": self.num_actors,
            "workers": self.workers,
            "driver_share": "true" if self.driver_share else "false",
            "transport": self.transport,
            **({"transport_reason": self.transport_reason} if self.transport_reason else {}),
            "gram": self.gram_strategy,
            "actor_restarts": self.stats.restarts,
            "prefetched_steps": self.stats.prefetched,
            "prefetch_dropped": self.stats.prefetch_dropped,
            "bytes_per_step": sum(per_step.values()),
            **{f"bytes_per_step.{kind}": value for kind, value in per_step.items()},
        }

    def close(self) -> None:
        """End the actors and remove the shared memory (both also go when the engine is
        garbage-collected). Idempotent."""
        self._hook.remove()
        if self._pool is not None and ray.is_initialized():
            self._settle_in_flight()  # a prefetch nobody asked for: dropped
            self._pool.close()
        if self._arena is not None:
            self.barrier.close()
            self._arena.close()
        self._close_group()
        self._pool, self._arena, self._barrier = None, None, None
        self._resident_token, self._synced_version = -1, None

    def forward(self, batch: Batch) -> StepState:
        """The driver's forward; remembers what the actors need to replay it.

        Prefetch: when the previous step asked for the parameter-shard Gram, the actors start
        this step's rows before the driver's own forward (everything they need, parameters,
        batch and RNG state, is known before it), so the forward overlaps their work instead
        of preceding it. It is charged when the method asks for it; if it never does (a method
        that asks every other step), the actors' work is dropped, uncharged.
        """
        replay = Replay(
            next(self._tokens),
            rng_state(self.device),
            {},
            self.model.training,
            self._version(),
            per_task_heads(self.model),
        )
        self._prefetch(batch, replay)
        state = super().forward(batch)
        replay.heads_rng = self._heads_rng
        # a later request checks the model against this: the forward may have moved BatchNorm's
        # running statistics (a prefetch shipped them as they were: in training mode a forward
        # reads batch statistics, so the actors' rows are the same either way)
        replay.version = self._version()
        self.stats.steps += 1
        return ShardedStepState.of(state, replay)


class _HeadsRngHook:
    """Forward pre-hook on the heads: records the RNG state the step's heads draw from (for
    MGDA-UB's sharded representation rows) into the engine, held weakly so that the model does
    not keep alive an engine its caller dropped, nor that engine's actors. A copy or pickle of
    the model (the actors' replicas) carries an inert hook, not the engine."""

    def __init__(self, engine: RayShardedEngine) -> None:
        self._engine: Callable[[], RayShardedEngine | None] = weakref.ref(engine)

    def __call__(self, module: Any, inputs: Any) -> None:
        engine = self._engine()
        if engine is not None:
            engine._heads_rng = rng_state(engine.device)

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._engine = _no_engine


def _no_engine() -> None:
    return None
