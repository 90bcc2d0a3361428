"""``rlw``: random loss weighting.

Lin, Ye, Zhang & Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning", TMLR 2022. Each step draws eps ~ N(0, I_T) and weights the task losses by
lambda = softmax(eps), then takes one step on sum_t lambda_t L_t (about one EW step).

Distribution: the standard normal, as every reference implementation uses today (LibMTL,
Nash-MTL's, SamsungLabs' MTL, TorchJD); the paper also studies others, not offered here.
Scale: lambda lies on the simplex, i.e. already on the mean scale (E[lambda_t] = 1/T).
Randomness: the draws come from the method's own generator (``seeded_generator``), saved with
checkpoints, so a resumed run continues the same sequence of weights.
"""

from __future__ import annotations

from typing import Any

import torch
from mtlbench.harness.method import MethodParams, TrainingConfig
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.registry import register_method
from mtlbench.harness.tasks import TaskSet
from mtlbench.harness.weighting import LossWeighting, as_state, seeded_generator
from torch import Tensor


class RLWParams(MethodParams):
    """RLW has no parameters: the weights are softmax(eps), eps ~ N(0, I)."""


@register_method("rlw")
class RLW(LossWeighting[RLWParams]):
    """Random weights softmax(N(0, I)) on the task losses, redrawn each step."""

    Params = RLWParams
    weights_on_simplex = True
    paper = "Lin et al., TMLR 2022 (Reasonable Effectiveness of Random Weighting)"
    cost = "1 forward + 1 backward"

    def __init__(
        self,
        params: RLWParams,
        model: MultiTaskModel,
        taskset: TaskSet,
        training: TrainingConfig,
    ) -> None:
        super().__init__(params, model, taskset, training)
        self._generator = seeded_generator()

    def weights(self, task_losses: Tensor) -> Tensor:
        draws = torch.randn(task_losses.shape[0], generator=self._generator, dtype=torch.float64)
        return torch.softmax(draws, dim=0)

    def weighting_state(self) -> dict[str, Any]:
        return {"generator": as_state(self._generator)}

    def load_weighting_state(self, state: dict[str, Any]) -> None:
        if state.get("generator") is not None:
            self._generator.set_state(state["generator"])
