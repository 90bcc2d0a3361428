"""The actor side of engine ``ray_sharded`` (``cluster/sharded.py``): one model replica per
device computing the Jacobian rows of its share of the tasks, and the pool that starts, replaces
and attaches those actors. What the rows are, how they are exchanged and what is charged is
documented with the engine; this module only does what an actor is asked.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from typing import Any

import numpy as np
import ray
import torch
from mtlbench.cluster.node_shared import ArenaLayout, BarrierAborted, NodeBarrier, SharedArena
from mtlbench.harness.gradients import BatchedEngine, StepState, _stochastic_or_stateful
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet
from torch import Tensor

ACTOR_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)
# An actor waits this long at the barrier for its peers' rows before it gives up; the driver
# releases it at once when a peer fails, so only a hung peer reaches it.
BARRIER_TIMEOUT_S = 3600.0
CONTROL = "control"  # the actors' concurrency group for calls that must not queue behind work


# ---- what a replay needs and what crosses the wire -----------------------------------------
def rng_state(device: torch.device) -> dict[str, np.ndarray]:
    """The generators a forward on ``device`` draws from (CPU always; CUDA when used), as arrays."""
    state = {"cpu": torch.get_rng_state().numpy()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).numpy()
    return state


def set_rng_state(rng: dict[str, np.ndarray], device: torch.device) -> None:
    torch.set_rng_state(as_tensor(rng["cpu"], torch.device("cpu")))
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(as_tensor(rng["cuda"], torch.device("cpu")), device)


def nbytes_of(arrays: list[np.ndarray]) -> int:
    return sum(int(a.nbytes) for a in arrays)


def to_numpy(tensor: Tensor) -> np.ndarray:
    """A C-contiguous CPU array of ``tensor``, same dtype (no copy when it already is one)."""
    return tensor.detach().cpu().contiguous().numpy()


def as_tensor(array: np.ndarray, device: torch.device) -> Tensor:
    """A tensor over a (possibly read-only, object-store backed) array, moved to ``device``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only zero-copy arrays are only read
        return torch.as_tensor(array).to(device)


def per_task_heads(model: MultiTaskModel) -> bool:
    """Whether the ``batched`` engine gets all T z-gradients from one heads pass on ``model``."""
    per_task = getattr(model.heads, "forward_per_task", None)
    return per_task is not None and not _stochastic_or_stateful(model.heads)


def block_gram(pieces: list[Tensor]) -> Tensor:
    """X Xᵀ for X the row-wise concatenation of ``pieces`` (n_i, N), without forming X."""
    if len(pieces) == 1:
        return pieces[0] @ pieces[0].T
    offsets = np.cumsum([0] + [piece.shape[0] for piece in pieces])
    total = int(offsets[-1])
    gram = pieces[0].new_empty(total, total)
    for i, first in enumerate(pieces):
        for j in range(i, len(pieces)):
            block = first @ pieces[j].T
            gram[offsets[i] : offsets[i + 1], offsets[j] : offsets[j + 1]] = block
            if j != i:
                gram[offsets[j] : offsets[j + 1], offsets[i] : offsets[i + 1]] = block.T
    return gram


def combine_pieces(pieces: list[Tensor], weights: Tensor, out: Tensor) -> Tensor:
    """Σ_t weights_t x_t into ``out`` (N,), for x the row-wise concatenation of ``pieces``
    (n_i, N) (one parameter shard of every worker's rows), without forming x."""
    weights = weights.to(pieces[0].dtype)
    offset = 0
    for index, piece in enumerate(pieces):
        coefficients = weights[offset : offset + piece.shape[0]]
        offset += piece.shape[0]
        if index == 0:
            torch.mv(piece.T, coefficients, out=out)
        else:
            out.addmv_(piece.T, coefficients)
    return out


# ---- the actor -------------------------------------------------------------------------------
class ReplicaVJP(BatchedEngine):
    """The ``batched`` engine's per-task VJPs restricted to one worker's share of the tasks: an
    actor's, on its replica, or the driver's own share, on the driver's model and graph.

    Not an engine the harness sees: no calibration and no budget (the driver charges every pass
    the workers make, see ``RayShardedEngine._jacobian_charges``).
    """

    def __init__(self, model: MultiTaskModel, taskset: TaskSet, tasks: list[int], chunk_size: int):
        self.model, self.taskset, self.chunk_size = model, taskset, chunk_size
        self.own = slice(tasks[0], tasks[-1] + 1)  # contiguous
        self.count = len(tasks)
        self.num_tasks = len(taskset)

    def charge(self, kind: str, batch_size: int, passes: int = 1) -> None:
        """Charged on the driver."""

    def own_representation_grads(self, state: StepState) -> Tensor:
        """(n_k, *z.shape) ∂Lₜ/∂z of this actor's tasks (``state.task_losses`` unused when the
        heads are per-task: one heads pass gives all T, this actor keeps its own)."""
        if per_task_heads(self.model):
            self.num_tasks = len(self.taskset)
            return self._representation_grads(state)[self.own]
        self.num_tasks = self.count
        return self._representation_grads(
            dataclasses.replace(state, task_losses=state.task_losses[self.own])
        )

    def own_jacobian(self, state: StepState, z_grads: Tensor, out: Tensor | None = None) -> Tensor:
        """(n_k, P) rows of the shared Jacobian, from this actor's z-gradients (into ``out``)."""
        self.num_tasks = z_grads.shape[0]
        return self._shared_jacobian(state, z_grads, out)


class ShardWorker:
    """One replica of the model on one device, computing the rows of its share of the tasks.

    tasks: the task indices this actor owns (contiguous). column_bounds: (K+1,) offsets of the
    parameter shards over the P shared parameters; ``rank`` is this actor's shard.
    """

    def __init__(
        self,
        model: MultiTaskModel,
        taskset: TaskSet,
        tasks: list[int],
        rank: int,
        column_bounds: list[int],
        threads: int,
        device: str,
        chunk_size: int = 64,
    ):
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        self.device = torch.device(
            "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
        )
        self.model = model.to(self.device)
        self.taskset = taskset
        self.tasks = tasks
        self.rank = rank
        self.column_bounds = column_bounds
        self.vjp = ReplicaVJP(self.model, taskset, tasks, chunk_size)
        self.version = -1
        self.token = -1
        self.rows_held: Tensor | None = None  # (n_k, P) this actor's tasks, all shared params
        # this actor's parameter shard of every actor's rows, in actor (= task) order: its own
        # rows as a view, the others' blocks as received (n_j, P_rank); never concatenated
        self.pieces: list[Tensor] | None = None
        self.arena: SharedArena | None = None  # transport shared_memory: the driver's buffers
        # bytes this actor read that another process wrote, by kind (counted here, on the
        # receiving side, so tests can hold the driver's bookkeeping against it)
        self.received: dict[str, int] = {"parameters": 0, "reshard": 0}
        self.barrier: NodeBarrier | None = None  # and the barrier among the actors

    # Answered on their own thread (concurrency group "control") even while the actor works:
    # an actor waits at the barrier for the driver's rows, so a driver that asked it for its pid
    # in the meantime (a liveness check, a test) would otherwise never be answered.
    @ray.method(concurrency_group=CONTROL)
    def pid(self) -> int:
        return os.getpid()

    @ray.method(concurrency_group=CONTROL)
    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def attach(self, layout: ArenaLayout | None) -> bool:
        """Map the driver's shared buffers (``shared_memory`` transport); None: use the object
        store. False when this process cannot map them (it does not see the driver's files)."""
        if self.barrier is not None:
            self.barrier.close()
        self._own_parameters()
        self.arena, self.barrier = None, None
        if layout is None:
            return True
        try:
            self.arena = SharedArena.attach(layout)
        except OSError:
            return False
        self.barrier = NodeBarrier(layout.barrier_paths, self.rank)
        self._alias_parameters()
        self.version = -1  # the buffers are loaded at the next call
        return True

    def _alias_parameters(self) -> None:
        """Point every parameter at its slot of the arena's state: the driver's write of the
        state is then this replica's whole parameter update, with no copy (4 MB for the MLP of
        ``benchmarks/ray_sharding.py``, ≈ 1 ms) at the start of every call. Safe because the
        driver writes the state only while the actors are idle, and an actor never writes a
        parameter. Buffers stay copies: a train-mode replay updates BatchNorm's running
        statistics in place, which must not reach the shared state."""
        for name, parameter in self.model.named_parameters():
            parameter.data = self.arena[f"state/{name}"]

    def _own_parameters(self) -> None:
        """Give the parameters storage of their own again (leaving the arena)."""
        if self.arena is not None:
            for parameter in self.model.parameters():
                parameter.data = parameter.data.clone()

    def _sync(self, version: int, holder: list[Any] | None) -> None:
        """Load the driver's parameters and buffers: from the arena (holder None), else from the
        object the driver put."""
        if version == self.version:
            return
        names = list(self.model.state_dict())
        if holder is None:  # the parameters are the arena's already (``_alias_parameters``)
            state = {name: self.arena[f"state/{name}"] for name in names}
            buffers = {name: state[name] for name, _ in self.model.named_buffers() if name in state}
            self.model.load_state_dict(buffers, strict=False)
        else:
            arrays = ray.get(holder[0])
            state = {name: as_tensor(array, self.device) for name, array in zip(names, arrays)}
            self.model.load_state_dict(state)
        self.received["parameters"] += sum(t.numel() * t.element_size() for t in state.values())
        self.version = version

    @ray.method(concurrency_group=CONTROL)
    def received_bytes(self) -> dict[str, int]:
        return dict(self.received)

    def _replay(self, step: dict[str, Any], training: bool) -> StepState:
        """The driver's forward, redone: same parameters, batch and RNG state. The heads are
        replayed only when the z-gradients need the step's own heads forward (no per-task pass)."""
        if step.get("batch_in_arena"):  # copied (B × D_in): no tensor kept past this call may
            # point at the arena's batch, which the driver rewrites for the next step
            inputs, targets = (
                self.arena[f"batch/{part}"].clone() for part in ("inputs", "targets")
            )
        else:
            inputs, targets = (as_tensor(step[p], self.device) for p in ("inputs", "targets"))
        set_rng_state(step["rng"], self.device)
        self.model.train(training)
        representation = self.model.encoder(inputs)
        detached = representation.detach().requires_grad_(True)
        task_losses = None
        if not per_task_heads(self.model):
            task_losses = self.taskset.losses(self.model.heads(detached.view_as(detached)), targets)
        return StepState(inputs, targets, representation, detached, None, task_losses)

    def _rows(self, version, holder, step, training, out: Tensor | None = None) -> Tensor:
        """This actor's rows (n_k, P), written into ``out`` when given."""
        self._sync(version, holder)
        state = self._replay(step, training)
        z_grads = self.vjp.own_representation_grads(state)
        return self.vjp.own_jacobian(state, z_grads, out)

    def jacobian_rows(self, version, holder, step, training) -> np.ndarray:
        """Rows (n_k, P) of the shared Jacobian for this actor's tasks (``gather``)."""
        return self._rows(version, holder, step, training).cpu().numpy()

    def jacobian_blocks(self, token, version, holder, step, training) -> list[np.ndarray | None]:
        """This actor's rows cut at the parameter shards: block l goes to actor l (own: None)."""
        rows = self._rows(version, holder, step, training)
        self.token, self.rows_held, self.pieces = token, rows, None
        blocks: list[np.ndarray | None] = []
        for shard in range(len(self.column_bounds) - 1):
            start, stop = self.column_bounds[shard], self.column_bounds[shard + 1]
            # one copy into a contiguous block (what the object store takes out of band)
            blocks.append(
                None if shard == self.rank else rows[:, start:stop].contiguous().cpu().numpy()
            )
        return blocks if len(blocks) > 1 else blocks[0]

    def write_rows(self, token, version, holder, step, training) -> None:
        """Shared memory: write this actor's rows (n_k, P) into the arena's (T, P) exchange, all
        columns: the other actors read their shards of them, and with this actor's own block
        beside them its column shard is one (T, P_rank) view, so its partial Gram is one matrix
        product (measured 2x faster here than the four products of separate blocks). The VJPs
        write straight into the exchange: no rows of its own, no copy."""
        own_rows = self.arena["exchange"][self.tasks[0] : self.tasks[-1] + 1]
        self._rows(version, holder, step, training, out=own_rows)
        self.token, self.rows_held, self.pieces = token, None, None

    def rows_and_gram(self, exchange_id, token, version, holder, step, training) -> np.ndarray:
        """Shared memory: write this actor's rows, wait at the barrier until every actor has
        written its own, then return this actor's partial Gram (T, T) from its column shard
        of the exchange, read in place (a strided view): one call per step, no round trip
        through the driver between the rows and the Gram."""
        columns = self._own_columns_after_barrier(
            exchange_id, token, version, holder, step, training
        )
        return (columns @ columns.T).cpu().numpy()

    def _own_columns_after_barrier(self, exchange_id, token, version, holder, step, training):
        """Write this actor's rows, wait until every worker has written its own, then hold (and
        return) this actor's column shard of the exchange, (T, P_rank), a strided view."""
        self.write_rows(token, version, holder, step, training)
        if self.barrier is not None:
            self.barrier.arrive_and_wait(exchange_id, BARRIER_TIMEOUT_S)
        start, stop = self.column_bounds[self.rank], self.column_bounds[self.rank + 1]
        columns = self.arena["exchange"][:, start:stop]
        self.pieces = [columns]
        peers = columns.shape[0] - len(self.tasks)  # rows of this shard the others wrote
        self.received["reshard"] += peers * columns.shape[1] * columns.element_size()
        return columns

    def rows_gram_combine(self, exchange_id, token, version, holder, step, training) -> None:
        """Shared memory, the driver a barrier member: the whole step in one call, every hand-over
        through the arena and the barrier, none through Ray. Phases (barrier ids ``exchange_id``
        + 0 … 3): rows written; partial Grams written (the driver sums them and solves); weights
        written by the driver (it calls this phase off when the step asks for no Σ aₜgₜ: the
        rows stay resident for a later request); this actor's slice of the direction written."""
        columns = self._own_columns_after_barrier(
            exchange_id, token, version, holder, step, training
        )
        torch.mm(columns, columns.T, out=self.arena["partials"][self.rank])
        self.barrier.arrive_and_wait(exchange_id + 1, BARRIER_TIMEOUT_S)
        try:
            self.barrier.arrive_and_wait(exchange_id + 2, BARRIER_TIMEOUT_S)
        except BarrierAborted:
            return  # no Σ aₜgₜ this step, or a peer failed
        self.combine(token, None)
        self.barrier.arrive_and_wait(exchange_id + 3, BARRIER_TIMEOUT_S)

    def assemble(self, token: int, task_counts: list[int], *blocks: np.ndarray) -> np.ndarray:
        """Hold every actor's block of this parameter shard in task order; return its Gram.

        blocks: the other actors' blocks (n_j, P_rank), in actor order. Returns (T, T), formed
        block by block: the column shard (T, P_rank) is never copied into one tensor.
        """
        if token != self.token or self.rows_held is None:
            raise RuntimeError(f"assemble: step {token} is not resident (holding {self.token})")
        start, stop = self.column_bounds[self.rank], self.column_bounds[self.rank + 1]
        others = iter(blocks)
        self.received["reshard"] += sum(block.nbytes for block in blocks)
        self.pieces = [
            self.rows_held[:, start:stop]
            if shard == self.rank
            else as_tensor(next(others), self.device)
            for shard in range(len(task_counts))
        ]
        return block_gram(self.pieces).cpu().numpy()

    def combine(self, token: int, weights: np.ndarray | None) -> np.ndarray | None:
        """This actor's slice (P_rank,) of Σ_t weights_t g_t: returned, or with shared memory
        written into the arena's direction (P,) at this actor's columns (weights None: the
        arena's)."""
        if token != self.token or self.pieces is None:
            raise RuntimeError(f"combine: step {token} is not resident (holding {self.token})")
        start, stop = self.column_bounds[self.rank], self.column_bounds[self.rank + 1]
        shared = self.arena is not None
        out = (
            self.arena["direction"][start:stop]
            if shared
            else self.pieces[0].new_empty(stop - start)
        )
        weights = self.arena["weights"] if weights is None else as_tensor(weights, self.device)
        combine_pieces(self.pieces, weights, out)
        return None if shared else out.cpu().numpy()

    def column_shard(self, token: int) -> np.ndarray:
        """The resident (T, P_rank) columns of the Jacobian (concatenated only for this)."""
        if token != self.token or self.pieces is None:
            raise RuntimeError(f"column_shard: step {token} is not resident (holding {self.token})")
        return torch.cat(self.pieces).cpu().numpy()

    def representation_rows(self, version, holder, step, training) -> np.ndarray:
        """∂L_t/∂z (n_k, *z.shape) for this actor's tasks, from the driver's z (MGDA-UB)."""
        self._sync(version, holder)
        detached = as_tensor(step["representation"], self.device).clone().requires_grad_(True)
        targets = as_tensor(step["targets"], self.device)
        self.model.train(training)
        task_losses = None
        if not per_task_heads(self.model):
            set_rng_state(step["rng"], self.device)
            task_losses = self.taskset.losses(self.model.heads(detached.view_as(detached)), targets)
        state = StepState(detached, targets, detached, detached, None, task_losses)
        return self.vjp.own_representation_grads(state).cpu().numpy()


_RemoteShardWorker = ray.remote(concurrency_groups={CONTROL: 1})(ShardWorker)


# ---- the pool of actors ----------------------------------------------------------------------
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
        return _RemoteShardWorker.options(
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
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
