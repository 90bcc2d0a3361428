"""``gradvac``: Gradient Vaccine, PCGrad with adaptive per-pair similarity targets.

Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021 (its algorithm at the ``whole_model``
granularity; the algorithm's number is unverified). An EMA target φ̂_ij of the cosine
similarity is kept for every ordered pair (T, T), initialised to 0. For each task i, the other
tasks j are visited in a random order; with φ = cos(g̃_i, g_j) (g̃_i: the current, already
corrected gradient; g_j: the original), when φ < φ̂_ij a multiple of g_j is added to g̃_i so
that its cosine with g_j becomes exactly φ̂_ij:

    g̃_i ← g̃_i + ‖g̃_i‖ (φ̂_ij √(1 − φ²) − φ √(1 − φ̂_ij²)) / (‖g_j‖ √(1 − φ̂_ij²)) · g_j,

then φ̂_ij ← (1 − β) φ̂_ij + β φ for every visited pair, corrected or not (the fixed rule of
LibMTL since d2d84fa and of TorchJD). With φ̂ = 0 the correction is PCGrad's projection.

From the Gram alone, as ``pcgrad``: g̃_i = Σ_j C_ij g_j, g̃_i · g_j = (C G)_ij,
‖g̃_i‖² = (C G Cᵀ)_ii. Pairs where g̃_i or g_j is zero have no cosine: they are skipped (no
correction, target unchanged). A target of exactly 1 would need an infinite correction; the
target used in the correction is capped at 1 − ``MAX_TARGET_GAP`` (finite weights).

Scale: the paper sums the g̃_i; the weights here are (Σ_i C_ij) / T, their mean (× T for the
paper's update). Defaults: β = 0.5 (LibMTL's ``GradVac_beta`` and TorchJD); the paper's value
is unverified. Randomness: one ``randperm(T - 1)`` over the j ≠ i per task i (TorchJD's draws)
from the method's own generator. State: φ̂ and the generator, in ``weighting_state``.
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
from pydantic import Field
from torch import Tensor

MAX_TARGET_GAP = 1e-12
"""The targets used in a correction are at most 1 - MAX_TARGET_GAP (see the module docstring)."""


class GradVacParams(MethodParams):
    """beta: EMA rate of the similarity targets, φ̂ ← (1 − beta) φ̂ + beta φ (0: the targets
    stay 0 and GradVac is PCGrad; 1: the target is the last observed similarity). 0.5 as in
    LibMTL and TorchJD; the paper's value is unverified."""

    beta: float = Field(0.5, ge=0, le=1)


def vaccinated_coefficients(
    gram: np.ndarray, targets: np.ndarray, orders: list[list[int]], beta: float
) -> np.ndarray:
    """Coefficients C (T, T) of the corrected gradients, g̃_i = Σ_j C_ij g_j.

    gram: (T, T) float64 Gram of the original gradients. targets: (T, T) EMA targets φ̂,
    updated in place. orders[i]: the tasks j ≠ i in the order task i visits them.
    """
    num_tasks = gram.shape[0]
    norms = np.sqrt(np.clip(np.diagonal(gram), 0.0, None))
    coefficients = np.eye(num_tasks)
    for i in range(num_tasks):
        row = coefficients[i]
        products = row @ gram  # g̃_i · g_k for every k, (T,)
        for j in orders[i]:
            norm_i = np.sqrt(max(products @ row, 0.0))
            if norm_i == 0.0 or norms[j] == 0.0:
                continue
            cosine = float(np.clip(products[j] / (norm_i * norms[j]), -1.0, 1.0))
            target = targets[i, j]
            if cosine < target:
                capped = min(target, 1.0 - MAX_TARGET_GAP)
                sine_target = np.sqrt(1.0 - capped**2)
                step = (capped * np.sqrt(1.0 - cosine**2) - cosine * sine_target) * norm_i
                step /= norms[j] * sine_target
                row[j] += step
                products = products + step * gram[j]
            targets[i, j] = (1.0 - beta) * target + beta * cosine
    return coefficients


@register_method("gradvac")
class GradVac(GramWeighting[GradVacParams]):
    """GradVac on the shared parameters, weights (T,) on the mean scale (paper's sum / T)."""

    Params = GradVacParams
    weights_on_simplex = False
    paper = "Wang et al., ICLR 2021 (Gradient Vaccine)"
    cost = "T encoder backward passes (the shared Jacobian)"

    def __init__(
        self,
        params: GradVacParams,
        model: MultiTaskModel,
        taskset: TaskSet,
        training: TrainingConfig,
    ) -> None:
        super().__init__(params, model, taskset, training)
        self._generator = seeded_generator()
        num_tasks = len(taskset)
        self._targets = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)  # φ̂ (T, T)

    def weights(self, gram: Tensor, task_losses: Tensor) -> Tensor:
        num_tasks = gram.shape[0]
        if self._targets.shape != (num_tasks, num_tasks):
            self._targets = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)
        gram64 = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
        gram64 = (gram64 + gram64.T) / 2
        orders = []
        for i in range(num_tasks):
            others = [j for j in range(num_tasks) if j != i]
            draw = torch.randperm(num_tasks - 1, generator=self._generator).tolist()
            orders.append([others[index] for index in draw])
        targets = self._targets.numpy()  # shares memory: updated in place
        coefficients = vaccinated_coefficients(gram64, targets, orders, self.params.beta)
        weights = coefficients.sum(axis=0) / num_tasks
        return torch.as_tensor(weights, dtype=gram.dtype, device=gram.device)

    def weighting_state(self) -> dict[str, Any]:
        return {"targets": self._targets.clone(), "generator": as_state(self._generator)}

    def load_weighting_state(self, state: dict[str, Any]) -> None:
        if state.get("targets") is not None:
            self._targets = state["targets"].to(device="cpu", dtype=torch.float64).clone()
        if state.get("generator") is not None:
            self._generator.set_state(state["generator"])
