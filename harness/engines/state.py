"""What the gradient engines share: the step's state, the batch type, gradient bookkeeping.

Shapes: T tasks, B samples, P shared (encoder) parameters; ``z`` keeps its own shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from mtlbench.harness.tasks import Outputs
from torch import Tensor, nn

# (inputs (B, ...), targets (B, ...)): one mini-batch
Batch = tuple[Tensor, Tensor]


@dataclass
class StepState:
    """What one forward pass leaves for the method's gradient requests.

    representation: z with its graph to the shared parameters.
    detached: a leaf copy of z that the heads consumed (requires grad).
    task_losses: (T,) mean loss per task, graph through the heads to ``detached``.
    representation_grads: (T, *z.shape) per-task dL_t/dz once computed (cached).
    shared_jacobian: (T, P) per-task dL_t/d(shared) once computed (cached).
    """

    inputs: Tensor
    targets: Tensor
    representation: Tensor
    detached: Tensor
    outputs: Outputs
    task_losses: Tensor
    representation_grads: Tensor | None = None
    shared_jacobian: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.inputs.shape[0])


def flatten_gradients(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    """Concatenate per-parameter gradients (None -> zeros) into one vector (P,)."""
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def accumulate_flat(params: Sequence[nn.Parameter], flat: Tensor) -> None:
    """Add a flat vector (P,) into ``p.grad`` of ``params`` (in order)."""
    offset = 0
    for p in params:
        piece = flat[offset : offset + p.numel()].view_as(p)
        p.grad = piece.clone() if p.grad is None else p.grad.add_(piece)
        offset += p.numel()


def accumulate_grads(params: Sequence[nn.Parameter], grads: Sequence[Tensor | None]) -> None:
    """Add per-parameter gradients (None: the parameter is not reached) into ``p.grad``."""
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        # autograd.grad returns fresh tensors owned by nobody else: adopt them without a copy
        p.grad = g.detach() if p.grad is None else p.grad.add_(g)


def stochastic_or_stateful(module: nn.Module) -> bool:
    """Whether rerunning ``module`` in training mode would draw new dropout masks or update
    BatchNorm statistics (then its per-task rerun would not reproduce the step's forward)."""
    kinds = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)
    return module.training and any(isinstance(m, kinds) for m in module.modules())
