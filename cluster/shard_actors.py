"""The actor side of engine ``ray_sharded`` (``cluster/sharded.py``): one model replica per
device computing the Jacobian rows of its share of the tasks (the pool that starts and replaces
these actors is ``cluster/_shard_pool.py``). What the rows are, how they are exchanged and what
is charged is documented with the engine (``docs/engines/ray-sharded.md``); this module only
does what an actor is asked.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import ray
import torch
from mtlbench.cluster._shard_collective_steps import CollectiveSteps
from mtlbench.cluster._shard_replica import (
    ReplicaVJP,
    as_tensor,
    block_gram,
    combine_pieces,
    per_task_heads,
    set_rng_state,
)
from mtlbench.cluster.collective import CollectiveMember, ShardLayout
from mtlbench.cluster.node_shared import ArenaLayout, BarrierAborted, NodeBarrier, SharedArena
from mtlbench.harness.gradients import StepState
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet
from torch import Tensor

ACTOR_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)
# An actor waits this long at the barrier for its peers' rows before it gives up; the driver
# releases it at once when a peer fails, so only a hung peer reaches it.
BARRIER_TIMEOUT_S = 3600.0
CONTROL = "control"  # the actors' concurrency group for calls that must not queue behind work


class ShardWorker(CollectiveSteps):
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
        # transport collective: this actor's member of the workers' process group, and who
        # holds what in it (the driver is group rank 0; this actor is rank ``index + 1``)
        self.member: CollectiveMember | None = None
        self.group_layout: ShardLayout | None = None

    def _mapped(self) -> tuple[SharedArena, NodeBarrier]:
        """The driver's arena and the barrier (``shared_memory`` transport only)."""
        if self.arena is None or self.barrier is None:
            raise RuntimeError("a shared-memory call reached an actor that maps no arena")
        return self.arena, self.barrier

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
        arena, _ = self._mapped()
        for name, parameter in self.model.named_parameters():
            parameter.data = arena[f"state/{name}"]

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
            arena, _ = self._mapped()
            state = {name: arena[f"state/{name}"] for name in names}
            buffers = {name: state[name] for name, _ in self.model.named_buffers() if name in state}
            self.model.load_state_dict(buffers, strict=False)
        else:
            arrays = ray.get(holder[0])
            state = {
                name: as_tensor(array, self.device)
                for name, array in zip(names, arrays, strict=True)
            }
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
            arena, _ = self._mapped()
            inputs, targets = (arena[f"batch/{part}"].clone() for part in ("inputs", "targets"))
        else:
            inputs, targets = (as_tensor(step[p], self.device) for p in ("inputs", "targets"))
        set_rng_state(step["rng"], self.device)
        self.model.train(training)
        representation = self.model.encoder(inputs)
        detached = representation.detach().requires_grad_(True)
        task_losses = None
        if not per_task_heads(self.model):
            task_losses = self.taskset.losses(self.model.heads(detached.view_as(detached)), targets)
        return _replayed_state(inputs, targets, representation, detached, task_losses)

    def _rows(self, version, holder, step, training, out: Tensor | None = None) -> Tensor:
        """This actor's rows (n_k, P), written into ``out`` when given."""
        self._sync(version, holder)
        state = self._replay(step, training)
        z_grads = self.vjp.own_representation_grads(state)
        return self.vjp.own_jacobian(state, z_grads, out)

    def jacobian_rows(self, version, holder, step, training) -> np.ndarray:
        """Rows (n_k, P) of the shared Jacobian for this actor's tasks (``gather``)."""
        return self._rows(version, holder, step, training).cpu().numpy()

    def jacobian_blocks(
        self, token, version, holder, step, training
    ) -> list[np.ndarray | None] | np.ndarray | None:
        """This actor's rows cut at the parameter shards: block l goes to actor l (own: None);
        one worker's single block unwrapped (Ray's ``num_returns=1`` takes one value)."""
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
        arena, _ = self._mapped()
        own_rows = arena["exchange"][self.tasks[0] : self.tasks[-1] + 1]
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

    def _own_columns_after_barrier(
        self, exchange_id, token, version, holder, step, training
    ) -> Tensor:
        """Write this actor's rows, wait until every worker has written its own, then hold (and
        return) this actor's column shard of the exchange, (T, P_rank), a strided view."""
        self.write_rows(token, version, holder, step, training)
        arena, barrier = self._mapped()
        barrier.arrive_and_wait(exchange_id, BARRIER_TIMEOUT_S)
        start, stop = self.column_bounds[self.rank], self.column_bounds[self.rank + 1]
        columns = arena["exchange"][:, start:stop]
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
        arena, barrier = self._mapped()
        torch.mm(columns, columns.T, out=arena["partials"][self.rank])
        barrier.arrive_and_wait(exchange_id + 1, BARRIER_TIMEOUT_S)
        try:
            barrier.arrive_and_wait(exchange_id + 2, BARRIER_TIMEOUT_S)
        except BarrierAborted:
            return  # no Σ aₜgₜ this step, or a peer failed
        self.combine(token, None)
        barrier.arrive_and_wait(exchange_id + 3, BARRIER_TIMEOUT_S)

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
        if self.arena is None:
            if weights is None:
                raise RuntimeError("combine: no weights given and no arena to read them from")
            out = self.pieces[0].new_empty(stop - start)
            combine_pieces(self.pieces, as_tensor(weights, self.device), out)
            return out.cpu().numpy()
        arena_weights = (
            self.arena["weights"] if weights is None else as_tensor(weights, self.device)
        )
        combine_pieces(self.pieces, arena_weights, self.arena["direction"][start:stop])
        return None

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
        state = _replayed_state(detached, targets, detached, detached, task_losses)
        return self.vjp.own_representation_grads(state).cpu().numpy()


def _replayed_state(
    inputs: Tensor,
    targets: Tensor,
    representation: Tensor,
    detached: Tensor,
    task_losses: Tensor | None,
) -> StepState:
    """A StepState for a worker's VJPs. A replay keeps no head outputs, and no task losses when
    per-task heads give all T z-gradients (``ReplicaVJP`` reads neither then): empty stand-ins."""
    losses = task_losses if task_losses is not None else detached.new_empty(0)
    return StepState(inputs, targets, representation, detached, (), losses)


# ray's stubs type remote()'s options without ``concurrency_groups`` (a documented option)
RemoteShardWorker = ray.remote(concurrency_groups={CONTROL: 1})(ShardWorker)  # type: ignore[call-overload]
