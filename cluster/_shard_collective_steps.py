"""The actor's side of engine ``ray_sharded``'s ``collective`` transport: the calls with which
a ``ShardWorker`` (``cluster/shard_actors.py``) joins the workers' ``torch.distributed`` group
and runs its part of a step with the primitives of ``cluster/collective.py``. The driver's side
is ``cluster/_shard_collective.py``; the protocol is on ``docs/engines/ray-sharded.md``.
"""

from __future__ import annotations

import torch
from mtlbench.cluster.collective import (
    CollectiveMember,
    GroupAddress,
    ShardLayout,
    all_reduce_gram,
    broadcast_weights,
    gather_direction,
    reshard_rows,
)
from torch import Tensor


class CollectiveSteps:
    """The actor's part of a step over ``torch.distributed`` collectives. Each Ray call carries
    only the step's token (and, for the rows, the usual replay arguments); the rows, their
    column shards, the Gram, the weights and the direction stay on this actor's device and
    move through the group. Every call returns the bytes this rank sent in it, by kind."""

    device: torch.device
    member: CollectiveMember | None
    group_layout: ShardLayout | None
    token: int
    rows_held: Tensor | None
    pieces: list[Tensor] | None

    def join_group(
        self, address: GroupAddress, group_rank: int, task_counts: list[int], bounds: list[int]
    ) -> int:
        """Leave the current group, if any, and join ``address`` as ``group_rank``; returns
        once every member joined. task_counts (W_g,), bounds (W_g + 1,): the group's layout."""
        self.leave_group()
        self.group_layout = ShardLayout(tuple(task_counts), tuple(bounds))
        self.member = CollectiveMember(address, group_rank, self.device)
        return address.generation

    def leave_group(self) -> None:
        if self.member is not None:
            self.member.close()
            self.member = None

    def collective_rows(self, token, version, holder, step, training) -> dict[str, int]:
        """Compute and hold this actor's rows (n_k, P) of step ``token`` (nothing is sent)."""
        rows = self._rows(version, holder, step, training)
        self.token, self.rows_held, self.pieces = token, rows, None
        return {}

    def collective_rows_gram(self, token, version, holder, step, training) -> dict[str, int]:
        """``collective_rows`` then ``collective_gram`` in one call."""
        self.collective_rows(token, version, holder, step, training)
        return self.collective_gram(token)

    def collective_gram(self, token: int) -> dict[str, int]:
        """All-to-all of the held rows by parameter shard (this actor keeps its column shard
        (T, P_r)), then the all-reduce of the (T, T) partial Grams (the driver keeps the sum)."""
        member, layout = self._group()
        if token != self.token or self.rows_held is None:
            raise RuntimeError(f"collective_gram: step {token} is not resident ({self.token})")
        shard = reshard_rows(member, self.rows_held, layout)
        self.pieces = [shard]
        all_reduce_gram(member, shard @ shard.T)
        return member.traffic.next_step()

    def collective_combine(self, token: int) -> dict[str, int]:
        """Receive the (T,) weights from the driver; send it this actor's (P_r,) slice of
        Σ_t w_t g_t, from its column shard."""
        member, layout = self._group()
        if token != self.token or not self.pieces:
            raise RuntimeError(f"collective_combine: step {token} is not resident ({self.token})")
        shard = self.pieces[0]
        weights = broadcast_weights(member, shard.new_empty(layout.num_tasks))
        gather_direction(member, weights @ shard, layout)
        return member.traffic.next_step()

    def _group(self) -> tuple[CollectiveMember, ShardLayout]:
        if self.member is None or self.group_layout is None:
            raise RuntimeError("a collective call reached an actor that joined no group")
        return self.member, self.group_layout

    def _rows(self, version, holder, step, training, out: Tensor | None = None) -> Tensor:
        """This actor's rows (n_k, P) of the step (``ShardWorker._rows``)."""
        raise NotImplementedError
