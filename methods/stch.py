"""``stch``: smooth Tchebycheff scalarization of the task losses.

Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective Optimization", ICML 2024; the
multi-task variant of the authors' STCH repository
(``STCH_MTL/LibMTL/weighting/STCH.py``). After a warm-up, with z the mean task losses of the
warm-up's last epoch and l_t = log(L_t / z_t), the loss is mu log sum_t exp(l_t / mu) (formed
stably: the max is subtracted), whose gradient gives the weights
w_t = softmax(l / mu)_t / L_t. During the warm-up the loss is the mean of log L_t: w_t = 1/(T L_t).

Scale: mean scale, the reference divided by T: its loss is T mu logsumexp(...) and its warm-up
sum_t log L_t, both T times ours; the two phases agree (1/(T L_t)) when the l_t are equal.
Warm-up: the reference averages z over the epoch numbered ``warmup_epoch`` (4, counted from 0)
after ``warmup_epoch`` epochs of pure warm-up, so its warm-up lasts 5 epochs: here
``warmup_epochs`` counts them all (default 5 = the reference's 4), z from the last. mu = 1.0
(the authors' repository and LibMTL). Losses are floored at 1e-12 before the log (the reference
adds 1e-20). State (z, the running sum, the step counter) is saved with checkpoints: a resume
without it would divide 0 by 0 (the reference keeps it outside any state dict).
"""

from __future__ import annotations

from typing import Any

import torch
from mtlbench.harness.method import MethodParams, TrainingConfig
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.registry import register_method
from mtlbench.harness.tasks import TaskSet
from mtlbench.harness.weighting import LossWeighting
from pydantic import Field, model_validator
from torch import Tensor

LOSS_FLOOR = 1e-12


class STCHParams(MethodParams):
    """mu: smoothing of the Tchebycheff max (mu -> 0: the max; large mu: the mean).
    warmup_epochs: epochs of mean-log-loss warm-up; z is the mean loss over the last of them.
    warmup_steps: the warm-up's length in steps, overriding warmup_epochs x the trainer's
        ``steps_per_epoch``; it is still split into ``warmup_epochs`` equal epochs, so z is the
        mean over its last warmup_steps // warmup_epochs steps.
    """

    mu: float = Field(1.0, gt=0)
    warmup_epochs: int = Field(5, ge=1)
    warmup_steps: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _whole_epochs(self) -> STCHParams:
        if self.warmup_steps is not None and self.warmup_steps < self.warmup_epochs:
            raise ValueError("warmup_steps must be at least warmup_epochs (one step per epoch)")
        return self


@register_method("stch")
class SmoothTchebycheff(LossWeighting[STCHParams]):
    """Weights softmax(log(L / z) / mu) / L after a warm-up of mean log-losses."""

    Params = STCHParams
    paper = "Lin et al., ICML 2024 (Smooth Tchebycheff Scalarization)"
    cost = "1 forward + 1 backward"

    def __init__(
        self,
        params: STCHParams,
        model: MultiTaskModel,
        taskset: TaskSet,
        training: TrainingConfig,
    ) -> None:
        super().__init__(params, model, taskset, training)
        self._steps = 0  # steps seen so far
        self._z_sum: Tensor | None = None  # sum of the losses over the warm-up's last epoch
        self._z: Tensor | None = None  # reference point, once the warm-up is over

    def _schedule(self) -> tuple[int, int]:
        """(warm-up length, length of the window averaged into z), in steps."""
        epochs = self.params.warmup_epochs
        if self.params.warmup_steps is not None:
            return self.params.warmup_steps, self.params.warmup_steps // epochs
        if self.steps_per_epoch is None:
            raise ValueError(
                "stch needs an epoch length: the trainer's steps_per_epoch is unknown here, so "
                "set the parameter warmup_steps (the warm-up's length in steps)"
            )
        return epochs * self.steps_per_epoch, self.steps_per_epoch

    def weights(self, task_losses: Tensor) -> Tensor:
        warmup, window = self._schedule()
        losses = task_losses.detach().clamp_min(LOSS_FLOOR)
        step, self._steps = self._steps, self._steps + 1
        if step < warmup:
            if step >= warmup - window:
                previous = self._z_sum
                self._z_sum = losses.clone() if previous is None else previous.to(losses) + losses
            return 1.0 / (losses.shape[0] * losses)
        if self._z is None:
            assert self._z_sum is not None  # the warm-up's last epoch summed at least one step
            self._z = self._z_sum / window
        reference = self._z.to(losses)
        scaled = torch.log(losses / reference) / self.params.mu
        return torch.softmax(scaled, dim=0) / losses  # softmax subtracts the max

    def weighting_state(self) -> dict[str, Any]:
        return {
            "steps": self._steps,
            "z_sum": None if self._z_sum is None else self._z_sum.clone(),
            "z": None if self._z is None else self._z.clone(),
        }

    def load_weighting_state(self, state: dict[str, Any]) -> None:
        if "steps" in state:
            self._steps, self._z_sum, self._z = state["steps"], state["z_sum"], state["z"]
