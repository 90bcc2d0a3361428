"""The Gram strategies of engine ``ray_sharded`` and the requests a method makes: the shared
Jacobian (rows gathered, or columns of a parameter-shard exchange), the T x T Gram (``gather``:
formed on the driver; ``parameter``: the sum of the workers' partial Grams), Σ aₜgₜ (on the
driver, or each worker's slice of it), MGDA-UB's representation rows, and what each charges.
See ``docs/engines/ray-sharded.md``.
"""

from __future__ import annotations

import ray
import torch
from mtlbench.cluster._shard_exchange import ShardExchange
from mtlbench.cluster._shard_options import RayShardedOptions
from mtlbench.cluster._shard_records import Exchange, Replay, replay_of
from mtlbench.cluster._shard_replica import as_tensor, combine_pieces, nbytes_of, to_numpy
from mtlbench.harness.budget import BudgetExhausted
from mtlbench.harness.gradients import StepState
from torch import Tensor


class ShardGrams(ShardExchange):
    """The engine's Gram strategies (on the exchange layer; the facade is ``sharded.py``)."""

    def _init_grams(self, options: RayShardedOptions) -> None:
        self.shard_representation = options.shard_representation

    def _charge_together(self, charges: list[tuple[str, int]], batch_size: int) -> None:
        """Charge several pass kinds as one: all of them, or (BudgetExhausted) none."""
        total = sum(self.costs.flops(kind, batch_size, passes) for kind, passes in charges)
        if self.budget.kind == "flops" and self.budget.spent_flops + total > self.budget.limit:
            raise BudgetExhausted(
                f"sharded Jacobian needs {total:.3g} FLOPs, {self.budget.remaining:.3g} left"
            )
        for kind, passes in charges:
            self.charge(kind, batch_size, passes)

    def _heads_charges(self, replay: Replay) -> list[tuple[str, int]]:
        """The workers' heads passes for their z-gradients: one per-task pass each (forward and
        backward, as ``batched`` charges it), else a replayed forward per actor and T VJPs."""
        if replay.per_task_heads:  # every worker, the driver's share included
            return [("heads_forward", self.workers), ("heads_backward_input", self.workers)]
        # the driver's share reads its own forward's heads graph: no replayed heads forward
        return [("heads_forward", self.num_actors), ("heads_backward_input", self.num_tasks)]

    def _jacobian_charges(self, replay: Replay) -> list[tuple[str, int]]:
        return [
            ("encoder_forward", self.num_actors),
            *self._heads_charges(replay),
            ("encoder_backward", self.num_tasks),
        ]

    def shared_jacobian(self, state: StepState) -> Tensor:
        """(T, P) per-task shared gradients, rows computed by the actors and gathered here."""
        if state.shared_jacobian is not None:
            return state.shared_jacobian
        if self._resident_token == replay_of(state).token or replay_of(state).in_flight is not None:
            if self._resident_token != replay_of(state).token:  # prefetched: charged when collected
                self._charge_together(self._jacobian_charges(replay_of(state)), state.batch_size)
            state.shared_jacobian = self._resilient(lambda: self._gather_columns(state))
            return state.shared_jacobian
        self.pool  # noqa: B018 - start the actors first: the charges depend on K
        self._charge_together(self._jacobian_charges(replay_of(state)), state.batch_size)
        state.shared_jacobian = self._resilient(lambda: self._gather_rows(state))
        return state.shared_jacobian

    def _gather_rows(self, state: StepState) -> Tensor:
        self._settle_in_flight()  # the rows overwrite the shared exchange
        args = self._row_call_args((state.inputs, state.targets), replay_of(state))
        if self._arena is not None:
            token = replay_of(state).token
            calls = [actor.write_rows.remote(token, *args) for actor in self.pool.actors]
            if self.driver_share:  # beside the actors, into its rows of the exchange
                self._own_rows(state, out=self.arena["exchange"][self.own_share.own])
            ray.get(calls)
            self._resident_token = -1  # rows written, no partial Gram formed
            self.stats.add("jacobian_rows", self._actor_rows_bytes())
            return self.arena["exchange"].to(self.device, copy=True)
        refs = [actor.jacobian_rows.remote(*args) for actor in self.pool.actors]
        own = [self._own_rows(state)] if self.driver_share else []
        rows = ray.get(refs)
        self.stats.add("jacobian_rows", nbytes_of(rows))
        return torch.cat([*own, *(as_tensor(r, self.device) for r in rows)])

    def _gather_columns(self, state: StepState) -> Tensor:
        self._ensure_columns(state)
        if self._arena is not None:  # the whole Jacobian is in the exchange
            self.stats.add("jacobian_columns", self._actor_rows_bytes())
            return self.arena["exchange"].to(self.device, copy=True)
        token = replay_of(state).token
        shards = ray.get([actor.column_shard.remote(token) for actor in self.pool.actors])
        self.stats.add("jacobian_columns", nbytes_of(shards))
        own = [torch.cat(self._own_pieces)] if self.driver_share else []
        return torch.cat([*own, *(as_tensor(s, self.device) for s in shards)], dim=1)

    def shared_gram(self, state: StepState) -> Tensor:
        """(T, T) Gram matrix g_t·g_s of the per-task shared gradients (see the module notes).

        Charged as the local engines charge it (``gram``: 2 T² P FLOPs), wherever it is formed,
        once per step: a repeated request returns the step's Gram, with no pass and no charge.
        """
        replay = replay_of(state)
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

    def _parameter_sharded_gram(self, state: StepState) -> Tensor:
        partials = self._build_columns(state)
        self._resident_token = replay_of(state).token
        self.stats.add("gram_blocks", nbytes_of(partials[self.driver_share :]))  # the actors'
        gram = as_tensor(partials[0], torch.device("cpu")).clone()
        for partial in partials[1:]:
            gram += as_tensor(partial, torch.device("cpu"))
        return gram.to(self.device)

    def shared_combination(self, state: StepState, weights: Tensor) -> Tensor:
        """Σ_t w_t g_t (P,) where J lies: on the driver if gathered, else on the actors' shards."""
        if state.shared_jacobian is None and self._resident_token == replay_of(state).token:
            direction = self._resilient(lambda: self._combine(state, weights))
            self.budget.charge("combine", 2.0 * self.num_tasks * self.num_shared)
            return direction
        return super().shared_combination(state, weights)

    def shared_gradient(self, state: StepState, weights: Tensor) -> Tensor:
        """Σ_t w_t g_t (P,): from the per-task gradients in hand (no pass), else one backward."""
        if state.shared_jacobian is not None or self._resident_token == replay_of(state).token:
            return self.shared_combination(state, weights)
        return super().shared_gradient(state, weights)

    def _combine(self, state: StepState, weights: Tensor) -> Tensor:
        self._ensure_columns(state)
        token = replay_of(state).token
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
                self.arena["direction"][start:stop]
                if shared
                else self._own_pieces[0].new_empty(stop - start)
            )
            combine_pieces(self._own_pieces, weights, out)
            own = [] if shared else [out]
        slices = ray.get(calls)
        self.stats.add("weights", weights_array.nbytes * len(slices))
        if self._arena is not None:  # each worker wrote its columns of the direction
            self.stats.add("direction", self._actor_direction_bytes())
            return self.arena["direction"].to(self.device, copy=True)
        self.stats.add("direction", nbytes_of(slices))
        return torch.cat([*own, *(as_tensor(s, self.device) for s in slices)])

    def _combine_one_call(self, exchange: Exchange, weights: Tensor) -> Tensor:
        """Σ aₜgₜ of a one-call exchange: the driver writes the weights into the arena and meets
        the actors waiting for them; each worker writes its slice of the direction; they meet
        again. No Ray call: the actors' calls end here and are collected later."""
        self._awaiting_weights = None
        direction = self.arena["direction"]
        start, stop = self.column_bounds[0], self.column_bounds[1]

        def weights_and_slice() -> None:
            self.arena["weights"].copy_(weights)
            self._meet(exchange, 2)  # the weights are in
            combine_pieces(self._own_pieces, self.arena["weights"], direction[start:stop])
            self._meet(exchange, 3)  # every slice of the direction is in

        self._call_off_on_failure(exchange, weights_and_slice)
        self._finished_calls.extend(exchange.started_calls())
        self.stats.add("weights", self.arena["weights"].nbytes * self.num_actors)
        self.stats.add("direction", self._actor_direction_bytes())
        return direction.to(self.device, copy=True)

    def representation_gradients(self, state: StepState) -> Tensor:
        """(T, *z.shape); on the driver unless ``shard_representation`` (see the module notes)."""
        if not self.shard_representation or state.representation_grads is not None:
            return super().representation_gradients(state)
        self.pool  # noqa: B018 - start the actors first: the charges depend on K
        self._charge_together(self._heads_charges(replay_of(state)), state.batch_size)
        state.representation_grads = self._resilient(lambda: self._representation_rows(state))
        return state.representation_grads

    def _representation_rows(self, state: StepState) -> Tensor:
        self._release_awaiting()  # the actors must be free to take the call
        replay = replay_of(state)
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
        own = [self.own_share.own_representation_grads(state)] if self.driver_share else []
        rows = ray.get(refs)
        self.stats.add("representation_rows", nbytes_of(rows))
        return torch.cat([*own, *(as_tensor(r, self.device) for r in rows)])
