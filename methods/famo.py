"""``famo``: fast adaptive multitask optimization.

Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023, Alg. 1.
Task logits w (T,) give z = softmax(w). With D_t = L_t - b_t + eps (b: the tasks' minimum
losses), the model descends sum_t z_t log D_t / c, c = sum_t z_t / D_t (detached): weights
w_t = z_t / (c D_t) on the losses, which are non-negative and sum to 1 (mean scale by
construction). After the model's optimizer step, one more forward on the same batch (no graph)
gives the new losses, delta_t = log D_t(old) - log D_t(new), and w takes one Adam step along
J_softmax(w)^T delta = z * (delta - z . delta) (closed form; J_softmax is symmetric).

Defaults: w_lr = 0.025, gamma (Adam weight decay on w) = 1e-3, as LibMTL and TorchJD. The
authors' code (Cranial-XIX/FAMO) also uses w_lr 0.025 but gamma 1e-5 as its class default, 0.01
as its command-line default, 0.001 in its run scripts (0.01 for Cityscapes), and clips the
model's gradient at norm 1.0 (not done here: that is the training protocol's business).
D_t is floored at eps, so L_t <= b_t gives a large finite weight rather than a NaN.

Cost: 2 forwards + 1 backward per step; the engine charges the extra forward to the budget.
If that forward finds the budget exhausted, ``BudgetExhausted`` propagates and the trainer ends
the run: the model step has been taken, only w's last update is lost.
State: w and its Adam state, saved with checkpoints (b is a parameter). The extra forward runs
in training mode, as the reference's does (new dropout masks, BatchNorm statistics updated).
"""

from __future__ import annotations

from typing import Any

import torch
from mtlbench.harness.gradients import Batch, GradientEngine
from mtlbench.harness.method import Method, MethodParams, StepLog, TrainingConfig
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.registry import register_method
from mtlbench.harness.tasks import TaskSet
from pydantic import Field
from torch import Tensor, nn


class FAMOParams(MethodParams):
    """w_lr: Adam learning rate of the task logits w. gamma: Adam weight decay on w.
    min_losses: b, each task's lowest attainable loss (one value for all, or one per task).
    epsilon: added to L - b (and its floor) before the log.
    """

    w_lr: float = Field(0.025, gt=0)
    gamma: float = Field(1e-3, ge=0)
    min_losses: float | tuple[float, ...] = 0.0
    epsilon: float = Field(1e-8, gt=0)


@register_method("famo")
class FAMO(Method[FAMOParams]):
    """Weights z / (c D) on the losses; w learns from each step's log-loss decrease."""

    Params = FAMOParams
    produces_weights = True
    weights_on_simplex = True
    consumes = "task losses"
    cost = "2 forwards + 1 backward"
    paper = "Liu et al., NeurIPS 2023 (FAMO, Alg. 1)"

    def __init__(
        self,
        params: FAMOParams,
        model: MultiTaskModel,
        taskset: TaskSet,
        training: TrainingConfig,
    ) -> None:
        super().__init__(params, model, taskset, training)
        device = next(model.parameters()).device  # the trainer builds the model on its device
        self._logits = nn.Parameter(torch.zeros(len(taskset), device=device))
        self._logit_optimizer = self._make_logit_optimizer()
        self._min_losses = torch.as_tensor(params.min_losses, dtype=torch.float32)

    @classmethod
    def check(cls, params: FAMOParams, taskset: TaskSet) -> None:
        if isinstance(params.min_losses, tuple) and len(params.min_losses) != len(taskset):
            raise ValueError(
                f"min_losses has {len(params.min_losses)} entries, the dataset has "
                f"{len(taskset)} tasks"
            )

    def _make_logit_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([self._logits], lr=self.params.w_lr, weight_decay=self.params.gamma)

    def _log_gaps(self, task_losses: Tensor) -> Tensor:
        """log D_t, D_t = L_t - b_t + eps floored at eps."""
        eps = self.params.epsilon
        gaps = task_losses - self._min_losses.to(task_losses) + eps
        return torch.log(gaps.clamp_min(eps))

    def step(self, batch: Batch, engine: GradientEngine) -> StepLog:
        self.optimizer.zero_grad(set_to_none=True)
        state = engine.forward(batch)
        task_losses = state.task_losses.detach()
        z = torch.softmax(self._logits.detach(), dim=0).to(task_losses)
        log_gaps = self._log_gaps(task_losses)
        inverse = z * torch.exp(-log_gaps)  # z_t / D_t
        weights = inverse / inverse.sum()  # z_t / (c D_t), c = sum_t z_t / D_t
        engine.backward(state, weights)
        self.optimizer.step()
        new_losses = engine.evaluate_losses(batch)
        decrease = (log_gaps - self._log_gaps(new_losses)).to(self._logits)
        z = z.to(self._logits)
        self._logits.grad = z * (decrease - (z * decrease).sum())
        self._logit_optimizer.step()
        return {"task_losses": task_losses, "weights": weights}

    def weighting_state(self) -> dict[str, Any]:
        return {
            "logits": self._logits.detach().clone(),
            "optimizer": self._logit_optimizer.state_dict(),
        }

    def load_weighting_state(self, state: dict[str, Any]) -> None:
        if "logits" in state:
            with torch.no_grad():
                self._logits.copy_(state["logits"])
            self._logit_optimizer.load_state_dict(state["optimizer"])
