"""A worker's share of engine ``ray_sharded``'s arithmetic, the same on an actor and on the
driver: the replayed RNG state, the per-task VJPs of its tasks (``ReplicaVJP``), and the Gram and
Σ aₜgₜ of a parameter shard formed block by block. Also the conversions of what crosses between
processes (NumPy arrays in Ray's object store). See ``docs/engines/ray-sharded.md``.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch
from mtlbench.harness.gradients import BatchedEngine, StepState, stochastic_or_stateful
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet
from torch import Tensor


# ---- what a replay needs and what crosses the wire -----------------------------------------
def rng_state(device: torch.device) -> dict[str, np.ndarray]:
    """The generators a forward on ``device`` draws from (CPU always; CUDA when used), as arrays."""
    state = {"cpu": torch.get_rng_state().numpy()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).numpy()
    return state


def set_rng_state(rng: dict[str, np.ndarray], device: torch.device) -> None:
    torch.set_rng_state(as_tensor(rng["cpu"], torch.device("cpu")))
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(as_tensor(rng["cuda"], torch.device("cpu")), device)


def nbytes_of(arrays: list[np.ndarray]) -> int:
    return sum(int(a.nbytes) for a in arrays)


def to_numpy(tensor: Tensor) -> np.ndarray:
    """A C-contiguous CPU array of ``tensor``, same dtype (no copy when it already is one)."""
    return tensor.detach().cpu().contiguous().numpy()


def as_tensor(array: np.ndarray, device: torch.device) -> Tensor:
    """A tensor over a (possibly read-only, object-store backed) array, moved to ``device``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only zero-copy arrays are only read
        return torch.as_tensor(array).to(device)


def per_task_heads(model: MultiTaskModel) -> bool:
    """Whether the ``batched`` engine gets all T z-gradients from one heads pass on ``model``."""
    per_task = getattr(model.heads, "forward_per_task", None)
    return per_task is not None and not stochastic_or_stateful(model.heads)


def block_gram(pieces: list[Tensor]) -> Tensor:
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


def combine_pieces(pieces: list[Tensor], weights: Tensor, out: Tensor) -> Tensor:
    """Σ_t weights_t x_t into ``out`` (N,), for x the row-wise concatenation of ``pieces``
    (n_i, N) (one parameter shard of every worker's rows), without forming x."""
    weights = weights.to(pieces[0].dtype)
    offset = 0
    for index, piece in enumerate(pieces):
        coefficients = weights[offset : offset + piece.shape[0]]
        offset += piece.shape[0]
        if index == 0:
            torch.mv(piece.T, coefficients, out=out)
        else:
            out.addmv_(piece.T, coefficients)
    return out


# ---- the actor -------------------------------------------------------------------------------
class ReplicaVJP(BatchedEngine):
    """The ``batched`` engine's per-task VJPs restricted to one worker's share of the tasks: an
    actor's, on its replica, or the driver's own share, on the driver's model and graph.

    Not an engine the harness sees: no calibration and no budget (the driver charges every pass
    the workers make, see ``RayShardedEngine._jacobian_charges``).
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
        if per_task_heads(self.model):
            self.num_tasks = len(self.taskset)
            return self._representation_grads(state)[self.own]
        self.num_tasks = self.count
        return self._representation_grads(
            dataclasses.replace(state, task_losses=state.task_losses[self.own])
        )

    def own_jacobian(self, state: StepState, z_grads: Tensor, out: Tensor | None = None) -> Tensor:
        """(n_k, P) rows of the shared Jacobian, from this actor's z-gradients (into ``out``)."""
        self.num_tasks = z_grads.shape[0]
        return self._shared_jacobian(state, z_grads, out)
