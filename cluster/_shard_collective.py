"""The driver's side of engine ``ray_sharded``'s ``collective`` transport: the parameter-shard
exchange as ``torch.distributed`` collectives (``cluster/collective.py``) among the driver
(group rank 0, which solves) and the actors (ranks 1 … K; ``cluster/_shard_collective_steps.py``).

A step is at most three Ray calls per actor, each carrying only the step's token (the first
also the replay arguments, as on the other transports); the data moves through the group, on
the devices where the rows are:

1. rows (``collective_rows``; at ``forward`` when prefetched, else fused with 2);
2. Gram (``collective_gram``): all-to-all of the rows by parameter shard, all-reduce of the
   (T, T) partial Grams; the driver keeps the sum;
3. Σ aₜgₜ (``collective_combine``), only when asked: broadcast of the driver's weights, gather
   of every worker's (P_r,) slice of the direction to the driver.

An actor never waits for the driver outside a request the driver is serving, so no step's
actors are held between the method's requests (unlike the one-call shared-memory step).
When anything fails mid-collective, the driver leaves the group (its peers then raise at once),
finds which actor died, if any (the engine replaces it and redoes the step), and a new
generation of the group, on a fresh store prefix, is formed before the next collective.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

import ray
import torch
from mtlbench.cluster._shard_gram import ShardGrams
from mtlbench.cluster._shard_pool import ShardPool
from mtlbench.cluster._shard_records import Exchange, Replay, replay_of
from mtlbench.cluster._shard_transport import log
from mtlbench.cluster.collective import (
    CollectiveMember,
    GroupHost,
    ShardLayout,
    all_reduce_gram,
    broadcast_weights,
    gather_direction,
    reshard_rows,
)
from mtlbench.cluster.shard_actors import ACTOR_FAILURES
from mtlbench.harness.gradients import Batch, StepState
from torch import Tensor

# How long a member waits for its peers in the rendezvous and in a collective, in seconds. A
# dead peer is noticed at once (its connections close); only a hung one reaches this.
GROUP_TIMEOUT_S = 600.0
Result = TypeVar("Result")


class ShardCollective(ShardGrams):
    """The engine's collective transport (on the Gram layer; the facade is ``sharded.py``)."""

    def _init_collective(self) -> None:
        self._group_host: GroupHost | None = None
        self._member: CollectiveMember | None = None
        self._group_stale = True  # (re)formed before the next collective
        self._driver_shard: Tensor | None = None  # (T, P_0) the driver's column shard
        # bytes each group rank sent, by kind, over the exchanges that completed (rank 0: the
        # driver); what ``expected_collective_bytes`` gives per exchange
        self.collective_bytes_sent: list[dict[str, int]] = []

    # ---- choosing and forming the group --------------------------------------------------------
    def _wants_collective(self) -> bool:
        """``collective`` asked for, or ``auto`` with GPU actors."""
        requested = self.requested_transport
        return requested == "collective" or (requested == "auto" and self.actor_resources[1] > 0)

    def _open_arena(self, pool: ShardPool) -> None:
        """Choose the transport (see the docs page): the collective one when wanted and
        possible, else the shared-memory / object-store choice; record why."""
        if not self._wants_collective():
            super()._open_arena(pool)
            if not self.transport_reason:
                self.transport_reason = (
                    "requested"
                    if self.requested_transport == self.transport
                    else "auto: CPU actors on the driver's machine, room in /dev/shm"
                )
            return
        try:
            self._form_group(pool)
        except (OSError, RuntimeError, ValueError) as error:
            self._close_group()
            if self.requested_transport == "collective":
                self.close()
                raise ValueError(
                    f"engine_options.transport: collective is not possible: {error}"
                ) from error
            self.transport_reason = f"collective not possible: {error}"
            log.warning("ray_sharded: using Ray's object store (%s)", self.transport_reason)
            return
        self.transport = "collective"
        self.transport_reason = (
            "requested"
            if self.requested_transport == "collective"
            else "auto: the actors have GPUs (gpus_per_actor > 0)"
        )

    def _group_layout(self) -> ShardLayout:
        """Who holds what in the group: the driver is rank 0 (with no task and no column when
        it computes no share), actor i rank i + 1."""
        counts = tuple(len(shard) for shard in self.task_shards)
        bounds = tuple(self.column_bounds)
        if self.driver_share:
            return ShardLayout(counts, bounds)
        return ShardLayout((0, *counts), (0, *bounds))

    def _form_group(self, pool: ShardPool) -> None:
        """Form the group (first call), or a new generation of it after a failure: every
        member, survivors included, leaves the old one and joins the new."""
        actors_kind = "cuda" if self.actor_resources[1] > 0 else "cpu"
        if self.device.type != actors_kind:
            raise OSError(
                f"the driver's model is on {self.device.type}, the actors' on {actors_kind}: "
                "one group holds one kind of device"
            )
        layout = self._group_layout()
        all_local = pool.on_this_node()
        host = self._group_host
        if host is not None and host.address().loopback and not all_local:
            with contextlib.suppress(OSError):  # see ``_close_group``
                host.close()  # a replacement landed on another machine: serve the node's address
            host = self._group_host = None
        if host is None:
            host = self._group_host = GroupHost(
                layout.world_size,
                actors_kind,
                all_local=all_local,
                node_address=ray.util.get_node_ip_address(),
                timeout_s=GROUP_TIMEOUT_S,
            )
            address = host.address()
        else:
            address = host.next_generation()
        self._leave_group()
        counts, bounds = list(layout.task_counts), list(layout.column_bounds)
        joins = [
            actor.join_group.remote(address, index + 1, counts, bounds)
            for index, actor in enumerate(pool.actors)
        ]
        self._member = CollectiveMember(address, 0, self.device, store=host.store)
        ray.get(joins)
        if not self.collective_bytes_sent:
            self.collective_bytes_sent = [{} for _ in range(layout.world_size)]
        self._group_stale = False

    def _leave_group(self) -> None:
        if self._member is not None:
            self._member.close()
            self._member = None

    def _close_group(self) -> None:
        self._leave_group()
        if self._group_host is not None:
            # GroupHost.close closes its listening socket after the store, which already closed
            # that descriptor (EBADF; the socket is left detached, fd -1): harmless at the end
            with contextlib.suppress(OSError):
                self._group_host.close()
            self._group_host = None

    def _check_transport(self) -> None:
        """After an actor was replaced: a new generation of the group before the next step."""
        if self.transport == "collective":
            self._group_stale = True
        else:
            super()._check_transport()

    @property
    def member(self) -> CollectiveMember:
        """The driver's member of the current group (formed when stale)."""
        if self._group_stale or self._member is None:
            self._form_group(self.pool)
        assert self._member is not None  # just formed
        return self._member

    # ---- the step -------------------------------------------------------------------------------
    def _launch_columns(self, batch: Batch, replay: Replay) -> Exchange:
        """Prefetch (or a step's start): the actors compute and hold their rows."""
        if self.transport != "collective":
            return super()._launch_columns(batch, replay)
        args = self._row_call_args(batch, replay)
        token = replay.token
        return Exchange([actor.collective_rows.remote(token, *args) for actor in self.pool.actors])

    def _ensure_columns(self, state: StepState) -> None:
        if self.transport != "collective":
            super()._ensure_columns(state)
        elif self._resident_token != replay_of(state).token:
            self._collective_gram(state)

    def _parameter_sharded_gram(self, state: StepState) -> Tensor:
        if self.transport != "collective":
            return super()._parameter_sharded_gram(state)
        return self._collective_gram(state)

    def _collective_gram(self, state: StepState) -> Tensor:
        """(T, T) J Jᵀ: the actors' rows (prefetched, or computed now), the all-to-all by
        parameter shard and the all-reduce of the partial Grams, the driver taking part."""
        replay = replay_of(state)
        prefetched, replay.in_flight = replay.in_flight, None  # a retry computes afresh
        if self._in_flight is replay:
            self._in_flight = None
        if prefetched is None:
            self._settle_in_flight()
        member, token, actors = self.member, replay.token, self.pool.actors
        if prefetched is None:
            args = self._row_call_args((state.inputs, state.targets), replay)
            gram_calls = [actor.collective_rows_gram.remote(token, *args) for actor in actors]
        else:
            gram_calls = [actor.collective_gram.remote(token) for actor in actors]
        calls = [*(prefetched.refs() if prefetched is not None else []), *gram_calls]
        exchange = Exchange(calls)

        def driver_part() -> Tensor:
            if self.driver_share:
                own_rows = self._own_rows(state)
            else:
                dtype = next(iter(self.model.shared_parameters())).dtype
                own_rows = torch.zeros(0, self.num_shared, dtype=dtype, device=self.device)
            shard = reshard_rows(member, own_rows, self._group_layout())
            self._driver_shard = shard
            self._own_pieces = [shard]  # rank 0's columns, for a later shared_jacobian
            return all_reduce_gram(member, shard @ shard.T)

        gram = self._guarded(exchange, driver_part)
        ray.get(calls)  # the rows calls' errors too
        self._count_traffic(member, ray.get(gram_calls))
        self._resident_token = token
        return gram

    def _combine(self, state: StepState, weights: Tensor) -> Tensor:
        """Σ aₜgₜ (P,): the weights broadcast, every worker's slice gathered to the driver."""
        if self.transport != "collective":
            return super()._combine(state, weights)
        self._ensure_columns(state)
        member, token = self.member, replay_of(state).token
        calls = [actor.collective_combine.remote(token) for actor in self.pool.actors]

        def driver_part() -> Tensor:
            shard = self._driver_shard
            if shard is None:
                raise RuntimeError("ray_sharded: no column shard held for Σ aₜgₜ")
            sent = broadcast_weights(member, weights.to(shard.dtype).clone())
            direction = gather_direction(member, sent @ shard, self._group_layout())
            if direction is None:
                raise RuntimeError("ray_sharded: the driver must be rank 0 of the group")
            return direction

        direction = self._guarded(Exchange(calls), driver_part)
        self._count_traffic(member, ray.get(calls))
        return direction.to(self.device)

    # ---- failures and bookkeeping ---------------------------------------------------------------
    def _guarded(self, exchange: Exchange, driver_part: Callable[[], Result]) -> Result:
        """Run the driver's part of a collective step. If it fails (a peer died, or its own
        work raised), leave the group (releasing the actors waiting in it), let the actors'
        calls end, and raise the error of an actor that died, if one did (the engine then
        replaces it and redoes the step), else the driver's own."""
        try:
            return driver_part()
        except Exception as error:
            failure = self._abandon(exchange)
            if failure is not None:
                raise failure from error
            raise

    def _abandon(self, exchange: Exchange) -> BaseException | None:
        """Leave the group, wait for the actors' calls; the death of an actor, if any."""
        self._group_stale = True
        self._leave_group()
        calls = exchange.refs()
        ray.wait(calls, num_returns=len(calls), timeout=60)
        for call in calls:
            try:
                ray.get(call, timeout=0)
            except ACTOR_FAILURES as failure:
                return failure
            except ray.exceptions.RayError:
                continue  # a survivor released from the collective, or still ending
        return None

    def _count_traffic(self, member: CollectiveMember, actors_sent: list[dict[str, int]]) -> None:
        """Add one completed call per rank to the per-rank and the run's byte counts."""
        sent_by_rank = [member.traffic.next_step(), *actors_sent]
        for rank, sent in enumerate(sent_by_rank):
            totals = self.collective_bytes_sent[rank]
            for kind, nbytes in sent.items():
                totals[kind] = totals.get(kind, 0) + nbytes
                self.stats.add(kind, nbytes)
