"""The exchange protocol of engine ``ray_sharded``: launching the actors' part of a step (rows,
the all-to-all by parameter shard, the partial Grams, for one-call steps the weights and the
direction too), the driver's own share beside them, prefetching the next step's exchange,
settling one nobody collected, and redoing an exchange an actor's death interrupted
(``_resilient``). See ``docs/engines/ray-sharded.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import ray
import torch
from mtlbench.cluster._shard_options import RayShardedOptions
from mtlbench.cluster._shard_records import Exchange, Replay, replay_of
from mtlbench.cluster._shard_replica import as_tensor, block_gram, to_numpy
from mtlbench.cluster._shard_transport import ShardTransport
from mtlbench.cluster.shard_actors import ACTOR_FAILURES, BARRIER_TIMEOUT_S
from mtlbench.harness.gradients import Batch, StepState
from torch import Tensor

Result = TypeVar("Result")


class ShardExchange(ShardTransport):
    """The engine's exchange layer (on the transport layer; the Gram strategies build on it)."""

    def _init_exchange(self, options: RayShardedOptions) -> None:
        """The exchange's state: nothing in flight, nothing resident."""
        self.gram_strategy = options.gram
        self.prefetch = options.prefetch
        self.max_restarts = options.max_restarts
        self._gram_asked = False  # this step asked for a parameter-shard Gram (prefetch the next)
        self._in_flight: Replay | None = None  # the step whose prefetch is not yet collected
        # one-call steps (shared memory, driver's share): the exchange whose actors wait for
        # the weights of Σ aₜgₜ, with its step's token; and finished calls not yet collected
        self._awaiting_weights: tuple[Exchange, int] | None = None
        self._finished_calls: list[Any] = []
        self._own_pieces: list[Tensor] = []  # the driver's column shard of the resident step
        self._resident_token = -1  # the step whose rows the workers hold

    def _prefetch(self, batch: Batch, replay: Replay) -> None:
        """Start step ``replay``'s exchange before the driver's forward when the previous step
        asked for the parameter-shard Gram (see ``RayShardedEngine.forward``)."""
        self._settle_in_flight()
        if self.prefetch and self._gram_asked and self.gram_strategy == "parameter":
            # a dead actor shows when the exchange is collected, where it is replaced and redone
            replay.in_flight = self._launch_columns(batch, replay)
            self._in_flight = replay
            self.stats.prefetched += 1
        self._gram_asked = False

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
                self.barrier.abort(exchange.exchange_id)
            # released; a failed actor is replaced by the next request that needs it
            with contextlib.suppress(ray.exceptions.RayError):
                self._get_all(refs, exchange.exchange_id)

    def _release_awaiting(self) -> None:
        """Let the actors of a one-call exchange go when no Σ aₜgₜ came for their step (their
        rows stay resident), and collect the calls that ended."""
        if self._awaiting_weights is not None:
            exchange, _ = self._awaiting_weights
            self._awaiting_weights = None
            self.barrier.abort(exchange.barrier_id() + 2)
            self._finished_calls.extend(exchange.started_calls())
        calls, self._finished_calls = self._finished_calls, []
        if calls:
            # a dead actor is replaced by the next request that needs it
            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(calls)

    def _row_call_args(self, batch: Batch, replay: Replay) -> tuple:
        """The arguments of every actor's rows call (parameters and step put at most once),
        with the bytes each actor reads counted."""
        version_id, holder = self._parameters_ref(replay)
        step_ref, batch_bytes, rng_bytes = self._step_ref(batch, replay)
        for rank in range(len(self.pool.actors)):
            self._ship_parameters(version_id, rank)
            self.stats.add("batch", batch_bytes)
            self.stats.add("rng", rng_bytes)
        return version_id, holder, step_ref, replay.training

    def _launch_columns(self, batch: Batch, replay: Replay) -> Exchange:
        """Start the actors' part of the exchange of step ``replay`` (see ``Exchange``)."""
        token = replay.token
        actors = self.pool.actors
        args = self._row_call_args(batch, replay)
        workers = self.workers
        if self._reshard_bytes:  # one worker exchanges nothing
            self.stats.add("reshard", self._reshard_bytes)
        if self._arena is not None and self.driver_share:  # one call per step, 4 barrier ids
            exchange_id = 4 * next(self._exchange_ids)
            calls = [actor.rows_gram_combine.remote(exchange_id, token, *args) for actor in actors]
            return Exchange(calls, exchange_id)
        if self._arena is not None:
            exchange_id = next(self._exchange_ids)
            calls = [actor.rows_and_gram.remote(exchange_id, token, *args) for actor in actors]
            return Exchange(calls, exchange_id)
        blocks = []
        for actor in actors:
            refs = actor.jacobian_blocks.options(num_returns=workers).remote(token, *args)
            blocks.append(refs if workers > 1 else [refs])
        exchange = Exchange(None, None, blocks)
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

    def _build_columns(self, state: StepState) -> list[np.ndarray]:
        """Rows → blocks → every worker's column shard; returns the W partial Grams (T, T).
        Collects the step's prefetched exchange if there is one, else launches it now; the
        driver's own share (when it has one) is computed here, while the actors work."""
        replay = replay_of(state)
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
            return [*own, *ray.get(launched.started_calls())]
        return [*own, *self._get_all(launched.started_calls(), launched.exchange_id)]

    def _ensure_columns(self, state: StepState) -> None:
        if self._resident_token != replay_of(state).token:
            self._build_columns(state)
            self._resident_token = replay_of(state).token

    def _own_partial_shared(self, state: StepState, exchange: Exchange) -> list[np.ndarray]:
        """Shared memory, one call per step (``ShardWorker.rows_gram_combine``): the driver
        writes its rows into the exchange, meets the actors at the barrier, writes its partial
        Gram beside theirs and meets them again; returns all W partial Grams (T, T), read from
        the arena. The actors then wait for the weights (see ``_combine``)."""
        start, stop = self.column_bounds[0], self.column_bounds[1]
        columns = self.arena["exchange"][:, start:stop]
        partials = self.arena["partials"]

        def rows_and_partial() -> None:
            self._own_rows(state, out=self.arena["exchange"][self.own_share.own])
            self._meet(exchange, 0)  # every worker's rows are in
            torch.mm(columns, columns.T, out=partials[0])
            self._meet(exchange, 1)  # every partial Gram is in

        self._call_off_on_failure(exchange, rows_and_partial)
        self._own_pieces = [columns]
        self._awaiting_weights = (exchange, replay_of(state).token)
        return list(partials.numpy())  # views of the arena: the caller sums them at once

    def _meet(self, exchange: Exchange, phase: int) -> None:
        """Arrive at the barrier of ``phase`` of a one-call exchange and wait for the actors,
        watching them: a dead one would hold the driver there (its error is raised)."""

        def no_actor_failed() -> None:
            calls = exchange.started_calls()
            ready, _ = ray.wait(calls, num_returns=len(calls), timeout=0)
            ray.get(ready)  # raises the error of an actor that died

        self.barrier.arrive_and_wait(
            exchange.barrier_id() + phase, BARRIER_TIMEOUT_S, check=no_actor_failed
        )

    def _call_off_on_failure(self, exchange: Exchange, driver_part: Callable[[], None]) -> None:
        """Run the driver's part of a one-call exchange; if it fails (an actor died: the step is
        redone, or the driver's own work raised), release the actors waiting at any phase."""
        try:
            driver_part()
        except BaseException:
            for phase in range(4):
                self.barrier.abort(exchange.barrier_id() + phase)
            calls = exchange.started_calls()
            ray.wait(calls, num_returns=len(calls), timeout=60)
            self._awaiting_weights = None
            raise

    def _own_partial_store(self, state: StepState, exchange: Exchange) -> np.ndarray:
        """Object store: the driver puts its blocks for the actors, has them assemble, and
        forms its own partial Gram from the blocks they sent it (rank 0's columns)."""
        rows = self._own_rows(state)
        bounds = self.column_bounds
        own = [None] + [
            ray.put(to_numpy(rows[:, bounds[rank] : bounds[rank + 1]]))
            for rank in range(1, self.workers)
        ]
        actor_blocks = exchange.blocks or []
        exchange.calls = self._assemble_calls(replay_of(state).token, actor_blocks, own)
        received = ray.get([blocks[0] for blocks in actor_blocks])
        self._own_pieces = [
            rows[:, bounds[0] : bounds[1]],
            *(as_tensor(block, self.device) for block in received),
        ]
        return block_gram(self._own_pieces).cpu().numpy()

    def _own_rows(self, state: StepState, out: Tensor | None = None) -> Tensor:
        """(n_0, P) the driver's rows, from its own forward's graph (no replay), into ``out``."""
        own = self.own_share
        return own.own_jacobian(state, own.own_representation_grads(state), out)
