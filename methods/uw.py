"""``uw``: uncertainty weighting with learned task log-variances.

Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
Geometry and Semantics", CVPR 2018. With s_t = log sigma_t^2 learned per task, the loss is
sum_t 1/2 e^(-s_t) L_t + 1/2 s_t, so the weights on the task losses are w_t = 1/2 e^(-s_t).

Scale: intrinsic (fixed by the equation, as the weighting module's convention allows): not
divided by T. For fixed losses the stationary point is s_t = log L_t, i.e. w_t = 1 / (2 L_t).
Initial value: s_0 = -0.5 (MTAN's code and LibMTL); Nash-MTL's code and TorchJD start at 0, and
SamsungLabs' MTL drops the 1/2 on L. As L_t -> 0, s_t -> -infinity and w_t grows without bound
(a known property of the loss, not a bug).

Training s: with the run's optimizer settings (``make_optimizer``), but in an optimizer of its
own, since an engine that owns the update (DeepSpeed) holds only the model's parameters. Adam and
SGD act per parameter, so this equals one optimizer with two parameter groups. Its gradient is
closed form, d/ds_t = 1/2 - 1/2 e^(-s_t) L_t, set in ``after_backward``, which then steps s; no
autograd graph goes through s. Logs ``log_variances`` (T,) after the step besides the weights.
"""

from __future__ import annotations

from typing import Any

import torch
from mtlbench.harness.gradients import Batch, GradientEngine
from mtlbench.harness.method import MethodParams, StepLog, TrainingConfig, make_optimizer
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.registry import register_method
from mtlbench.harness.tasks import TaskSet
from mtlbench.harness.weighting import LossWeighting
from torch import Tensor, nn


class UWParams(MethodParams):
    """initial_log_variance: s_0 = log sigma_0^2, the same for every task (MTAN, LibMTL: -0.5;
    Nash-MTL, TorchJD: 0)."""

    initial_log_variance: float = -0.5


@register_method("uw")
class UncertaintyWeighting(LossWeighting[UWParams]):
    """Weights 1/2 e^(-s) with s = log sigma^2 learned beside the model."""

    Params = UWParams
    paper = "Kendall, Gal & Cipolla, CVPR 2018"
    cost = "1 forward + 1 backward"

    def __init__(
        self,
        params: UWParams,
        model: MultiTaskModel,
        taskset: TaskSet,
        training: TrainingConfig,
    ) -> None:
        super().__init__(params, model, taskset, training)
        device = next(model.parameters()).device  # the trainer builds the model on its device
        self._log_variances = nn.Parameter(
            torch.full((len(taskset),), float(params.initial_log_variance), device=device)
        )
        self._log_variance_optimizer = make_optimizer([self._log_variances], training)

    def weights(self, task_losses: Tensor) -> Tensor:
        return 0.5 * torch.exp(-self._log_variances.detach())

    def after_backward(self, task_losses: Tensor, weights: Tensor) -> None:
        s = self._log_variances
        s.grad = 0.5 - 0.5 * torch.exp(-s.detach()) * task_losses.to(s)
        self._log_variance_optimizer.step()

    def step(self, batch: Batch, engine: GradientEngine) -> StepLog:
        log = super().step(batch, engine)
        log["log_variances"] = self._log_variances.detach().clone()
        return log

    def weighting_state(self) -> dict[str, Any]:
        return {
            "log_variances": self._log_variances.detach().clone(),
            "optimizer": self._log_variance_optimizer.state_dict(),
        }

    def load_weighting_state(self, state: dict[str, Any]) -> None:
        if "log_variances" in state:
            with torch.no_grad():
                self._log_variances.copy_(state["log_variances"])
            self._log_variance_optimizer.load_state_dict(state["optimizer"])
