"""``pcgrad``: projecting conflicting gradients ("gradient surgery").

Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning", NeurIPS
2020, Algorithm 1. For each task i, the other tasks j are visited in a random order; whenever the
current g̃_i conflicts with the *original* g_j (g̃_i · g_j < 0), g̃_i loses its component along
g_j: g̃_i ← g̃_i − (g̃_i · g_j / ‖g_j‖²) g_j. The update combines the projected g̃_i.

From the Gram alone: each g̃_i is tracked as coefficients over the original gradients,
g̃_i = Σ_j C_ij g_j (C (T, T), starting at the identity), so g̃_i · g_j = (C G)_ij and a
projection only changes C_ij. The update Σ_i g̃_i = Σ_j (Σ_i C_ij) g_j.

Scale: the paper (and its reference code, LibMTL, TorchJD) *sums* the g̃_i; the weights here are
(Σ_i C_ij) / T, the mean of the g̃_i, so equal weighting is 1/T as for every method (multiply by
T for the paper's update). Weights can exceed 1/T or be negative (a projection subtracts g_j).

Randomness: the order is drawn from the method's own generator (``seeded_generator``), one
``randperm(T)`` per task i with i itself skipped (a uniform order of the j ≠ i; the same draws
as TorchJD's ``PCGrad``, which uses the global generator), saved in ``weighting_state`` so a
resumed run draws the same orders. No hyperparameters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mtlbench.harness.method import MethodParams, TrainingConfig
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.registry import register_method
from mtlbench.harness.tasks import TaskSet
from mtlbench.harness.weighting import GramWeighting, as_state, seeded_generator
from torch import Tensor


class PCGradParams(MethodParams):
    """PCGrad has no parameters (Algorithm 1 has none)."""


def projected_coefficients(gram: np.ndarray, orders: list[list[int]]) -> np.ndarray:
    """Coefficients C (T, T) of the projected gradients, g̃_i = Σ_j C_ij g_j.

    gram: (T, T) float64 Gram of the original gradients. orders[i]: the tasks j ≠ i in the
    order task i is projected on them (i itself may appear and is skipped). A zero g_j never
    conflicts (its inner products are 0), so ‖g_j‖ > 0 wherever it is divided by.
    """
    num_tasks = gram.shape[0]
    coefficients = np.eye(num_tasks)
    for i in range(num_tasks):
        row = coefficients[i]
        for j in orders[i]:
            if j == i:
                continue
            inner = row @ gram[:, j]  # g̃_i · g_j
            if inner < 0.0 and gram[j, j] > 0.0:
                row[j] -= inner / gram[j, j]
    return coefficients


@register_method("pcgrad")
class PCGrad(GramWeighting[PCGradParams]):
    """PCGrad on the shared parameters, weights (T,) on the mean scale (paper's sum / T)."""

    Params = PCGradParams
    weights_on_simplex = False
    paper = "Yu et al., NeurIPS 2020 (Gradient Surgery for Multi-Task Learning), Alg. 1"
    cost = "T encoder backward passes (the shared Jacobian)"

    def __init__(
        self,
        params: PCGradParams,
        model: MultiTaskModel,
        taskset: TaskSet,
        training: TrainingConfig,
    ) -> None:
        super().__init__(params, model, taskset, training)
        self._generator = seeded_generator()

    def weights(self, gram: Tensor, task_losses: Tensor) -> Tensor:
        num_tasks = gram.shape[0]
        gram64 = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
        gram64 = (gram64 + gram64.T) / 2
        orders = [
            torch.randperm(num_tasks, generator=self._generator).tolist() for _ in range(num_tasks)
        ]
        weights = projected_coefficients(gram64, orders).sum(axis=0) / num_tasks
        return torch.as_tensor(weights, dtype=gram.dtype, device=gram.device)

    def weighting_state(self) -> dict[str, Any]:
        return {"generator": as_state(self._generator)}

    def load_weighting_state(self, state: dict[str, Any]) -> None:
        if state.get("generator") is not None:
            self._generator.set_state(state["generator"])
