"""The pool of engine ``ray_sharded``'s actors (``ShardWorker``, ``cluster/shard_actors.py``):
started with their resources, replaced when they die, attached to the driver's shared memory.
"""

from __future__ import annotations

import copy

import ray
from mtlbench.cluster.node_shared import ArenaLayout
from mtlbench.cluster.shard_actors import ACTOR_FAILURES, RemoteShardWorker
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet


class ShardPool:
    """K actors, replaced when they die; tracks which parameter version each one holds."""

    def __init__(
        self,
        model: MultiTaskModel,
        taskset: TaskSet,
        task_shards: list[list[int]],
        column_bounds: list[int],
        cpus_per_actor: float,
        gpus_per_actor: float,
        threads_per_actor: int,
        ready_timeout_s: float,
        chunk_size: int = 64,
        first_rank: int = 0,
    ):
        """task_shards, column_bounds: every worker's tasks and the (W+1,) parameter-shard
        offsets; the actors are workers ``first_rank`` … W−1 (rank 0 is the driver's own share
        when ``first_rank`` is 1), so actor i works as rank ``first_rank + i``."""
        self.chunk_size = chunk_size
        self.first_rank = first_rank
        self.model_ref = ray.put(copy.deepcopy(model).cpu())
        self.taskset = taskset
        self.task_shards = task_shards
        self.column_bounds = column_bounds
        self.cpus, self.gpus, self.threads = cpus_per_actor, gpus_per_actor, threads_per_actor
        self.ready_timeout_s = ready_timeout_s
        self.actors = [self._spawn(index) for index in range(len(task_shards) - first_rank)]
        self.versions = [-1] * len(self.actors)
        self.layout: ArenaLayout | None = None  # shared_memory transport: mapped by every actor
        self._wait_ready(list(range(len(self.actors))))

    def on_this_node(self) -> bool:
        """Whether every actor runs on the driver's machine (so it can map the driver's files)."""
        here = ray.get_runtime_context().get_node_id()
        return all(node == here for node in ray.get([a.node_id.remote() for a in self.actors]))

    def attach(self, layout: ArenaLayout | None, indices: list[int] | None = None) -> bool:
        """Have the actors (all, or those at ``indices``) map the driver's arena; None: all stop
        using one. False (and no arena kept) when one of them cannot map it."""
        chosen = range(len(self.actors)) if indices is None or layout is None else indices
        mapped = all(ray.get([self.actors[index].attach.remote(layout) for index in chosen]))
        if not mapped:
            ray.get([actor.attach.remote(None) for actor in self.actors])
            layout = None
        self.layout = layout
        return mapped

    def _spawn(self, index: int):
        rank = self.first_rank + index
        return RemoteShardWorker.options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0, max_task_retries=0
        ).remote(
            self.model_ref,
            self.taskset,
            self.task_shards[rank],
            rank,
            self.column_bounds,
            self.threads,
            "cuda" if self.gpus > 0 else "cpu",
            self.chunk_size,
        )

    def _wait_ready(self, indices: list[int]) -> None:
        pending = [self.actors[index].pid.remote() for index in indices]
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=self.ready_timeout_s)
        if len(ready) < len(pending):
            free = ray.available_resources()
            raise RuntimeError(
                f"ray_sharded: could not start {len(pending)} actor(s) with {self.cpus} CPU and "
                f"{self.gpus} GPU each within {self.ready_timeout_s:.0f} s (free: "
                f"CPU {free.get('CPU', 0):g}, GPU {free.get('GPU', 0):g}); lower actors or "
                "cpus_per_actor, or give the run fewer resources"
            )
        ray.get(ready)  # surfaces a constructor error

    def pids(self) -> list[int]:
        return ray.get([actor.pid.remote() for actor in self.actors])

    def replace_dead(self) -> int:
        """Replace every actor that no longer answers; returns how many were replaced."""
        dead = []
        for index, actor in enumerate(self.actors):
            try:
                ray.get(actor.pid.remote(), timeout=30)
            except (*ACTOR_FAILURES, ray.exceptions.GetTimeoutError):
                dead.append(index)
        for index in dead:
            ray.kill(self.actors[index], no_restart=True)
            self.actors[index] = self._spawn(index)
            self.versions[index] = -1
        if dead:
            self._wait_ready(dead)
            # a replacement on another machine drops the shared memory: back to the store
            if self.layout is not None and not (
                self.on_this_node() and self.attach(self.layout, dead)
            ):
                self.attach(None)
        return len(dead)

    def close(self) -> None:
        """Kill the actors (at once: one may be waiting at a barrier for a step that will not
        come). Idempotent; nothing to do once Ray is shut down."""
        if ray.is_initialized():
            for actor in self.actors:
                ray.kill(actor, no_restart=True)
        self.actors = []
