"""The parameter-shard exchange of ``ray_sharded`` as ``torch.distributed`` collectives.

W members (the driver as rank 0 when it shares the work, and the Ray actors) hold the per-task
Jacobian J (T×P) in task shards: rank r computed the rows of its T_r tasks (a contiguous range,
in rank order). One exchange, all on the members' devices (CUDA tensors under NCCL, CPU tensors
under gloo; nothing is copied to the host)::

    rows   = J[my tasks, :]                                  (T_r, P)   each rank's own VJPs
    shard  = reshard_rows(member, rows, layout)              (T, P_r)   all-to-all by column shard
    gram   = all_reduce_gram(member, shard @ shard.T)        (T, T)     Σ over ranks = J Jᵀ
    w      = broadcast_weights(member, weights or buffer)    (T,)       the solver's, from rank 0
    d      = gather_direction(member, w @ shard, layout)     (P,) on rank 0 = Σₜ wₜ gₜ

(:func:`run_exchange` does the whole sequence; the solver runs on rank 0 between the Gram and
the broadcast.) Rank r owns the columns ``column_bounds[r] … column_bounds[r + 1]`` (P_r of
them): shards may be uneven, and a rank may own no task or no column.

Which collective does what, and why:

- ``reshard_rows`` and ``gather_direction`` move blocks of different sizes to different ranks:
  both are one ``alltoall_base`` with split sizes (an all-to-all-v). gloo implements it for CPU
  tensors (checked on torch 2.13) and NCCL for CUDA tensors, so one code path serves both;
  gloo's list form ``alltoall`` would not do (it insists on equal sizes: "invalid tensor
  size"). Rank r's send buffer is its blocks ``rows[:, shard l]`` one after the other: an
  :class:`OutgoingRows` that the VJPs write into directly, or packed from a row-major (T_r, P)
  tensor (one device-side copy); its receive buffer, the blocks ``J[tasks of l, shard r]`` in
  rank order, *is* its (T, P_r) column shard, row-major, with no copy. For the direction, every
  rank sends its (P_r,) slice to rank 0 only, whose receive buffer is then the (P,) direction.
  A ``gather`` would need equal slices on gloo; send/recv pairs would do the same with W − 1
  calls on rank 0.
- ``all_reduce_gram``: ``allreduce`` (sum) of the (T, T) partial Grams; ``broadcast_weights``:
  ``broadcast`` from rank 0.
- One rank (one GPU): the all-to-all and the gather are identities and are skipped (a rank's
  rows are its shard, its slice the direction); the all-reduce and the broadcast still run, so
  the backend's fixed cost per call shows in a one-rank measurement.

Bytes (``member.traffic.sent_bytes``, counted from the tensors each call hands over, and
:func:`expected_collective_bytes`, derived from the algorithm alone) are what a rank puts on the
wire for other ranks under a direct implementation: its all-to-all blocks for other ranks, its
(T, T) partial Gram (a ring all-reduce moves 2(W − 1)/W times the tensor per rank on the wire;
``benchmarks/sharding_projection.py`` uses that), the weights once to every other rank from rank
0, each slice of the direction once to rank 0. A rank's block for itself never counts.

The group itself (store, generations, backends, the byte counter) is formed in
``cluster/_collective_group.py``; its public names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate, pairwise

import torch
import torch.distributed as dist
from mtlbench.cluster._collective_group import (
    ByteCounter,
    CollectiveMember,
    GroupAddress,
    GroupHost,
)
from torch import Tensor

__all__ = [
    "ByteCounter",
    "CollectiveMember",
    "GroupAddress",
    "GroupHost",
    "OutgoingRows",
    "ShardLayout",
    "all_reduce_gram",
    "broadcast_weights",
    "expected_collective_bytes",
    "gather_direction",
    "reshard_rows",
    "run_exchange",
]

KINDS = ("reshard", "gram", "weights", "direction")


@dataclass(frozen=True)
class ShardLayout:
    """Who holds what. task_counts: (W,) tasks per rank, contiguous in rank order (sum T).
    column_bounds: (W + 1,) rank r owns parameter columns [column_bounds[r], column_bounds[r + 1]),
    from 0 to P, non-decreasing."""

    task_counts: tuple[int, ...]
    column_bounds: tuple[int, ...]

    def __post_init__(self) -> None:
        bounds = self.column_bounds
        if len(bounds) != len(self.task_counts) + 1:
            raise ValueError(
                f"column_bounds: expected {len(self.task_counts) + 1} bounds (W + 1), "
                f"got {len(bounds)}"
            )
        if bounds[0] != 0 or any(b > a for a, b in zip(bounds[1:], bounds[:-1], strict=True)):
            raise ValueError(f"column_bounds: must start at 0 and not decrease, got {bounds}")
        if any(count < 0 for count in self.task_counts):
            raise ValueError(f"task_counts: must be >= 0, got {self.task_counts}")

    @classmethod
    def even(cls, num_tasks: int, num_params: int, world_size: int) -> ShardLayout:
        """Tasks and columns split as evenly as possible, the larger shards first."""

        def counts(total: int) -> list[int]:
            return [total // world_size + (r < total % world_size) for r in range(world_size)]

        return cls(tuple(counts(num_tasks)), (0, *accumulate(counts(num_params))))

    @property
    def world_size(self) -> int:
        return len(self.task_counts)

    @property
    def num_tasks(self) -> int:
        return sum(self.task_counts)

    @property
    def num_params(self) -> int:
        return self.column_bounds[-1]

    def column_counts(self) -> list[int]:
        """(W,) columns per rank."""
        bounds = self.column_bounds
        return [high - low for low, high in pairwise(bounds)]


def _check_member(member: CollectiveMember, layout: ShardLayout) -> None:
    if member.world_size != layout.world_size:
        raise ValueError(
            f"layout: {layout.world_size} ranks for a group of {member.world_size} members"
        )


class OutgoingRows:
    """This rank's rows of J kept as the all-to-all's send buffer: for every rank l in turn, a
    contiguous (T_r, P_l) block J[my tasks, shard l], all in one flat buffer (T_r·P numbers).

    Writing each task's gradient straight into it (:meth:`write_row`) spares
    :func:`reshard_rows` the packing copy it makes of a row-major (T_r, P) tensor (a full extra
    pass over the rows: 0.9 GB per rank at T = 40, P = 11.2M, K = 2).
    layout, rank: whose rows; device, dtype: the buffer's.
    """

    def __init__(
        self,
        layout: ShardLayout,
        rank: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.layout, self.rank = layout, rank
        self.num_rows = layout.task_counts[rank]
        self.buffer = torch.empty(self.num_rows * layout.num_params, device=device, dtype=dtype)
        sizes = [self.num_rows * count for count in layout.column_counts()]
        self.blocks = [
            block.view(self.num_rows, count)
            for block, count in zip(self.buffer.split(sizes), layout.column_counts(), strict=True)
        ]

    def write_row(self, index: int, pieces: list[Tensor]) -> None:
        """Row ``index`` (0 … T_r − 1) := the concatenation of ``pieces`` (e.g. the flattened
        per-parameter gradients in order), P numbers in all, copied block by block."""
        bounds, rank_of_column, offset = self.layout.column_bounds, 0, 0
        for piece in pieces:
            flat, start = piece.reshape(-1), 0
            while start < flat.numel():
                while offset + start >= bounds[rank_of_column + 1]:
                    rank_of_column += 1
                column = offset + start
                stop = min(flat.numel(), bounds[rank_of_column + 1] - offset)
                low = column - bounds[rank_of_column]
                self.blocks[rank_of_column][index, low : low + stop - start].copy_(flat[start:stop])
                start = stop
            offset += flat.numel()
        if offset != self.layout.num_params:
            raise ValueError(f"pieces: {offset} numbers for a row of {self.layout.num_params}")

    @classmethod
    def packed(cls, own_rows: Tensor, layout: ShardLayout, rank: int) -> OutgoingRows:
        """The blocks of a row-major (T_r, P) tensor (one copy)."""
        outgoing = cls(layout, rank, own_rows.device, own_rows.dtype)
        for block, (low, high) in zip(outgoing.blocks, pairwise(layout.column_bounds), strict=True):
            block.copy_(own_rows[:, low:high])
        return outgoing


def reshard_rows(
    member: CollectiveMember, own_rows: Tensor | OutgoingRows, layout: ShardLayout
) -> Tensor:
    """All-to-all: this rank's rows (T_r, P) → its column shard of every row, (T, P_r).

    own_rows: J's rows of this rank's tasks, on ``member.device``: a row-major (T_r, P) tensor
    (packed into blocks first, one copy), or an :class:`OutgoingRows` written in place. Returns
    J[:, shard r] with the rows in task order (rank 0's tasks first), of ``own_rows``' dtype: a
    fresh tensor, except with one rank, where the rows already are the shard (returned as they
    are: a view, no collective, nothing copied).
    """
    _check_member(member, layout)
    rank, columns = member.rank, layout.column_counts()
    if isinstance(own_rows, Tensor):
        if tuple(own_rows.shape) != (layout.task_counts[rank], layout.num_params):
            raise ValueError(
                f"own_rows: expected ({layout.task_counts[rank]}, {layout.num_params}), "
                f"got {tuple(own_rows.shape)}"
            )
        if member.world_size == 1:
            return own_rows
        own_rows = OutgoingRows.packed(own_rows, layout, rank)
    elif own_rows.layout != layout or own_rows.rank != rank:
        raise ValueError("own_rows: written for another layout or rank")
    if member.world_size == 1:
        return own_rows.blocks[0]
    send_splits = [own_rows.num_rows * count for count in columns]
    receive_splits = [tasks * columns[rank] for tasks in layout.task_counts]
    shard = own_rows.buffer.new_empty(layout.num_tasks * columns[rank])
    member.backend.alltoall_base(
        shard, own_rows.buffer, receive_splits, send_splits, dist.AllToAllOptions()
    ).wait()
    sent = sum(send_splits) - send_splits[rank]  # its own block stays
    member.traffic.add("reshard", sent * own_rows.buffer.element_size())
    return shard.view(layout.num_tasks, columns[rank])


def all_reduce_gram(member: CollectiveMember, partial_gram: Tensor) -> Tensor:
    """Sum of every rank's (T, T) partial Gram, in place (each rank then holds J Jᵀ)."""
    if partial_gram.dim() != 2 or partial_gram.shape[0] != partial_gram.shape[1]:
        raise ValueError(f"partial_gram: expected (T, T), got {tuple(partial_gram.shape)}")
    partial_gram = partial_gram.contiguous()
    options = dist.AllreduceOptions()  # its reduceOp defaults to SUM
    member.backend.allreduce([partial_gram], options).wait()
    if member.world_size > 1:
        member.traffic.add("gram", partial_gram.numel() * partial_gram.element_size())
    return partial_gram


def broadcast_weights(member: CollectiveMember, weights: Tensor) -> Tensor:
    """Rank 0's (T,) weights to every rank, in place: rank 0 passes its weights, the others a
    buffer of the same shape and dtype (its contents are overwritten)."""
    weights = weights.contiguous()
    options = dist.BroadcastOptions()
    options.rootRank, options.rootTensor = 0, 0
    member.backend.broadcast([weights], options).wait()
    if member.rank == 0:
        others = member.world_size - 1
        member.traffic.add("weights", others * weights.numel() * weights.element_size())
    return weights


def gather_direction(
    member: CollectiveMember, direction_slice: Tensor, layout: ShardLayout
) -> Tensor | None:
    """Every rank's (P_r,) slice of Σₜ wₜ gₜ to rank 0, assembled there as (P,); None elsewhere."""
    _check_member(member, layout)
    columns = layout.column_counts()
    if tuple(direction_slice.shape) != (columns[member.rank],):
        raise ValueError(
            f"direction_slice: expected ({columns[member.rank]},), "
            f"got {tuple(direction_slice.shape)}"
        )
    root = member.rank == 0
    if member.world_size == 1:  # the slice is the direction: no collective, no copy
        return direction_slice
    send_splits = [columns[member.rank] if rank == 0 else 0 for rank in range(member.world_size)]
    receive_splits = columns if root else [0] * member.world_size
    direction = direction_slice.new_empty(sum(receive_splits))
    member.backend.alltoall_base(
        direction, direction_slice.contiguous(), receive_splits, send_splits, dist.AllToAllOptions()
    ).wait()
    if not root:
        member.traffic.add("direction", direction_slice.numel() * direction_slice.element_size())
    return direction if root else None


def run_exchange(
    member: CollectiveMember,
    own_rows: Tensor | OutgoingRows,
    layout: ShardLayout,
    solve: Callable[[Tensor], Tensor | None] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One whole exchange, the same call on every rank: reshard, Gram, weights, direction.

    own_rows: this rank's Jacobian rows, (T_r, P) or :class:`OutgoingRows`. solve: rank 0's
    solver, Gram (T, T) → weights (T,), or None when the step wants no Σₜ wₜ gₜ (ignored on the
    other ranks). Returns (gram (T, T), weights (T,), direction (P,) on rank 0 else None), and
    closes the step of ``member.traffic``. A step without a direction still broadcasts: weights
    of NaN, which tell every rank to skip the gather (their only host read, one number).
    """
    shard = reshard_rows(member, own_rows, layout)
    gram = all_reduce_gram(member, shard @ shard.T)
    weights = shard.new_full((layout.num_tasks,), float("nan"))
    if member.rank == 0:
        if solve is None:
            raise ValueError("solve: rank 0 needs a solver (Gram → weights)")
        solved = solve(gram)
        if solved is not None:
            weights = solved.to(shard.dtype)
    weights = broadcast_weights(member, weights)
    wanted = layout.num_tasks == 0 or not bool(torch.isnan(weights[0]))
    direction = gather_direction(member, weights @ shard, layout) if wanted else None
    member.traffic.next_step()
    return gram, weights, direction


def expected_collective_bytes(
    num_tasks: int,
    num_params: int,
    task_counts: list[int] | tuple[int, ...],
    column_bounds: list[int] | tuple[int, ...],
    dtype_bytes: int,
) -> list[dict[str, int]]:
    """Bytes each rank sends per exchange, by kind, from the algorithm (see the module notes).

    num_tasks T, num_params P (checked against the layout), task_counts (W,), column_bounds
    (W + 1,), dtype_bytes: bytes per number (4 for float32). Returns W dictionaries
    ``{"reshard", "gram", "weights", "direction"} → bytes``: for rank r with T_r tasks and P_r
    columns, reshard T_r·(P − P_r), gram T² when W > 1, weights (W − 1)·T on rank 0,
    direction P_r off rank 0; all times dtype_bytes.
    """
    layout = ShardLayout(tuple(task_counts), tuple(column_bounds))
    if layout.num_tasks != num_tasks or layout.num_params != num_params:
        raise ValueError(
            f"task_counts/column_bounds: describe T = {layout.num_tasks}, P = {layout.num_params}, "
            f"not T = {num_tasks}, P = {num_params}"
        )
    world = layout.world_size
    per_rank = []
    for rank, (tasks, columns) in enumerate(
        zip(layout.task_counts, layout.column_counts(), strict=True)
    ):
        numbers = {
            "reshard": tasks * (num_params - columns),
            "gram": num_tasks * num_tasks if world > 1 else 0,
            "weights": (world - 1) * num_tasks if rank == 0 else 0,
            "direction": columns if rank > 0 else 0,
        }
        per_rank.append({kind: count * dtype_bytes for kind, count in numbers.items()})
    return per_rank
