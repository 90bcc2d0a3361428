"""Engine ``ray_sharded``: per-task gradients sharded over K Ray actors (one per device).

The driver keeps the method's model (its optimizer updates it) and makes the passes that do not
grow with T itself, exactly as the ``loop`` engine does: the forward, the weighted backward of
EW-like methods, the heads. Only the T-fold work is sharded: for the exact per-task Jacobian
(MGDA, Sener & Koltun 2018), actor k holds a replica of the model and computes the rows of its
share of the T tasks with the ``batched`` engine's code (``BatchedEngine``, restricted to its
tasks): its ∂Lₜ/∂z from one heads pass when the heads have ``forward_per_task`` (and no dropout
or BatchNorm in training mode), else from batched heads VJPs, one per own task; then its rows of
J from batched encoder VJPs (``is_grads_batched``, ``chunk_size`` tasks at a time). The actors
themselves (``ShardWorker``, and the ``ShardPool`` that starts and replaces them) live in
``cluster/shard_actors.py``; this module is the driver's side.

Driver's share (option ``driver_share``): the driver is a worker too. It computes rank 0's share
of the tasks with the same code, from its own forward's graph, while the K actors (ranks 1 … K)
compute theirs: W = K + 1 workers. Its share needs no replayed forward, and its device does not
sit idle while the actors work. Default (none): on when the driver's device is of the actors'
kind (a CPU driver with CPU actors, a GPU driver with GPU actors); a CPU driver beside GPU actors
would be every step's straggler. Measured (``benchmarks/ray_sharding.py``, T = 16, 2-core CI
machine, interleaved): the driver and 1 actor take 127 ms per step where 2 actors alone take 141
(the driver's forward no longer competes with two actors for two cores, and one forward fewer
is replayed). On the CPU the default K is then 1 (2 workers on 2 cores).

Replicas are kept identical to the driver by *receiving the parameters* (and buffers) whenever
they changed, once per step (written once by the driver, read by every actor; see "Transport"). The
alternative the design card names, every actor applying the same update, would need the update
itself shipped (the optimizer belongs to the method and runs on the driver): the same P numbers
per step, but not bit-exact (θ + (θ' − θ) ≠ θ' in floating point) and with optimizer state to
replicate. Each actor then replays the driver's forward on the same batch with the driver's RNG
state, so dropout draws the same masks and its rows equal the driver's to rounding. The batch and
the RNG state are put in the object store once per step, whatever K and however many requests
(over shared memory the batch goes into the arena instead, when it has the calibration batch's
shapes, and the RNG state travels inside the call).

Transport (option ``transport``): what crosses between processes goes either through Ray's
object store (``object_store``: works across machines) or through one node-local shared-memory
arena that the driver creates and every actor maps (``shared_memory``,
``cluster/node_shared.py``: the parameters, which the actors' replicas use in place, one batch,
the (T, P) exchange of Jacobian rows, the (P,) direction), with a barrier of named pipes among
the workers (the driver is one when it shares, and watches the actors while it waits: a dead one
would hold it there). ``auto`` (default) takes shared memory when every actor runs on the
driver's machine, on the CPU, and ``/dev/shm`` has room for T·P + P + P_all numbers; else the
object store (on one machine with a warning; the reason is the report's ``transport_reason``).
Why: on one machine the object store costs a fresh sealed object per block and a round trip
through the driver between "rows written" and "Gram formed"; measured on the 2-core CI machine
(T = 16, K = 2, ``benchmarks/ray_sharding.py``) that was ≈ 30 ms of a ≈ 160 ms step. With shared
memory an actor writes its rows into the exchange (all columns: its own block beside the others'
makes its column shard one strided (T, P_rank) view, whose Gram is one matrix product, 2x faster
here than four block products), meets its peers at the barrier, and forms its partial Gram in
the same call: one call per step for rows and Gram, one for Σ aₜgₜ. With the driver's share the
whole step is one call (``ShardWorker.rows_gram_combine``): the partial Grams and the weights of
Σ aₜgₜ also go through the arena, in four barrier phases (rows, partial Grams, weights,
direction), so no Ray round trip sits between the solver and the update (Σ aₜgₜ measured 5.2 →
2.9 ms on the driver at T = 16); a step that asks for no Σ aₜgₜ lets its actors go at the next
forward. The logical bytes below are the same for both transports (what one process writes and
another reads).

Prefetch (option ``prefetch``, default on): once a step has asked for the parameter-shard Gram,
the next step's exchange starts in ``forward()``, before the driver's own forward: parameters,
batch and RNG state are all known by then, so the actors' replay overlaps the driver's forward
instead of following it (measured 4-7% faster steps at K = 1 and 2, T = 8 and 16). It is
charged when asked for; one that is never asked for is dropped uncharged
(``stats.prefetch_dropped``), and at most one exchange is ever in flight.

How the Gram matrix ``G = J Jᵀ`` (T×T) is assembled, with J (T×P) in task shards (option
``gram``), bytes per step (float32, K actors, W workers (K, or K + 1 with the driver's share),
P shared parameters, P_all all parameters and buffers, T tasks, B samples, D representation
width; with the driver's share, its T/W rows and P/W columns never cross)::

    both     parameters P_all·4·K (when they changed), batch ·K, RNG state 5 KB·K
    gather   rows to the driver: T·P·4 (less the driver's own rows). The driver forms J Jᵀ and
             keeps J, so Σ aₜgₜ costs no more bytes.
    parameter  all-to-all by parameter shard: worker k sends J[its tasks, shard l] to worker l,
             (W−1)/W·T·P·4 in all; each actor returns its T×T partial Gram (K·T²·4); after the
             solver, a (K·T·4 out) and each actor's slice of Σ aₜgₜ (P·4 back in all, less
             the driver's own slice).

``parameter`` moves (W−1)/W·T·P + P + K·T² numbers against ``gather``'s T·P: fewer from W ≤ T−1
on (for W = 2, T = 8: 0.625·T·P against T·P), and the driver never gathers the T×P Jacobian (it
holds its own rows at most); the sum of the W partial Grams differs from J Jᵀ by rounding only.
So ``parameter`` is the default; ``gather`` is kept for methods that need J itself. A
task-sharded all-gather among the actors instead (each needs every row to form its Gram blocks)
would move (K−1)·T·P. An actor never concatenates its column shard: it forms its partial Gram
and its slice of Σ aₜgₜ block by block from its own rows (a view) and the blocks received.

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

Options (suite ``engine_options``): ``actors`` K (default: ``MTLBENCH_RAY_ACTORS``, else one
per device besides the driver's share: the cluster's GPUs when ``gpus_per_actor`` > 0, else 2,
less 1 when the driver shares; at most T, or T − 1 when the driver shares), ``driver_share``
(true | false; default: see above), ``gram`` (``parameter`` |
``gather``), ``transport`` (``auto`` | ``shared_memory`` | ``object_store``), ``cpus_per_actor``
(1), ``gpus_per_actor`` (0), ``threads_per_actor`` (torch threads; default ``cpus_per_actor``
rounded, at least 1), ``chunk_size`` (tasks per batched VJP on a worker, 64: lower it when a
worker's memory is short; on the CPU, 1, a plain VJP per task, ran fastest on the MLP of
``benchmarks/ray_sharding.py``), ``shard_representation`` (false), ``max_restarts`` (3),
``ready_timeout_s`` (120: time allowed to place the actors), ``prefetch`` (true).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import ray
import torch
from mtlbench.cluster._ray_setup import connect
from mtlbench.cluster.node_shared import NodeBarrier, SharedArena
from mtlbench.cluster.shard_actors import (
    ACTOR_FAILURES,
    BARRIER_TIMEOUT_S,
    ReplicaVJP,
    ShardPool,
    as_tensor,
    block_gram,
    combine_pieces,
    nbytes_of,
    per_task_heads,
    rng_state,
    to_numpy,
)
from mtlbench.harness.budget import Budget, BudgetExhausted
from mtlbench.harness.gradients import (
    Batch,
    GradientEngine,
    StepState,
    register_engine,
)
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet
from torch import Tensor

log = logging.getLogger(__name__)

ACTORS_ENV = "MTLBENCH_RAY_ACTORS"
TRANSPORTS = ("auto", "shared_memory", "object_store")
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

    def bytes_per_step(self) -> dict[str, float]:
        steps = max(self.steps, 1)
        return {kind: value / steps for kind, value in sorted(self.bytes_by_kind.items())}


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
    in_flight: _Exchange | None = None  # the step's exchange, launched before it was asked for


@dataclass
class _Exchange:
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
        return self.calls if self.calls is not None else [r for b in self.blocks for r in b]


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
        driver_share: bool | None = None,
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
        if driver_share not in (None, True, False):
            raise ValueError(
                f"engine_options.driver_share: expected true, false or none (auto), "
                f"got {driver_share!r}"
            )
        super().__init__(model, taskset, budget, calibration)
        # the arena holds one batch of the calibration batch's shapes (see ``_step_ref``)
        self._batch_layout = tuple(
            (tuple(part.shape), part.dtype) for part in calibration if isinstance(part, Tensor)
        )
        self._arena_batch_token = -1  # the step whose batch the arena holds
        requested = actors or int(os.environ.get(ACTORS_ENV, "0") or 0)
        if requested < 0 or (actors is not None and actors < 1):
            raise ValueError(f"engine_options.actors: must be >= 1, got {actors}")
        self.requested_actors = requested  # 0: decided when the actors start
        self.gram_strategy = gram
        self.requested_transport = transport
        self.transport = "object_store"  # decided when the actors start (see the module notes)
        self.transport_reason = ""  # why ``auto`` fell back to the object store on one machine
        self._arena: SharedArena | None = None
        self._barrier: NodeBarrier | None = None  # the driver's end: releases actors on failure
        self._exchange_ids = count(1)  # a new id per attempt at an exchange (see NodeBarrier)
        self.prefetch = prefetch
        self._gram_asked = False  # this step asked for a parameter-shard Gram (prefetch the next)
        self._in_flight: _Replay | None = None  # the step whose prefetch is not yet collected
        # one-call steps (shared memory, driver's share): the exchange whose actors wait for
        # the weights of Σ aₜgₜ, with its step's token; and finished calls not yet collected
        self._awaiting_weights: tuple[_Exchange, int] | None = None
        self._finished_calls: list[Any] = []
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
        self.requested_driver_share = driver_share
        self.driver_share = 0  # 1 when the driver computes rank 0's share (see the module notes)
        self._own: ReplicaVJP | None = None  # the driver's share of the VJPs
        self._own_pieces: list[Tensor] = []  # the driver's column shard of the resident step
        self.task_shards: list[list[int]] = []
        self.column_bounds: list[int] = []
        self._reshard_bytes = 0  # per parameter-shard exchange, set when the actors start
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
            share = self.driver_share = int(self._driver_shares())
            requested = self.requested_actors
            if not requested:  # one worker per device (or per CPU), the driver's included
                cluster_gpus = int(ray.cluster_resources().get("GPU", 0)) if gpus > 0 else 2
                requested = max(cluster_gpus - share, 1)
            self.num_actors = max(min(requested, self.num_tasks - share), 1)
            workers = self.num_actors + share
            self.task_shards = [
                [int(t) for t in shard]
                for shard in np.array_split(np.arange(self.num_tasks), workers)
            ]
            self.column_bounds = [
                int(b) for b in np.linspace(0, self.num_shared, workers + 1).round().astype(int)
            ]
            # per parameter-shard exchange: every worker's rows, less its own columns, in J's dtype
            item = next(iter(self.model.shared_parameters())).element_size()
            bounds = self.column_bounds
            own = sum(
                len(shard) * (b - a) for shard, a, b in zip(self.task_shards, bounds, bounds[1:])
            )
            self._reshard_bytes = (self.num_tasks * self.num_shared - own) * item
            if share:
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
                first_rank=share,
            )
            self._open_arena()
        return self._pool

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

    def _open_arena(self) -> None:
        """Choose the transport: shared memory when every actor shares the driver's machine and
        works on the CPU and ``/dev/shm`` has room (``auto``), else the object store."""
        if self.requested_transport == "object_store" or self.actor_resources[1] > 0:
            return  # GPU actors: their tensors live on the devices (see the module notes)
        try:
            if not self._pool.on_this_node():
                raise OSError("an actor runs on another machine")
            self._arena = SharedArena.create(self._arena_tensors(), self.workers)
            if not self._pool.attach(self._arena.layout):
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
            if self._pool.on_this_node():
                log.warning("ray_sharded: using Ray's object store (%s)", self.transport_reason)
            return
        rank = 0 if self.driver_share else None  # a member when it writes rows of its own
        self._barrier = NodeBarrier(self._arena.layout.barrier_paths, rank)
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
        if self._arena is not None and self._pool.layout is None:
            self._barrier.close()
            self._arena.close()
            self._arena, self._barrier, self.transport = None, None, "object_store"

    # ---- bookkeeping ------------------------------------------------------------------------
    def _remember_heads_rng(self, module, inputs) -> None:
        self._heads_rng = rng_state(self.device)

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
        """The batch and the RNG state of the step: the batch in the arena when it has the
        calibration batch's shapes (the RNG state, 5 kB, then travels inside the call), else
        both put in the object store once per step. Why: the put cost ≈ 1.4 ms of the driver's
        step (256 × 272 numbers), the copy into the arena ≈ 0.05 ms. Called only while the
        actors are idle (every caller settles the exchange in flight first)."""
        if self._arena is not None and self._batch_fits_arena(batch):
            if self._arena_batch_token != replay.token:  # another step's batch may be there
                self._arena["batch/inputs"].copy_(batch[0].detach())
                self._arena["batch/targets"].copy_(batch[1].detach())
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
            rng_state(self.device),
            {},
            self.model.training,
            self._version(),
            per_task_heads(self.model),
        )
        self._settle_in_flight()
        if self.prefetch and self._gram_asked and self.gram_strategy == "parameter":
            # a dead actor shows when the exchange is collected, where it is replaced and redone
            replay.in_flight = self._launch_columns(batch, replay)
            self._in_flight = replay
            self.stats.prefetched += 1
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
        """Make the actors idle before the driver rewrites what they read: let go those of a
        one-call step waiting for weights that will not come, and wait for a prefetched
        exchange nobody collected (its results are dropped)."""
        self._release_awaiting()
        replay, self._in_flight = self._in_flight, None
        if replay is not None and replay.in_flight is not None:
            exchange, replay.in_flight = replay.in_flight, None  # a late ask: afresh
            self.stats.prefetch_dropped += 1
            refs = exchange.refs()
            if exchange.exchange_id is None:
                ray.wait(refs, num_returns=len(refs))
                return
            if self.driver_share:  # the actors wait at the barrier for rows that will not come
                self._barrier.abort(exchange.exchange_id)
            try:
                self._get_all(refs, exchange.exchange_id)
            except ray.exceptions.RayError:
                pass  # released; a failed actor is replaced by the next request that needs it

    def _heads_charges(self, replay: _Replay) -> list[tuple[str, int]]:
        """The workers' heads passes for their z-gradients: one per-task pass each (forward and
        backward, as ``batched`` charges it), else a replayed forward per actor and T VJPs."""
        if replay.per_task_heads:  # every worker, the driver's share included
            return [("heads_forward", self.workers), ("heads_backward_input", self.workers)]
        # the driver's share reads its own forward's heads graph: no replayed heads forward
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

    # ---- the driver's own share (rank 0, when it has one) -----------------------------------
    def _own_rows(self, state: StepState, out: Tensor | None = None) -> Tensor:
        """(n_0, P) the driver's rows, from its own forward's graph (no replay), into ``out``."""
        own = self._own
        return own.own_jacobian(state, own.own_representation_grads(state), out)

    def _actor_rows_bytes(self) -> int:
        """Bytes of the (T, P) exchange the actors wrote (all of it, less the driver's rows)."""
        exchange = self._arena["exchange"]
        own = len(self.task_shards[0]) if self.driver_share else 0
        return (exchange.shape[0] - own) * exchange.shape[1] * exchange.element_size()

    def _actor_direction_bytes(self) -> int:
        """Bytes of the arena's (P,) direction the actors wrote (less the driver's columns)."""
        direction = self._arena["direction"]
        own = self.column_bounds[1] if self.driver_share else 0
        return (direction.numel() - own) * direction.element_size()

    def _gather_rows(self, state: StepState) -> Tensor:
        self._settle_in_flight()  # the rows overwrite the shared exchange
        args = self._row_call_args((state.inputs, state.targets), state.replay)
        if self._arena is not None:
            token = state.replay.token
            calls = [actor.write_rows.remote(token, *args) for actor in self.pool.actors]
            if self.driver_share:  # beside the actors, into its rows of the exchange
                self._own_rows(state, out=self._arena["exchange"][self._own.own])
            ray.get(calls)
            self._resident_token = -1  # rows written, no partial Gram formed
            self.stats.add("jacobian_rows", self._actor_rows_bytes())
            return self._arena["exchange"].to(self.device, copy=True)
        refs = [actor.jacobian_rows.remote(*args) for actor in self.pool.actors]
        own = [self._own_rows(state)] if self.driver_share else []
        rows = ray.get(refs)
        self.stats.add("jacobian_rows", nbytes_of(rows))
        return torch.cat([*own, *(as_tensor(r, self.device) for r in rows)])

    def _gather_columns(self, state: StepState) -> Tensor:
        self._ensure_columns(state)
        if self._arena is not None:  # the whole Jacobian is in the exchange
            self.stats.add("jacobian_columns", self._actor_rows_bytes())
            return self._arena["exchange"].to(self.device, copy=True)
        token = state.replay.token
        shards = ray.get([actor.column_shard.remote(token) for actor in self.pool.actors])
        self.stats.add("jacobian_columns", nbytes_of(shards))
        own = [torch.cat(self._own_pieces)] if self.driver_share else []
        return torch.cat([*own, *(as_tensor(s, self.device) for s in shards)], dim=1)

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
        """Rows → blocks → every worker's column shard; returns the W partial Grams (T, T).
        Collects the step's prefetched exchange if there is one, else launches it now; the
        driver's own share (when it has one) is computed here, while the actors work."""
        replay: _Replay = state.replay
        launched, replay.in_flight = replay.in_flight, None  # a retry launches afresh
        if self._in_flight is replay:
            self._in_flight = None
        if launched is None:
            # at most one exchange in flight: another step's prefetch is dropped first (its rows
            # would be overwritten in the shared exchange before anyone collected them)
            self._settle_in_flight()
            launched = self._launch_columns((state.inputs, state.targets), replay)
        if self.driver_share and launched.exchange_id is not None:
            return self._own_partial_shared(state, launched)
        own = [self._own_partial_store(state, launched)] if self.driver_share else []
        if launched.exchange_id is None:
            return [*own, *ray.get(launched.calls)]
        return [*own, *self._get_all(launched.calls, launched.exchange_id)]

    def _launch_columns(self, batch: Batch, replay: _Replay) -> _Exchange:
        """Start the actors' part of the exchange of step ``replay`` (see ``_Exchange``)."""
        token = replay.token
        actors = self.pool.actors
        args = self._row_call_args(batch, replay)
        workers = self.workers
        if self._reshard_bytes:  # one worker exchanges nothing
            self.stats.add("reshard", self._reshard_bytes)
        if self._arena is not None and self.driver_share:  # one call per step, 4 barrier ids
            exchange_id = 4 * next(self._exchange_ids)
            calls = [actor.rows_gram_combine.remote(exchange_id, token, *args) for actor in actors]
            return _Exchange(calls, exchange_id)
        if self._arena is not None:
            exchange_id = next(self._exchange_ids)
            calls = [actor.rows_and_gram.remote(exchange_id, token, *args) for actor in actors]
            return _Exchange(calls, exchange_id)
        blocks = []
        for actor in actors:
            refs = actor.jacobian_blocks.options(num_returns=workers).remote(token, *args)
            blocks.append(refs if workers > 1 else [refs])
        exchange = _Exchange(None, None, blocks)
        if not self.driver_share:
            exchange.calls = self._assemble_calls(token, blocks, [])
        return exchange

    def _assemble_calls(self, token: int, blocks: list[list[Any]], own: list[Any]) -> list[Any]:
        """Object store: have actor i (rank r) assemble its column shard from the other ranks'
        blocks, in rank order; ``own``: the driver's blocks by rank (when it shares)."""
        counts = [len(shard) for shard in self.task_shards]
        first = self.driver_share
        calls = []
        for index, actor in enumerate(self.pool.actors):
            rank = first + index
            received = [
                own[rank] if source < first else blocks[source - first][rank]
                for source in range(self.workers)
                if source != rank
            ]
            calls.append(actor.assemble.remote(token, counts, *received))
        return calls

    def _own_partial_shared(self, state: StepState, exchange: _Exchange) -> list[np.ndarray]:
        """Shared memory, one call per step (``ShardWorker.rows_gram_combine``): the driver
        writes its rows into the exchange, meets the actors at the barrier, writes its partial
        Gram beside theirs and meets them again; returns all W partial Grams (T, T), read from
        the arena. The actors then wait for the weights (see ``_combine``)."""
        start, stop = self.column_bounds[0], self.column_bounds[1]
        columns = self._arena["exchange"][:, start:stop]
        partials = self._arena["partials"]

        def rows_and_partial() -> None:
            self._own_rows(state, out=self._arena["exchange"][self._own.own])
            self._meet(exchange, 0)  # every worker's rows are in
            torch.mm(columns, columns.T, out=partials[0])
            self._meet(exchange, 1)  # every partial Gram is in

        self._call_off_on_failure(exchange, rows_and_partial)
        self._own_pieces = [columns]
        self._awaiting_weights = (exchange, state.replay.token)
        return list(partials.numpy())  # views of the arena: the caller sums them at once

    def _meet(self, exchange: _Exchange, phase: int) -> None:
        """Arrive at the barrier of ``phase`` of a one-call exchange and wait for the actors,
        watching them: a dead one would hold the driver there (its error is raised)."""

        def no_actor_failed() -> None:
            ready, _ = ray.wait(exchange.calls, num_returns=len(exchange.calls), timeout=0)
            ray.get(ready)  # raises the error of an actor that died

        self._barrier.arrive_and_wait(
            exchange.exchange_id + phase, BARRIER_TIMEOUT_S, check=no_actor_failed
        )

    def _call_off_on_failure(self, exchange: _Exchange, driver_part: Callable[[], None]) -> None:
        """Run the driver's part of a one-call exchange; if it fails (an actor died: the step is
        redone, or the driver's own work raised), release the actors waiting at any phase."""
        try:
            driver_part()
        except BaseException:
            for phase in range(4):
                self._barrier.abort(exchange.exchange_id + phase)
            ray.wait(exchange.calls, num_returns=len(exchange.calls), timeout=60)
            self._awaiting_weights = None
            raise

    def _release_awaiting(self) -> None:
        """Let the actors of a one-call exchange go when no Σ aₜgₜ came for their step (their
        rows stay resident), and collect the calls that ended."""
        if self._awaiting_weights is not None:
            exchange, _ = self._awaiting_weights
            self._awaiting_weights = None
            self._barrier.abort(exchange.exchange_id + 2)
            self._finished_calls.extend(exchange.calls)
        calls, self._finished_calls = self._finished_calls, []
        if calls:
            try:
                ray.get(calls)
            except ray.exceptions.RayError:
                pass  # a dead actor is replaced by the next request that needs it

    def _own_partial_store(self, state: StepState, exchange: _Exchange) -> np.ndarray:
        """Object store: the driver puts its blocks for the actors, has them assemble, and
        forms its own partial Gram from the blocks they sent it (rank 0's columns)."""
        rows = self._own_rows(state)
        bounds = self.column_bounds
        own = [None] + [
            ray.put(to_numpy(rows[:, bounds[rank] : bounds[rank + 1]]))
            for rank in range(1, self.workers)
        ]
        exchange.calls = self._assemble_calls(state.replay.token, exchange.blocks, own)
        received = ray.get([blocks[0] for blocks in exchange.blocks])
        self._own_pieces = [
            rows[:, bounds[0] : bounds[1]],
            *(as_tensor(block, self.device) for block in received),
        ]
        return block_gram(self._own_pieces).cpu().numpy()

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
        self.stats.add("gram_blocks", nbytes_of(partials[self.driver_share :]))  # the actors'
        gram = as_tensor(partials[0], torch.device("cpu")).clone()
        for partial in partials[1:]:
            gram += as_tensor(partial, torch.device("cpu"))
        return gram.to(self.device)

    def shared_gradient(self, state: StepState, weights: Tensor) -> Tensor:
        """Σ_t w_t g_t (P,): from per-task gradients already in hand (no pass), else one backward."""
        if state.shared_jacobian is not None or self._resident_token == state.replay.token:
            return self.shared_combination(state, weights)
        return super().shared_gradient(state, weights)

    def _combine(self, state: StepState, weights: Tensor) -> Tensor:
        self._ensure_columns(state)
        token = state.replay.token
        awaiting = self._awaiting_weights
        if awaiting is not None and awaiting[1] == token:
            return self._combine_one_call(awaiting[0], weights)
        self._release_awaiting()  # a step whose actors wait for weights it will not get
        weights_array = to_numpy(weights.float())
        calls = [actor.combine.remote(token, weights_array) for actor in self.pool.actors]
        own: list[Tensor] = []
        if self.driver_share:  # its columns, while the actors make theirs
            start, stop = self.column_bounds[0], self.column_bounds[1]
            shared = self._arena is not None
            out = (
                self._arena["direction"][start:stop]
                if shared
                else self._own_pieces[0].new_empty(stop - start)
            )
            combine_pieces(self._own_pieces, weights, out)
            own = [] if shared else [out]
        slices = ray.get(calls)
        self.stats.add("weights", weights_array.nbytes * len(slices))
        if self._arena is not None:  # each worker wrote its columns of the direction
            self.stats.add("direction", self._actor_direction_bytes())
            return self._arena["direction"].to(self.device, copy=True)
        self.stats.add("direction", nbytes_of(slices))
        return torch.cat([*own, *(as_tensor(s, self.device) for s in slices)])

    def _combine_one_call(self, exchange: _Exchange, weights: Tensor) -> Tensor:
        """Σ aₜgₜ of a one-call exchange: the driver writes the weights into the arena and meets
        the actors waiting for them; each worker writes its slice of the direction; they meet
        again. No Ray call: the actors' calls end here and are collected later."""
        self._awaiting_weights = None
        direction = self._arena["direction"]
        start, stop = self.column_bounds[0], self.column_bounds[1]

        def weights_and_slice() -> None:
            self._arena["weights"].copy_(weights)
            self._meet(exchange, 2)  # the weights are in
            combine_pieces(self._own_pieces, self._arena["weights"], direction[start:stop])
            self._meet(exchange, 3)  # every slice of the direction is in

        self._call_off_on_failure(exchange, weights_and_slice)
        self._finished_calls.extend(exchange.calls)
        self.stats.add("weights", self._arena["weights"].nbytes * self.num_actors)
        self.stats.add("direction", self._actor_direction_bytes())
        return direction.to(self.device, copy=True)

    def representation_gradients(self, state: StepState) -> Tensor:
        """(T, *z.shape); on the driver unless ``shard_representation`` (see the module notes)."""
        if not self.shard_representation or state.representation_grads is not None:
            return super().representation_gradients(state)
        self.pool  # noqa: B018 - start the actors first: the charges depend on K
        self._charge_together(self._heads_charges(state.replay), state.batch_size)
        state.representation_grads = self._resilient(lambda: self._representation_rows(state))
        return state.representation_grads

    def _representation_rows(self, state: StepState) -> Tensor:
        self._release_awaiting()  # the actors must be free to take the call
        replay: _Replay = state.replay
        version_id, holder = self._parameters_ref(replay)
        representation, targets = to_numpy(state.detached), to_numpy(state.targets)
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
        own = [self._own.own_representation_grads(state)] if self.driver_share else []
        rows = ray.get(refs)
        self.stats.add("representation_rows", nbytes_of(rows))
        return torch.cat([*own, *(as_tensor(r, self.device) for r in rows)])


register_engine(RayShardedEngine.name, RayShardedEngine)
