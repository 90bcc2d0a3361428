"""``ray_sharding.py``'s MLP problem and its single-process baselines: the tuned ``batched``
engine (Jacobian buffer reused) and the host reference's half problem (see the script's notes)."""

from __future__ import annotations

import torch
from _ray_sharding_resnet import mgda_step
from mtlbench.datasets._models import MLPEncoder
from mtlbench.harness.budget import Budget
from mtlbench.harness.gradients import Batch, BatchedEngine, StepState, register_engine
from mtlbench.harness.model import MultiTaskModel, StackedMLPHeads
from mtlbench.harness.tasks import TaskSet, TaskSpec
from torch import Tensor


# ---- the problem -----------------------------------------------------------------------------
def build_model(inputs: int, hidden: int, width: int, tasks: int, seed: int = 0) -> MultiTaskModel:
    """MLP encoder inputs → hidden → hidden → width (ReLU), T binary heads Linear(width, 2)."""
    torch.manual_seed(seed)
    encoder = MLPEncoder(inputs, (hidden, hidden, width))
    return MultiTaskModel(encoder, StackedMLPHeads(tasks, width, 2, hidden=None), tasks)


def build_batch(batch_size: int, inputs: int, tasks: int, seed: int = 1) -> Batch:
    """One fixed batch: x (B, inputs) standard normal, binary targets (B, T) as floats."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, inputs, generator=generator)
    y = torch.randint(0, 2, (batch_size, tasks), generator=generator).float()
    return x, y


def make_taskset(tasks: int) -> TaskSet:
    """T binary classification tasks t0 … t{T-1}."""
    return TaskSet([TaskSpec(f"t{t}", "classification", 2) for t in range(tasks)])


# ---- the tuned single-process baseline -------------------------------------------------------
class ReusedJacobianBatched(BatchedEngine):
    """The ``batched`` engine writing the (T, P) Jacobian into one buffer kept across steps.

    Why: ``batched`` allocates a fresh J every step (64 MB at T = 16 here), and the kernel
    zeroes every fresh page; each worker of ``ray_sharded`` writes its rows into the arena
    instead, whose pages stay mapped. Measured interleaved on the CI machine (T = 16, one torch
    thread): 262 ms per step with a fresh J in chunks of 16 tasks, 235 with a reused J, 221 with
    a reused J in chunks of 8 (per-chunk gradients under glibc's 32 MB mmap threshold are
    recycled by malloc too). Timing the sharded engine against the plain engine would credit it
    with that page zeroing, not with its parallelism. Safe here only: ``mgda_step`` lets go of
    J within the step (a method that kept J across steps would see it overwritten).
    """

    name = "batched_reused_jacobian"
    _buffer: Tensor | None = None

    def _shared_jacobian(
        self, state: StepState, z_grads: Tensor, out: Tensor | None = None
    ) -> Tensor:
        if out is None:
            if self._buffer is None:
                self._buffer = z_grads.new_empty(self.num_tasks, self.num_shared)
            out = self._buffer
        return super()._shared_jacobian(state, z_grads, out)


register_engine(ReusedJacobianBatched.name, ReusedJacobianBatched)


def column_blocked_gram(flat: Tensor, block: int = 65536) -> Tensor:
    """J Jᵀ (T, T) of ``flat`` (T, N), summed over column blocks of ``block``. Why not one
    ``flat @ flat.T``: MKL (torch 2.13 CPU) takes a slow path for some skinny shapes, e.g. T = 8,
    N = 1M: 8.6 ms against 5.0 in blocks (T = 16: 9.9 against 10.1, no gain). Only the host
    reference's halves (T/2 tasks over all P columns) meet that shape here."""
    gram = flat.new_zeros(flat.shape[0], flat.shape[0])
    for start in range(0, flat.shape[1], block):
        columns = flat[:, start : start + block]
        gram.addmm_(columns, columns.T)
    return gram


class BlockedGramBatched(ReusedJacobianBatched):
    """``ReusedJacobianBatched`` with ``column_blocked_gram``: the host reference tuned as the
    baseline is (charged as the engines charge a Gram)."""

    name = "batched_reused_jacobian_blocked_gram"

    def gram(self, rows: Tensor) -> Tensor:
        flat = rows.reshape(rows.shape[0], -1)
        self.budget.charge("gram", 2.0 * flat.shape[0] ** 2 * flat.shape[1])
        return column_blocked_gram(flat)


# ---- the host's reference: two halves at once, nothing exchanged ------------------------------
class HalfProblem:
    """The tuned baseline's whole MGDA step on ceil(T/2) tasks (a model with that many heads).

    Two of these at once, one in the driver and one in an actor (at the actors' priority), are
    this host's reference for two workers: each process does what a worker of ``ray_sharded``
    does (a forward, its tasks' VJPs, a Gram and Σ aₜgₜ reading as many bytes of J) plus a solve
    and an SGD step of its own, and nothing crosses between them: no exchange, no partial Grams,
    no parameters sent. Their efficiency t(1 worker) / (2 · t(both at once)) is what this host's
    shared memory bandwidth, shared L3 cache and neighbours leave of two cores for this work; an
    engine near it loses little to its exchange (it can pass it: the reference duplicates the
    solve and the update that the engine runs once).
    """

    def __init__(
        self, inputs: int, hidden: int, width: int, tasks: int, batch_size: int, chunk: int
    ) -> None:
        torch.set_num_threads(1)
        half = -(-tasks // 2)
        self.batch = build_batch(batch_size, inputs, half)
        model = build_model(inputs, hidden, width, half)
        self.engine = BlockedGramBatched(
            model, make_taskset(half), Budget("flops", 1e30), self.batch, chunk_size=chunk
        )
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step(self) -> None:
        mgda_step(self.engine, self.optimizer, self.batch)
