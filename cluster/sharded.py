"""Engine ``ray_sharded``: per-task gradients sharded over K Ray actors (one per device).

The driver keeps the method's model (its optimizer updates it) and makes the passes that do not
grow with T itself, exactly as the ``loop`` engine does: the forward, the weighted backward of
EW-like methods, the heads. Only the T-fold work is sharded: for the exact per-task Jacobian
(MGDA, Sener & Koltun 2018), actor k holds a replica of the model and computes the rows of its
share of the T tasks with the ``batched`` engine's code (``BatchedEngine``, restricted to its
tasks): its ∂Lₜ/∂z from one heads pass when the heads have ``forward_per_task`` (and no dropout
or BatchNorm in training mode), else from batched heads VJPs, one per own task; then its rows of
J from batched encoder VJPs (``is_grads_batched``, ``chunk_size`` tasks at a time).

Replicas are kept identical to the driver by *receiving the parameters* (and buffers) whenever
they changed, once per step (written once by the driver, read by every actor; see "Transport"). The
alternative the design card names, every actor applying the same update, would need the update
itself shipped (the optimizer belongs to the method and runs on the driver): the same P numbers
per step, but not bit-exact (θ + (θ' − θ) ≠ θ' in floating point) and with optimizer state to
replicate. Each actor then replays the driver's forward on the same batch with the driver's RNG
state, so dropout draws the same masks and its rows equal the driver's to rounding. The batch and
the RNG state are put in the object store once per step, whatever K and however many requests.

Transport (option ``transport``): what crosses between processes goes either through Ray's
object store (``object_store``: works across machines) or through one node-local shared-memory
arena that the driver creates and every actor maps (``shared_memory``, ``cluster/node_shared.py``:
the parameters, the (T, P) exchange of Jacobian rows, the (P,) direction), with a barrier of
named pipes among the actors. ``auto`` (default) takes shared memory when every actor runs on
the driver's machine, on the CPU, and ``/dev/shm`` has room for T·P + P + P_all numbers; else the
object store. Why: on one machine the object store costs a fresh sealed object per block and a
round trip through the driver between "rows written" and "Gram formed"; measured on the 2-core CI
machine (T = 16, K = 2, ``benchmarks/ray_sharding.py``) that was ≈ 30 ms of a ≈ 160 ms step.
With shared memory an actor writes its rows into the exchange (all columns: its own block beside
the others' makes its column shard one strided (T, P_rank) view, whose Gram is one matrix product,
2x faster here than four block products), meets its peers at the barrier, and forms its partial
Gram in the same call: one call per step for rows and Gram, one for Σ aₜgₜ. The logical bytes
below are the same for both transports (what one process writes and another reads).

Prefetch (option ``prefetch``, default on): once a step has asked for the parameter-shard Gram,
the next step's exchange starts in ``forward()``, before the driver's own forward: parameters,
batch and RNG state are all known by then, so the actors' replay overlaps the driver's forward
instead of following it (measured 4-7% faster steps at K = 1 and 2, T = 8 and 16). It is
charged when asked for; one that is never asked for is dropped uncharged
(``stats.prefetch_dropped``), and at most one exchange is ever in flight.

How the Gram matrix ``G = J Jᵀ`` (T×T) is assembled, with J (T×P) in task shards (option
``gram``), bytes per step (float32, K actors, P shared parameters, P_all all parameters and
buffers, T tasks, B samples, D representation width)::

    both     parameters P_all·4·K (when they changed), batch ·K, RNG state 5 KB·K
    gather   rows to the driver: T·P·4. The driver forms J Jᵀ and keeps J, so Σ aₜgₜ costs
             no more bytes.
    parameter  all-to-all by parameter shard: actor k sends J[its tasks, shard l] to actor l,
             (K−1)/K·T·P·4 in all; each actor returns its T×T partial Gram (K·T²·4); after the
             solver, a (K·T·4 out) and each actor's slice of Σ aₜgₜ (P·4 back in all).

``parameter`` moves (K−1)/K·T·P + P + K·T² numbers against ``gather``'s T·P: fewer from K ≤ T−1
on (for K = 2, T = 8: 0.625·T·P against T·P), and the driver never holds the T×P Jacobian (its
memory stays at the size of one gradient); the sum of the K partial Grams differs from J Jᵀ by
rounding only. So ``parameter`` is the default; ``gather`` is kept for methods that need J itself.
A task-sharded all-gather among the actors instead (each needs every row to form its Gram
blocks) would move (K−1)·T·P. An actor never concatenates its column shard: it forms its partial
Gram and its slice of Σ aₜgₜ block by block from its own rows (a view) and the blocks received.

The Gram is kept with the step: asking for it again returns the same matrix, with no pass, no
byte and no charge (nothing is recomputed).

MGDA-UB needs only ∂Lₜ/∂z, T×B×D numbers made by the heads, which the driver already holds: by
default they are computed on the driver (0 bytes, T head-sized products). With
``shard_representation: true`` the actors compute them instead (z out, K·B·D·4; rows back,
T·B·D·4): worth it only when the heads are heavy (e.g. dense-prediction decoders).

Budget: every pass actually made is charged, summed over actors: the K replayed encoder forwards
and T encoder backwards for the Jacobian; for the heads, with ``forward_per_task`` K heads
forwards and K heads backwards (one per actor, as the ``batched`` engine charges its one), else K
replayed heads forwards and T heads-input backwards. A recomputation after an actor failure is
not charged (a fault is not the method's cost); it is counted in ``engine.stats.restarts``.

Failures: an actor that dies (killed, node lost) is replaced by a new one that receives the
driver's current parameters (the last synchronized state, which the driver always holds), and
the interrupted exchange is redone, so the run goes on with the numbers it would have had. With
shared memory the driver first releases the survivors waiting at the barrier for the dead actor
(each attempt has its own barrier id, so nothing of the abandoned attempt is counted); the
replacement maps the same arena (if it lands on another machine, the engine goes back to the
object store for the rest of the run).

Options (suite ``engine_options``): ``actors`` K (default: ``MTLBENCH_RAY_ACTORS``, else the
cluster's GPUs when ``gpus_per_actor`` > 0, else 2; at most T), ``gram`` (``parameter`` |
``gather``), ``transport`` (``auto`` | ``shared_memory`` | ``object_store``), ``cpus_per_actor``
(1), ``gpus_per_actor`` (0), ``threads_per_actor`` (torch threads; default ``cpus_per_actor``
rounded, at least 1), ``chunk_size`` (tasks per batched VJP on an actor, 64: lower it when an
actor's memory is short), ``shard_representation`` (false), ``max_restarts`` (3),
``ready_timeout_s`` (120: time allowed to place the actors), ``prefetch`` (true).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import ray
import torch
from mtlbench.cluster._ray_setup import connect
from mtlbench.cluster.node_shared import ArenaLayout, NodeBarrier, SharedArena
from mtlbench.harness.budget import Budget, BudgetExhausted
from mtlbench.harness.gradients import (
    Batch,
    BatchedEngine,
    GradientEngine,
    StepState,
    _stochastic_or_stateful,
    register_engine,
)
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet
from torch import Tensor

ACTORS_ENV = "MTLBENCH_RAY_ACTORS"
TRANSPORTS = ("auto", "shared_memory", "object_store")
# An actor waits this long at the barrier for its peers' rows before it gives up; the driver
# releases it at once when a peer fails, so only a hung peer reaches it.
BARRIER_TIMEOUT_S = 3600.0
ACTOR_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)
Result = TypeVar("Result")


# ---- what crosses the wire -----------------------------------------------------------------
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

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_kind.values())

    def bytes_per_step(self) -> dict[str, float]:
        steps = max(self.steps, 1)
        return {kind: value / steps for kind, value in sorted(self.bytes_by_kind.items())}


def _rng_state(device: torch.device) -> dict[str, np.ndarray]:
    """The generators a forward on ``device`` draws from (CPU always; CUDA when used), as arrays."""
    state = {"cpu": torch.get_rng_state().numpy()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).numpy()
    return state


def _set_rng_state(rng: dict[str, np.ndarray], device: torch.device) -> None:
    torch.set_rng_state(_as_tensor(rng["cpu"], torch.device("cpu")))
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(_as_tensor(rng["cuda"], torch.device("cpu")), device)


def _nbytes(arrays: list[np.ndarray]) -> int:
    return sum(int(a.nbytes) for a in arrays)


def _numpy(tensor: Tensor) -> np.ndarray:
    """A C-contiguous CPU array of ``tensor``, same dtype (no copy when it already is one)."""
    return tensor.detach().cpu().contiguous().numpy()


def _as_tensor(array: np.ndarray, device: torch.device) -> Tensor:
    """A tensor over a (possibly read-only, object-store backed) array, moved to ``device``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only zero-copy arrays are only read
        return torch.as_tensor(array).to(device)


def _per_task_heads(model: MultiTaskModel) -> bool:
    """Whether the ``batched`` engine gets all T z-gradients from one heads pass on ``model``."""
    per_task = getattr(model.heads, "forward_per_task", None)
    return per_task is not None and not _stochastic_or_stateful(model.heads)


def _block_gram(pieces: list[Tensor]) -> Tensor:
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


# ---- the actor -------------------------------------------------------------------------------
class _ReplicaVJP(BatchedEngine):
    """The ``batched`` engine's per-task VJPs, run on an actor's replica for its own tasks only.

    Not an engine the harness sees: no calibration and no budget (the driver charges every pass
    the actors make, see ``RayShardedEngine._jacobian_charges``).
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
        if _per_task_heads(self.model):
            self.num_tasks = len(self.taskset)
            return self._representation_grads(state)[self.own]
        self.num_tasks = self.count
        return self._representation_grads(
            dataclasses.replace(state, task_losses=state.task_losses[self.own])
        )

    def own_jacobian(self, state: StepState, z_grads: Tensor) -> Tensor:
        """(n_k, P) rows of the shared Jacobian, from this actor's z-gradients."""
        self.num_tasks = z_grads.shape[0]
        return self._shared_jacobian(state, z_grads)


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
        self.vjp = _ReplicaVJP(self.model, taskset, tasks, chunk_size)
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

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def attach(self, layout: ArenaLayout | None) -> bool:
        """Map the driver's shared buffers (``shared_memory`` transport); None: use the object
        store. False when this process cannot map them (it does not see the driver's files)."""
        if self.barrier is not None:
            self.barrier.close()
        self.arena, self.barrier = None, None
        if layout is None:
            return True
        try:
            self.arena = SharedArena.attach(layout)
        except OSError:
            return False
        self.barrier = NodeBarrier(layout.barrier_paths, self.rank)
        return True

    def _sync(self, version: int, holder: list[Any] | None) -> None:
        """Load the driver's parameters and buffers: from the arena (holder None), else from the
        object the driver put."""
        if version == self.version:
            return
        names = list(self.model.state_dict())
        if holder is None:
            state = {name: self.arena[f"state/{name}"] for name in names}
        else:
            arrays = ray.get(holder[0])
            state = {name: _as_tensor(array, self.device) for name, array in zip(names, arrays)}
        self.model.load_state_dict(state)
        self.received["parameters"] += sum(t.numel() * t.element_size() for t in state.values())
        self.version = version

    def received_bytes(self) -> dict[str, int]:
        return dict(self.received)

    def _replay(self, step: dict[str, Any], training: bool) -> StepState:
        """The driver's forward, redone: same parameters, batch and RNG state. The heads are
        replayed only when the z-gradients need the step's own heads forward (no per-task pass)."""
        inputs, targets = (_as_tensor(step[part], self.device) for part in ("inputs", "targets"))
        _set_rng_state(step["rng"], self.device)
        self.model.train(training)
        representation = self.model.encoder(inputs)
        detached = representation.detach().requires_grad_(True)
        task_losses = None
        if not _per_task_heads(self.model):
            task_losses = self.taskset.losses(self.model.heads(detached.view_as(detached)), targets)
        return StepState(inputs, targets, representation, detached, None, task_losses)

    def _rows(self, version, holder, step, training) -> Tensor:
        self._sync(version, holder)
        state = self._replay(step, training)
        z_grads = self.vjp.own_representation_grads(state)
        return self.vjp.own_jacobian(state, z_grads).detach()

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
        product (measured 2x faster here than the four products of separate blocks)."""
        rows = self._rows(version, holder, step, training)
        self.arena["exchange"][self.tasks[0] : self.tasks[-1] + 1].copy_(rows)
        self.token, self.rows_held, self.pieces = token, None, None

    def rows_and_gram(self, exchange_id, token, version, holder, step, training) -> np.ndarray:
        """Shared memory: write this actor's rows, wait at the barrier until every actor has
        written its own, then return this actor's partial Gram (T, T) from its column shard
        of the exchange, read in place (a strided view): one call per step, no round trip
        through the driver between the rows and the Gram."""
        self.write_rows(token, version, holder, step, training)
        if self.barrier is not None:
            self.barrier.arrive_and_wait(exchange_id, BARRIER_TIMEOUT_S)
        start, stop = self.column_bounds[self.rank], self.column_bounds[self.rank + 1]
        columns = self.arena["exchange"][:, start:stop]
        self.pieces = [columns]
        peers = columns.shape[0] - len(self.tasks)  # rows of this shard the other actors wrote
        self.received["reshard"] += peers * columns.shape[1] * columns.element_size()
        return (columns @ columns.T).cpu().numpy()

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
            else _as_tensor(next(others), self.device)
            for shard in range(len(task_counts))
        ]
        return _block_gram(self.pieces).cpu().numpy()

    def combine(self, token: int, weights: np.ndarray) -> np.ndarray | None:
        """This actor's slice (P_rank,) of Σ_t weights_t g_t: returned, or with shared memory
        written into the arena's direction (P,) at this actor's columns."""
        if token != self.token or self.pieces is None:
            raise RuntimeError(f"combine: step {token} is not resident (holding {self.token})")
        weights_tensor = _as_tensor(weights, self.device).to(self.pieces[0].dtype)
        out = None
        if self.arena is not None:
            out = self.arena["direction"][
                self.column_bounds[self.rank] : self.column_bounds[self.rank + 1]
            ]
        offset = 0
        for index, piece in enumerate(self.pieces):
            coefficients = weights_tensor[offset : offset + piece.shape[0]]
            offset += piece.shape[0]
            if out is None:
                out = coefficients @ piece
            elif index == 0:
                torch.mv(piece.T, coefficients, out=out)
            else:
                out.addmv_(piece.T, coefficients)
        return None if self.arena is not None else out.cpu().numpy()

    def column_shard(self, token: int) -> np.ndarray:
        """The resident (T, P_rank) columns of the Jacobian (concatenated only for this)."""
        if token != self.token or self.pieces is None:
            raise RuntimeError(f"column_shard: step {token} is not resident (holding {self.token})")
        return torch.cat(self.pieces).cpu().numpy()

    def representation_rows(self, version, holder, step, training) -> np.ndarray:
        """∂L_t/∂z (n_k, *z.shape) for this actor's tasks, from the driver's z (MGDA-UB)."""
        self._sync(version, holder)
        detached = _as_tensor(step["representation"], self.device).clone().requires_grad_(True)
        targets = _as_tensor(step["targets"], self.device)
        self.model.train(training)
        task_losses = None
        if not _per_task_heads(self.model):
            _set_rng_state(step["rng"], self.device)
            task_losses = self.taskset.losses(self.model.heads(detached.view_as(detached)), targets)
        state = StepState(detached, targets, detached, detached, None, task_losses)
        return self.vjp.own_representation_grads(state).cpu().numpy()


_RemoteShardWorker = ray.remote(ShardWorker)


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
    ):
        self.chunk_size = chunk_size
        self.model_ref = ray.put(copy.deepcopy(model).cpu())
        self.taskset = taskset
        self.task_shards = task_shards
        self.column_bounds = column_bounds
        self.cpus, self.gpus, self.threads = cpus_per_actor, gpus_per_actor, threads_per_actor
        self.ready_timeout_s = ready_timeout_s
        self.actors = [self._spawn(rank) for rank in range(len(task_shards))]
        self.versions = [-1] * len(self.actors)
        self.layout: ArenaLayout | None = None  # shared_memory transport: mapped by every actor
        self._wait_ready(list(range(len(self.actors))))

    def on_this_node(self) -> bool:
        """Whether every actor runs on the driver's machine (so it can map the driver's files)."""
        here = ray.get_runtime_context().get_node_id()
        return all(node == here for node in ray.get([a.node_id.remote() for a in self.actors]))

    def attach(self, layout: ArenaLayout | None, ranks: list[int] | None = None) -> bool:
        """Have the actors (all, or ``ranks``) map the driver's arena; None: all stop using one.
        False (and no arena kept) when one of them cannot map it."""
        chosen = range(len(self.actors)) if ranks is None or layout is None else ranks
        mapped = all(ray.get([self.actors[rank].attach.remote(layout) for rank in chosen]))
        if not mapped:
            ray.get([actor.attach.remote(None) for actor in self.actors])
            layout = None
        self.layout = layout
        return mapped

    def _spawn(self, rank: int):
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

    def _wait_ready(self, ranks: list[int]) -> None:
        pending = [self.actors[rank].pid.remote() for rank in ranks]
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
        for rank, actor in enumerate(self.actors):
            try:
                ray.get(actor.pid.remote(), timeout=30)
            except (*ACTOR_FAILURES, ray.exceptions.GetTimeoutError):
                dead.append(rank)
        for rank in dead:
            ray.kill(self.actors[rank], no_restart=True)
            self.actors[rank] = self._spawn(rank)
            self.versions[rank] = -1
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


# ---- the engine ------------------------------------------------------------------------------
@dataclass
class _Replay:
    """What an actor needs to redo the driver's forward of one step, and what the step made."""

    token: int
    rng: dict[str, np.ndarray]
    heads_rng: dict[str, np.ndarray]
    training: bool
    version: tuple[int, ...]
    per_task_heads: bool  # the actors' z-gradients come from one per-task heads pass
    step_ref: Any = None  # (ObjectRef of {inputs, targets, rng}, batch bytes, rng bytes): put once
    gram: Tensor | None = None  # the step's Gram, once formed
    in_flight: tuple[list[Any], int | None] | None = None  # prefetched exchange: (refs, barrier id)


class RayShardedEngine(GradientEngine):
    """Per-task gradients computed by K Ray actors, each owning a contiguous share of the tasks."""

    name: ClassVar[str] = "ray_sharded"
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
        transport: Literal["auto", "shared_memory", "object_store"] = "auto",
        prefetch: bool = True,
    ):
        if gram not in ("parameter", "gather"):
            raise ValueError(f"engine_options.gram: expected 'parameter' or 'gather', got {gram!r}")
        if transport not in TRANSPORTS:
            raise ValueError(
                f"engine_options.transport: expected one of {', '.join(TRANSPORTS)}, got {transport!r}"
            )
        if transport == "shared_memory" and gpus_per_actor > 0:
            raise ValueError(
                "engine_options.transport: shared_memory holds CPU tensors; GPU actors "
                "(gpus_per_actor > 0) use object_store"
            )
        if cpus_per_actor < 0 or gpus_per_actor < 0:
            raise ValueError("engine_options.cpus_per_actor / gpus_per_actor: must be >= 0")
        if chunk_size < 1:
            raise ValueError(f"engine_options.chunk_size: must be >= 1, got {chunk_size}")
        super().__init__(model, taskset, budget, calibration)
        requested = actors or int(os.environ.get(ACTORS_ENV, "0") or 0)
        if requested < 0 or (actors is not None and actors < 1):
            raise ValueError(f"engine_options.actors: must be >= 1, got {actors}")
        self.requested_actors = requested  # 0: decided when the actors start
        self.gram_strategy = gram
        self.requested_transport = transport
        self.transport = "object_store"  # decided when the actors start (see the module notes)
        self._arena: SharedArena | None = None
        self._barrier: NodeBarrier | None = None  # the driver's end: releases actors on failure
        self._exchange_ids = count(1)  # a new id per attempt at an exchange (see NodeBarrier)
        self.prefetch = prefetch
        self._gram_asked = False  # this step asked for a parameter-shard Gram (prefetch the next)
        self._in_flight: _Replay | None = None  # the step whose prefetch is not yet collected
        self.chunk_size = chunk_size
        self.shard_representation = shard_representation
        self.max_restarts = max_restarts
        self.actor_resources = (
            cpus_per_actor,
            gpus_per_actor,
            threads_per_actor or max(1, round(cpus_per_actor)),
        )
        self.ready_timeout_s = ready_timeout_s
        self.device = next(model.parameters()).device
        self.stats = TransferStats()
        self.num_actors = 0
        self.task_shards: list[list[int]] = []
        self.column_bounds: list[int] = []
        self._pool: ShardPool | None = None
        self._tensors = [*model.parameters(), *model.buffers()]
        self._synced_version: tuple[int, ...] | None = None
        self._state_holder: list[Any] = []
        self._state_nbytes = 0
        self._version_id = -1
        self._resident_token = -1
        self._heads_rng: dict[str, np.ndarray] = {}
        self._hook = model.heads.register_forward_pre_hook(self._remember_heads_rng)

    @property
    def pool(self) -> ShardPool:
        """The K actors, started on the first per-task request (an EW run never starts them)."""
        if self._pool is None:
            connect()
            cpus, gpus, threads = self.actor_resources
            requested = self.requested_actors
            if not requested:
                cluster_gpus = int(ray.cluster_resources().get("GPU", 0)) if gpus > 0 else 0
                requested = max(cluster_gpus, 2)
            self.num_actors = min(requested, self.num_tasks)
            self.task_shards = [
                [int(t) for t in shard]
                for shard in np.array_split(np.arange(self.num_tasks), self.num_actors)
            ]
            self.column_bounds = [
                int(b)
                for b in np.linspace(0, self.num_shared, self.num_actors + 1).round().astype(int)
            ]
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
            )
            self._open_arena()
        return self._pool

    def _open_arena(self) -> None:
        """Choose the transport: shared memory when every actor shares the driver's machine and
        works on the CPU and ``/dev/shm`` has room (``auto``), else the object store."""
        if self.requested_transport == "object_store":
            return
        reason = None
        if self.actor_resources[1] > 0:
            return  # GPU actors: their tensors live on the devices (see the module notes)
        if not self._pool.on_this_node():
            reason = "an actor runs on another machine"
        else:
            try:
                self._arena = SharedArena.create(self._arena_tensors(), self.num_actors)
            except OSError as error:
                reason = str(error)
        if reason is None and not self._pool.attach(self._arena.layout):
            reason = "an actor cannot map the driver's /dev/shm (another machine or container?)"
            self._arena.close()
            self._arena = None
        if reason is not None:
            if self.requested_transport == "shared_memory":
                self.close()
                raise ValueError(
                    f"engine_options.transport: shared_memory is not possible: {reason}"
                )
            return
        self._barrier = NodeBarrier(self._arena.layout.barrier_paths, None)
        self.transport = "shared_memory"

    def _arena_tensors(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The shared buffers: the model's state, the (T, P) exchange, the (P,) direction."""
        dtype = next(iter(self.model.shared_parameters())).dtype
        tensors = {
            f"state/{name}": (tuple(tensor.shape), tensor.dtype)
            for name, tensor in self.model.state_dict().items()
        }
        tensors["exchange"] = ((self.num_tasks, self.num_shared), dtype)
        tensors["direction"] = ((self.num_shared,), dtype)
        return tensors

    def _check_transport(self) -> None:
        """After a restart: a replacement actor on another machine dropped the shared memory."""
        if self._arena is not None and self._pool.layout is None:
            self._barrier.close()
            self._arena.close()
            self._arena, self._barrier, self.transport = None, None, "object_store"

    # ---- bookkeeping ------------------------------------------------------------------------
    def _remember_heads_rng(self, module, inputs) -> None:
        self._heads_rng = _rng_state(self.device)

    def _version(self) -> tuple[int, ...]:
        return tuple(t._version for t in self._tensors)

    def actor_pids(self) -> list[int]:
        """Process ids of the K actors (tests kill them to check recovery)."""
        return self.pool.pids()

    def report(self) -> dict[str, float | str]:
        """K, the transport and Gram strategy, actor restarts, and bytes moved per step (total
        and by kind, as in the module notes); K = 0 when no request ever started the actors."""
        if self._pool is None:
            return {"actors": 0}
        per_step = self.stats.bytes_per_step()
        return {
            "actors": self.num_actors,
            "transport": self.transport,
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
            self._barrier.close()
            self._arena.close()
        self._pool, self._arena, self._barrier = None, None, None
        self._resident_token, self._synced_version = -1, None

    def _charge_together(self, charges: list[tuple[str, int]], batch_size: int) -> None:
        """Charge several pass kinds as one: all of them, or (BudgetExhausted) none."""
        total = sum(self.costs.flops(kind, batch_size, passes) for kind, passes in charges)
        if self.budget.kind == "flops" and self.budget.spent_flops + total > self.budget.limit:
            raise BudgetExhausted(
                f"sharded Jacobian needs {total:.3g} FLOPs, {self.budget.remaining:.3g} left"
            )
        for kind, passes in charges:
            self.charge(kind, batch_size, passes)

    def _parameters_ref(self, replay: _Replay) -> tuple[int, list[Any] | None]:
        """The object holding the driver's parameters and buffers (put again when they changed)."""
        if replay.version != self._version():
            raise RuntimeError(
                "ray_sharded: the model changed between forward() and a gradient request"
            )
        if self._synced_version != replay.version:
            state = self.model.state_dict()
            if self._arena is not None:
                for name, tensor in state.items():
                    self._arena[f"state/{name}"].copy_(tensor.detach())
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

    def _step_ref(self, batch: Batch, replay: _Replay) -> tuple[Any, int, int]:
        """The batch and the RNG state of the step, put in the object store once per step."""
        if replay.step_ref is None:
            inputs, targets = _numpy(batch[0]), _numpy(batch[1])
            step = {"inputs": inputs, "targets": targets, "rng": replay.rng}
            replay.step_ref = (
                ray.put(step),
                _nbytes([inputs, targets]),
                _nbytes(list(replay.rng.values())),
            )
        return replay.step_ref

    def _resilient(self, protocol: Callable[[], Result]) -> Result:
        """Run an exchange; if an actor died, replace it and redo the exchange from the start."""
        for attempt in range(self.max_restarts + 1):
            try:
                return protocol()
            except ACTOR_FAILURES as error:
                if attempt == self.max_restarts:
                    raise RuntimeError(
                        f"ray_sharded: actors failed {attempt + 1} times in one step; last: {error}"
                    ) from error
                self._resident_token = -1
                self._synced_version = None  # rewrite the state: a replacement may hold none
                self.stats.restarts += self.pool.replace_dead() or 1
                self._check_transport()
        raise AssertionError("unreachable")

    # ---- the interface ----------------------------------------------------------------------
    def forward(self, batch: Batch) -> StepState:
        """The driver's forward; remembers what the actors need to replay it.

        Prefetch: when the previous step asked for the parameter-shard Gram, the actors start
        this step's rows before the driver's own forward (everything they need, parameters,
        batch and RNG state, is known before it), so the forward overlaps their work instead
        of preceding it. It is charged when the method asks for it; if it never does (a method
        that asks every other step), the actors' work is dropped, uncharged.
        """
        replay = _Replay(
            next(self._tokens),
            _rng_state(self.device),
            {},
            self.model.training,
            self._version(),
            _per_task_heads(self.model),
        )
        self._settle_in_flight()
        if self.prefetch and self._gram_asked and self.gram_strategy == "parameter":
            try:
                replay.in_flight = self._launch_columns(batch, replay)
                self._in_flight = replay
                self.stats.prefetched += 1
            except ACTOR_FAILURES:  # an actor is gone: the request will replace it and redo
                replay.in_flight = None
        self._gram_asked = False
        state = super().forward(batch)
        replay.heads_rng = self._heads_rng
        # a later request checks the model against this: the forward may have moved BatchNorm's
        # running statistics (a prefetch shipped them as they were: in training mode a forward
        # reads batch statistics, so the actors' rows are the same either way)
        replay.version = self._version()
        state.replay = replay
        self.stats.steps += 1
        return state

    def _settle_in_flight(self) -> None:
        """Wait for a prefetched exchange nobody collected (its results are dropped), so that
        the actors are idle before the driver rewrites what they read."""
        replay, self._in_flight = self._in_flight, None
        if replay is not None and replay.in_flight is not None:
            (refs, exchange_id), replay.in_flight = replay.in_flight, None  # a late ask: afresh
            self.stats.prefetch_dropped += 1
            try:
                if exchange_id is None:
                    ray.wait(refs, num_returns=len(refs))
                else:
                    self._get_all(refs, exchange_id)
            except ray.exceptions.RayError:
                pass  # a failed actor is replaced by the next request that needs it

    def _heads_charges(self, replay: _Replay) -> list[tuple[str, int]]:
        """The actors' heads passes for their z-gradients: one per-task pass each (forward and
        backward, as ``batched`` charges it), else a replayed forward each and T VJPs in all."""
        if replay.per_task_heads:
            return [("heads_forward", self.num_actors), ("heads_backward_input", self.num_actors)]
        return [("heads_forward", self.num_actors), ("heads_backward_input", self.num_tasks)]

    def _jacobian_charges(self, replay: _Replay) -> list[tuple[str, int]]:
        return [
            ("encoder_forward", self.num_actors),
            *self._heads_charges(replay),
            ("encoder_backward", self.num_tasks),
        ]

    def _row_call_args(self, batch: Batch, replay: _Replay) -> tuple:
        """The arguments of every actor's rows call (parameters and step put at most once),
        with the bytes each actor reads counted."""
        version_id, holder = self._parameters_ref(replay)
        step_ref, batch_bytes, rng_bytes = self._step_ref(batch, replay)
        for rank in range(len(self.pool.actors)):
            self._ship_parameters(version_id, rank)
            self.stats.add("batch", batch_bytes)
            self.stats.add("rng", rng_bytes)
        return version_id, holder, step_ref, replay.training

    def shared_jacobian(self, state: StepState) -> Tensor:
        """(T, P) per-task shared gradients, rows computed by the actors and gathered here."""
        if state.shared_jacobian is not None:
            return state.shared_jacobian
        if self._resident_token == state.replay.token or state.replay.in_flight is not None:
            if self._resident_token != state.replay.token:  # prefetched: charged when collected
                self._charge_together(self._jacobian_charges(state.replay), state.batch_size)
            state.shared_jacobian = self._resilient(lambda: self._gather_columns(state))
            return state.shared_jacobian
        self.pool  # noqa: B018 - start the actors first: the charges depend on K
        self._charge_together(self._jacobian_charges(state.replay), state.batch_size)
        state.shared_jacobian = self._resilient(lambda: self._gather_rows(state))
        return state.shared_jacobian

    def _gather_rows(self, state: StepState) -> Tensor:
        self._settle_in_flight()  # the rows overwrite the shared exchange
        args = self._row_call_args((state.inputs, state.targets), state.replay)
        if self._arena is not None:
            token = state.replay.token
            ray.get([actor.write_rows.remote(token, *args) for actor in self.pool.actors])
            self._resident_token = -1  # rows written, no partial Gram formed
            self.stats.add("jacobian_rows", self._arena["exchange"].nbytes)
            return self._arena["exchange"].to(self.device, copy=True)
        refs = [actor.jacobian_rows.remote(*args) for actor in self.pool.actors]
        rows = ray.get(refs)
        self.stats.add("jacobian_rows", _nbytes(rows))
        return torch.cat([_as_tensor(r, self.device) for r in rows])

    def _gather_columns(self, state: StepState) -> Tensor:
        self._ensure_columns(state)
        if self._arena is not None:  # the whole Jacobian is in the exchange
            self.stats.add("jacobian_columns", self._arena["exchange"].nbytes)
            return self._arena["exchange"].to(self.device, copy=True)
        token = state.replay.token
        shards = ray.get([actor.column_shard.remote(token) for actor in self.pool.actors])
        self.stats.add("jacobian_columns", _nbytes(shards))
        return torch.cat([_as_tensor(s, self.device) for s in shards], dim=1)

    def shared_gram(self, state: StepState) -> Tensor:
        """(T, T) Gram matrix g_t·g_s of the per-task shared gradients (see the module notes).

        Charged as the local engines charge it (``gram``: 2 T² P FLOPs), wherever it is formed,
        once per step: a repeated request returns the step's Gram, with no pass and no charge.
        """
        replay: _Replay = state.replay
        if replay.gram is None:
            if state.shared_jacobian is not None or self.gram_strategy == "gather":
                replay.gram = self.gram(self.shared_jacobian(state))
            else:
                self._gram_asked = True
                if self._resident_token != replay.token:
                    self.pool  # noqa: B018 - start the actors first: the charges depend on K
                    self._charge_together(self._jacobian_charges(replay), state.batch_size)
                replay.gram = self._resilient(lambda: self._parameter_sharded_gram(state))
                self.budget.charge("gram", 2.0 * self.num_tasks**2 * self.num_shared)
        return replay.gram.clone()

    def shared_combination(self, state: StepState, weights: Tensor) -> Tensor:
        """Σ_t w_t g_t (P,) where J lies: on the driver if gathered, else on the actors' shards."""
        if state.shared_jacobian is None and self._resident_token == state.replay.token:
            direction = self._resilient(lambda: self._combine(state, weights))
            self.budget.charge("combine", 2.0 * self.num_tasks * self.num_shared)
            return direction
        return super().shared_combination(state, weights)

    def _build_columns(self, state: StepState) -> list[np.ndarray]:
        """Rows → blocks → every actor's column shard; returns the K partial Grams (T, T).
        Collects the step's prefetched exchange if there is one, else launches it now."""
        replay: _Replay = state.replay
        launched, replay.in_flight = replay.in_flight, None  # a retry launches afresh
        if self._in_flight is replay:
            self._in_flight = None
        if launched is None:
            # at most one exchange in flight: another step's prefetch is dropped first (its rows
            # would be overwritten in the shared exchange before anyone collected them)
            self._settle_in_flight()
            launched = self._launch_columns((state.inputs, state.targets), replay)
        refs, exchange_id = launched
        return ray.get(refs) if exchange_id is None else self._get_all(refs, exchange_id)

    def _launch_columns(self, batch: Batch, replay: _Replay) -> tuple[list[Any], int | None]:
        """Start the exchange of step ``replay``: refs of the K partial Grams, and the barrier id
        of the shared-memory exchange (None: object store)."""
        token = replay.token
        actors = self.pool.actors
        num_actors = len(actors)
        args = self._row_call_args(batch, replay)
        counts = [len(shard) for shard in self.task_shards]
        widths = np.diff(self.column_bounds)
        for source in range(num_actors):
            for target in range(num_actors):
                if source != target:
                    self.stats.add("reshard", counts[source] * int(widths[target]) * 4)
        if self._arena is not None:
            exchange_id = next(self._exchange_ids)
            calls = [actor.rows_and_gram.remote(exchange_id, token, *args) for actor in actors]
            return calls, exchange_id
        blocks = []
        for actor in actors:
            refs = actor.jacobian_blocks.options(num_returns=num_actors).remote(token, *args)
            blocks.append(refs if num_actors > 1 else [refs])
        partials = [
            actor.assemble.remote(
                token, counts, *[blocks[s][rank] for s in range(num_actors) if s != rank]
            )
            for rank, actor in enumerate(actors)
        ]
        return partials, None

    def _get_all(self, refs: list[Any], exchange_id: int) -> list[Any]:
        """``ray.get(refs)`` of calls that meet at the barrier of ``exchange_id``: when one fails,
        the others are released first (they would wait for it), then its error is raised."""
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(ready)
            except ray.exceptions.RayError:
                self._barrier.abort(exchange_id)
                ray.wait(pending, num_returns=len(pending), timeout=60)  # released calls end
                raise
        return ray.get(refs)

    def _ensure_columns(self, state: StepState) -> None:
        if self._resident_token != state.replay.token:
            self._build_columns(state)
            self._resident_token = state.replay.token

    def _parameter_sharded_gram(self, state: StepState) -> Tensor:
        partials = self._build_columns(state)
        self._resident_token = state.replay.token
        self.stats.add("gram_blocks", _nbytes(partials))
        gram = _as_tensor(partials[0], torch.device("cpu")).clone()
        for partial in partials[1:]:
            gram += _as_tensor(partial, torch.device("cpu"))
        return gram.to(self.device)

    def shared_gradient(self, state: StepState, weights: Tensor) -> Tensor:
        """Σ_t w_t g_t (P,): from per-task gradients already in hand (no pass), else one backward."""
        if state.shared_jacobian is not None or self._resident_token == state.replay.token:
            return self.shared_combination(state, weights)
        return super().shared_gradient(state, weights)

    def _combine(self, state: StepState, weights: Tensor) -> Tensor:
        self._ensure_columns(state)
        token = state.replay.token
        weights_array = _numpy(weights.float())
        slices = ray.get([actor.combine.remote(token, weights_array) for actor in self.pool.actors])
        self.stats.add("weights", weights_array.nbytes * len(slices))
        if self._arena is not None:  # each actor wrote its columns of the direction
            self.stats.add("direction", self._arena["direction"].nbytes)
            return self._arena["direction"].to(self.device, copy=True)
        self.stats.add("direction", _nbytes(slices))
        return torch.cat([_as_tensor(s, self.device) for s in slices])

    def representation_gradients(self, state: StepState) -> Tensor:
        """(T, *z.shape); on the driver unless ``shard_representation`` (see the module notes)."""
        if not self.shard_representation or state.representation_grads is not None:
            return super().representation_gradients(state)
        self.pool  # noqa: B018 - start the actors first: the charges depend on K
        self._charge_together(self._heads_charges(state.replay), state.batch_size)
        state.representation_grads = self._resilient(lambda: self._representation_rows(state))
        return state.representation_grads

    def _representation_rows(self, state: StepState) -> Tensor:
        replay: _Replay = state.replay
        version_id, holder = self._parameters_ref(replay)
        representation, targets = _numpy(state.detached), _numpy(state.targets)
        step_ref = ray.put(
            {"representation": representation, "targets": targets, "rng": replay.heads_rng}
        )
        refs = []
        for rank, actor in enumerate(self.pool.actors):
            self._ship_parameters(version_id, rank)
            self.stats.add("representation", representation.nbytes + targets.nbytes)
            refs.append(
                actor.representation_rows.remote(version_id, holder, step_ref, replay.training)
            )
        rows = ray.get(refs)
        self.stats.add("representation_rows", _nbytes(rows))
        return torch.cat([_as_tensor(r, self.device) for r in rows])


register_engine(RayShardedEngine.name, RayShardedEngine)
