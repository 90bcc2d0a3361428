"""Where engine ``ray_sharded``'s workers run and how bytes reach them: the actors' placement
(K, the task shards, the parameter-shard bounds), the transport (one node-local shared-memory
arena with its pipe barrier, else Ray's object store), the parameters, batch and RNG state each
step ships, and the byte counts of what the exchange moved. See ``docs/engines/ray-sharded.md``.
"""

from __future__ import annotations

import logging
import weakref
from itertools import count, pairwise
from typing import Any

import numpy as np
import ray
import torch
from mtlbench.cluster._ray_setup import connect
from mtlbench.cluster._shard_options import RayShardedOptions, requested_actors
from mtlbench.cluster._shard_pool import ShardPool
from mtlbench.cluster._shard_records import Replay, TransferStats
from mtlbench.cluster._shard_replica import ReplicaVJP, nbytes_of, to_numpy
from mtlbench.cluster.node_shared import NodeBarrier, SharedArena
from mtlbench.harness.gradients import Batch, GradientEngine
from torch import Tensor

# the engine's logger, under its public module's name (what users and tests filter on)
log = logging.getLogger("mtlbench.cluster.sharded")


class ShardTransport(GradientEngine):
    """The engine's placement and transport layer (the exchange and the Gram strategies build
    on it, ``_shard_exchange.py`` and ``_shard_gram.py``; the facade is ``sharded.py``)."""

    def _init_transport(self, calibration: Batch, options: RayShardedOptions) -> None:
        """Set the placement and transport state from the options; nothing starts until the
        first per-task request (``pool``)."""
        # the arena holds one batch of the calibration batch's shapes (see ``_step_ref``)
        self._batch_layout = tuple(
            (tuple(part.shape), part.dtype) for part in calibration if isinstance(part, Tensor)
        )
        self._arena_batch_token = -1  # the step whose batch the arena holds
        self.requested_actors = requested_actors(options)  # 0: decided when the actors start
        self.requested_transport = options.transport
        self.transport = "object_store"  # decided when the actors start (see ``_open_arena``)
        self.transport_reason = ""  # why ``auto`` fell back to the object store on one machine
        self._arena: SharedArena | None = None
        self._barrier: NodeBarrier | None = None  # the driver's end: releases actors on failure
        self._exchange_ids = count(1)  # a new id per attempt at an exchange (see NodeBarrier)
        self.chunk_size = options.chunk_size
        self.actor_resources = (
            options.cpus_per_actor,
            options.gpus_per_actor,
            options.threads_per_actor or max(1, round(options.cpus_per_actor)),
        )
        self.ready_timeout_s = options.ready_timeout_s
        self.device = next(self.model.parameters()).device
        self.stats = TransferStats()
        self.num_actors = 0
        self.requested_driver_share = options.driver_share
        self.driver_share = 0  # 1 when the driver computes rank 0's share (see the docs page)
        self._own: ReplicaVJP | None = None  # the driver's share of the VJPs
        self.task_shards: list[list[int]] = []
        self.column_bounds: list[int] = []
        self._reshard_bytes = 0  # per parameter-shard exchange, set when the actors start
        self._pool: ShardPool | None = None
        self._tensors = [*self.model.parameters(), *self.model.buffers()]
        self._synced_version: tuple[int, ...] | None = None
        self._state_holder: list[Any] | None = []
        self._state_nbytes = 0
        self._version_id = -1

    # ---- typed access to what exists once the actors started --------------------------------
    @property
    def arena(self) -> SharedArena:
        """The shared-memory arena (``transport == "shared_memory"`` only)."""
        if self._arena is None:
            raise RuntimeError("ray_sharded: no shared-memory arena (transport object_store)")
        return self._arena

    @property
    def barrier(self) -> NodeBarrier:
        """The driver's end of the arena's barrier (``transport == "shared_memory"`` only)."""
        if self._barrier is None:
            raise RuntimeError("ray_sharded: no barrier (transport object_store)")
        return self._barrier

    @property
    def own_share(self) -> ReplicaVJP:
        """The driver's share of the VJPs (``driver_share`` only)."""
        if self._own is None:
            raise RuntimeError("ray_sharded: the driver computes no share of the tasks")
        return self._own

    @property
    def pool(self) -> ShardPool:
        """The K actors, started on the first per-task request (an EW run never starts them)."""
        if self._pool is None:
            connect()
            self._plan_workers()
            cpus, gpus, threads = self.actor_resources
            if self.driver_share:
                self._own = ReplicaVJP(
                    self.model, self.taskset, self.task_shards[0], self.chunk_size
                )
            self._pool = ShardPool(
                self.model,
                self.taskset,
                self.task_shards,
                self.column_bounds,
                cpus,
                gpus,
                threads,
                self.ready_timeout_s,
                self.chunk_size,
                first_rank=self.driver_share,
            )
            # an engine dropped without ``close`` must not leave its actors holding their CPUs
            # (one may wait at a barrier for a prefetched step nobody will collect)
            release = weakref.finalize(self, self._pool.close)
            release.atexit = False  # at exit Ray goes down with its actors anyway
            self._open_arena(self._pool)
        return self._pool

    def _plan_workers(self) -> None:
        """K, W, every worker's tasks (contiguous) and the (W + 1,) parameter-shard bounds."""
        share = self.driver_share = int(self._driver_shares())
        requested = self.requested_actors
        if not requested:  # one worker per device (or per CPU), the driver's included
            gpus = self.actor_resources[1]
            cluster_gpus = int(ray.cluster_resources().get("GPU", 0)) if gpus > 0 else 2
            requested = max(cluster_gpus - share, 1)
        self.num_actors = max(min(requested, self.num_tasks - share), 1)
        workers = self.num_actors + share
        self.task_shards = [
            [int(t) for t in shard] for shard in np.array_split(np.arange(self.num_tasks), workers)
        ]
        self.column_bounds = [
            int(b) for b in np.linspace(0, self.num_shared, workers + 1).round().astype(int)
        ]
        # per parameter-shard exchange: every worker's rows, less its own columns, in J's dtype
        item = next(iter(self.model.shared_parameters())).element_size()
        bounds = self.column_bounds
        own = sum(
            len(shard) * (high - low)
            for shard, (low, high) in zip(self.task_shards, pairwise(bounds), strict=True)
        )
        self._reshard_bytes = (self.num_tasks * self.num_shared - own) * item

    def _driver_shares(self) -> bool:
        """Whether the driver computes a share of the tasks itself: as asked, else (auto) when
        its device is of the actors' kind (a CPU driver beside GPU actors would be the slowest
        worker of every step)."""
        if self.requested_driver_share is not None:
            return self.requested_driver_share
        return (self.actor_resources[1] > 0) == (self.device.type == "cuda")

    @property
    def workers(self) -> int:
        """W: the processes that compute a share of the tasks (the actors, and the driver when
        it shares); rank 0 is the driver's share when it has one."""
        return self.num_actors + self.driver_share

    def _open_arena(self, pool: ShardPool) -> None:
        """Choose the transport: shared memory when every actor shares the driver's machine and
        works on the CPU and ``/dev/shm`` has room (``auto``), else the object store."""
        if self.requested_transport == "object_store" or self.actor_resources[1] > 0:
            return  # GPU actors: their tensors live on the devices (see the module notes)
        try:
            if not pool.on_this_node():
                raise OSError("an actor runs on another machine")
            self._arena = SharedArena.create(self._arena_tensors(), self.workers)
            if not pool.attach(self._arena.layout):
                raise OSError("an actor cannot map the driver's /dev/shm (another container?)")
        except OSError as error:
            if self._arena is not None:
                self._arena.close()
                self._arena = None
            if self.requested_transport == "shared_memory":
                self.close()
                raise ValueError(
                    f"engine_options.transport: shared_memory is not possible: {error}"
                ) from error
            # auto: recorded (report's ``transport_reason``), and said when every actor is on
            # this machine: such a run moves every byte through Ray and is slower for it
            self.transport_reason = f"shared memory not possible: {error}"
            if pool.on_this_node():
                log.warning("ray_sharded: using Ray's object store (%s)", self.transport_reason)
            return
        rank = 0 if self.driver_share else None  # a member when it writes rows of its own
        self._barrier = NodeBarrier(self.arena.layout.barrier_paths, rank)
        self.transport = "shared_memory"

    def _arena_tensors(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The shared buffers: the model's state, the (T, P) exchange, the (P,) direction, for
        one-call steps the (W, T, T) partial Grams and the (T,) weights, and one batch."""
        dtype = next(iter(self.model.shared_parameters())).dtype
        tensors = {
            f"state/{name}": (tuple(tensor.shape), tensor.dtype)
            for name, tensor in self.model.state_dict().items()
        }
        tensors["exchange"] = ((self.num_tasks, self.num_shared), dtype)
        tensors["direction"] = ((self.num_shared,), dtype)
        tensors["partials"] = ((self.workers, self.num_tasks, self.num_tasks), dtype)
        tensors["weights"] = ((self.num_tasks,), dtype)
        if len(self._batch_layout) == 2:
            tensors["batch/inputs"], tensors["batch/targets"] = self._batch_layout
        return tensors

    def _check_transport(self) -> None:
        """After a restart: a replacement actor on another machine dropped the shared memory."""
        if self._arena is not None and self.pool.layout is None:
            self.barrier.close()
            self._arena.close()
            self._arena, self._barrier, self.transport = None, None, "object_store"

    def _version(self) -> tuple[int, ...]:
        return tuple(t._version for t in self._tensors)

    def _parameters_ref(self, replay: Replay) -> tuple[int, list[Any] | None]:
        """The object holding the driver's parameters and buffers (put again when they changed)."""
        if replay.version != self._version():
            raise RuntimeError(
                "ray_sharded: the model changed between forward() and a gradient request"
            )
        if self._synced_version != replay.version:
            state = self.model.state_dict()
            if self._arena is not None:
                for name, tensor in state.items():
                    self.arena[f"state/{name}"].copy_(tensor.detach())
                self._state_holder = None
            else:
                self._state_holder = [ray.put([t.detach().cpu().numpy() for t in state.values()])]
            self._state_nbytes = sum(t.numel() * t.element_size() for t in state.values())
            self._synced_version = replay.version
            self._version_id += 1
        return self._version_id, self._state_holder

    def _ship_parameters(self, version_id: int, rank: int) -> None:
        if self.pool.versions[rank] != version_id:
            self.stats.add("parameters", self._state_nbytes)
            self.pool.versions[rank] = version_id

    def _step_ref(self, batch: Batch, replay: Replay) -> tuple[Any, int, int]:
        """The batch and the RNG state of the step: the batch in the arena when it has the
        calibration batch's shapes (the RNG state, 5 kB, then travels inside the call), else
        both put in the object store once per step. Why: the put cost ≈ 1.4 ms of the driver's
        step (256 × 272 numbers), the copy into the arena ≈ 0.05 ms. Called only while the
        actors are idle (every caller settles the exchange in flight first)."""
        if self._arena is not None and self._batch_fits_arena(batch):
            if self._arena_batch_token != replay.token:  # another step's batch may be there
                self.arena["batch/inputs"].copy_(batch[0].detach())
                self.arena["batch/targets"].copy_(batch[1].detach())
                self._arena_batch_token = replay.token
            batch_bytes = sum(part.numel() * part.element_size() for part in batch)
            rng_bytes = nbytes_of(list(replay.rng.values()))
            return {"rng": replay.rng, "batch_in_arena": True}, batch_bytes, rng_bytes
        if replay.step_ref is None:
            inputs, targets = to_numpy(batch[0]), to_numpy(batch[1])
            step = {"inputs": inputs, "targets": targets, "rng": replay.rng}
            replay.step_ref = (
                ray.put(step),
                nbytes_of([inputs, targets]),
                nbytes_of(list(replay.rng.values())),
            )
        return replay.step_ref

    def _batch_fits_arena(self, batch: Batch) -> bool:
        """Whether ``batch`` is (inputs, targets) of the arena's batch shapes and dtypes."""
        parts = tuple((tuple(part.shape), part.dtype) for part in batch if isinstance(part, Tensor))
        return len(self._batch_layout) == len(batch) == 2 and parts == self._batch_layout

    def _get_all(self, refs: list[Any], exchange_id: int) -> list[Any]:
        """``ray.get(refs)`` of calls that meet at the barrier of ``exchange_id``: when one fails,
        the others are released first (they would wait for it), then its error is raised."""
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(ready)
            except ray.exceptions.RayError:
                self.barrier.abort(exchange_id)
                ray.wait(pending, num_returns=len(pending), timeout=60)  # released calls end
                raise
        return ray.get(refs)

    def _actor_rows_bytes(self) -> int:
        """Bytes of the (T, P) exchange the actors wrote (all of it, less the driver's rows)."""
        exchange = self.arena["exchange"]
        own = len(self.task_shards[0]) if self.driver_share else 0
        return (exchange.shape[0] - own) * exchange.shape[1] * exchange.element_size()

    def _actor_direction_bytes(self) -> int:
        """Bytes of the arena's (P,) direction the actors wrote (less the driver's columns)."""
        direction = self.arena["direction"]
        own = self.column_bounds[1] if self.driver_share else 0
        return (direction.numel() - own) * direction.element_size()
