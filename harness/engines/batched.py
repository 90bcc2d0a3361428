"""Engines ``batched`` and ``representation``: per-task gradients from batched VJPs (vmap).

Shapes: T tasks, B samples, P shared (encoder) parameters; ``z`` keeps its own shape.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from mtlbench.harness.budget import Budget
from mtlbench.harness.engines.base import GradientEngine
from mtlbench.harness.engines.state import Batch, StepState, stochastic_or_stateful
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor


class BatchedOptions(BaseModel):
    """The ``engine_options`` of the ``batched`` and ``representation`` engines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_size: int = Field(
        64,
        ge=1,
        description="tasks per batched vector-Jacobian product: bounds the transient memory "
        "(chunk_size × one backward pass's activation gradients)",
    )


class BatchedEngine(GradientEngine):
    """Per-task gradients as batched vector-Jacobian products (``is_grads_batched``, i.e. vmap).

    chunk_size: tasks per batched VJP. Each chunk holds chunk × the activation gradients of one
    backward pass, so it bounds memory (on a GPU, lower it when T × one backward's transient
    memory does not fit). Same FLOPs as the loop, far fewer kernel launches and Python round
    trips; the Jacobian (T, P) is written chunk by chunk into one preallocated buffer.
    """

    name: ClassVar[str] = "batched"
    options_model: ClassVar[type[BaseModel] | None] = BatchedOptions

    def __init__(
        self,
        model: MultiTaskModel,
        taskset: TaskSet,
        budget: Budget,
        calibration: Batch,
        chunk_size: int = 64,
    ):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        super().__init__(model, taskset, budget, calibration)

    def _representation_grads(self, state: StepState) -> Tensor:
        """All T z-gradients from one heads pass when the heads have ``forward_per_task`` (head t
        reads its own copy of z, so d(sum_t L_t)/d(copy t) = dL_t/dz: one heads forward and one
        heads backward, charged as such) and no dropout or BatchNorm would make the rerun differ
        from the step's forward; else T batched heads VJPs, charged T passes."""
        per_task = getattr(self.model.heads, "forward_per_task", None)
        if per_task is not None and not stochastic_or_stateful(self.model.heads):
            self.charge("heads_forward", state.batch_size)
            self.charge("heads_backward_input", state.batch_size)
            z = state.detached.detach()
            copies = z.unsqueeze(0).expand(self.num_tasks, *z.shape).requires_grad_(True)
            # a view, not the leaf, goes in (as in ``forward``: module hooks cannot watch a leaf)
            losses = self.taskset.losses(per_task(copies.view_as(copies)), state.targets)
            return torch.autograd.grad(losses.sum(), copies)[0]
        self.charge("heads_backward_input", state.batch_size, passes=self.num_tasks)
        losses = state.task_losses
        eye = torch.eye(self.num_tasks, dtype=losses.dtype, device=losses.device)
        chunks = [
            torch.autograd.grad(
                losses, state.detached, rows, retain_graph=True, is_grads_batched=True
            )[0]
            for rows in eye.split(self.chunk_size)
        ]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def _shared_jacobian(
        self, state: StepState, z_grads: Tensor, out: Tensor | None = None
    ) -> Tensor:
        """(T, P) rows of the shared Jacobian from the z-gradients, written into ``out`` when
        given (a (T, P) view, e.g. an actor's rows of a shared exchange: no extra copy)."""
        shared = self.shared_parameters
        jacobian = z_grads.new_empty(self.num_tasks, self.num_shared) if out is None else out
        for start in range(0, self.num_tasks, self.chunk_size):
            rows = z_grads[start : start + self.chunk_size]
            # a chunk of one task is a plain VJP: vmap's batching rules cost ≈ 3% per row there
            # (measured on the CPU, MLP of ``benchmarks/ray_sharding.py``, 8 tasks, 1 thread)
            single = rows.shape[0] == 1
            grads = torch.autograd.grad(
                state.representation,
                shared,
                rows[0] if single else rows,
                retain_graph=True,
                is_grads_batched=not single,
                allow_unused=True,
            )
            offset = 0
            for grad, param in zip(grads, shared, strict=True):
                block = jacobian[start : start + rows.shape[0], offset : offset + param.numel()]
                if grad is None:  # a parameter these tasks do not reach
                    block.zero_()
                else:
                    block.copy_(grad.reshape(rows.shape[0], -1))
                offset += param.numel()
        return jacobian


class RepresentationEngine(BatchedEngine):
    """Gradients with respect to the representation z only (MGDA-UB's engine).

    Every engine gives per-task z-gradients (``representation_gradients``: T heads-sized
    backward passes, batched here) and weighted backward passes; this one gives *only* those:
    ``shared_jacobian`` raises instead of silently paying T encoder backward passes, so a run on
    it is guaranteed to cost about one encoder backward per step whatever T is.
    """

    name: ClassVar[str] = "representation"

    def shared_jacobian(self, state: StepState) -> Tensor:
        raise RuntimeError(
            "engine 'representation' computes per-task gradients w.r.t. the representation z "
            "only; a method that needs the shared Jacobian must run on 'batched' or 'loop'"
        )
