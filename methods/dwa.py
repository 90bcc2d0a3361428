"""``dwa``: dynamic weight average.

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019 (its dynamic
weight average). With Lbar_t(e) the mean of task t's loss over epoch e, the weights in epoch
e >= 2 are lambda = T softmax(r / tau), r_t = Lbar_t(e-1) / Lbar_t(e-2): a task whose loss fell
least gets more weight. In the first two epochs lambda = 1.

Scale: divided by T (mean scale), so the weights are softmax(r / tau), on the simplex, and 1/T
in the first two epochs. Defaults: tau = 2 (MTAN's code, LibMTL, TorchJD).
Epochs: ``steps_per_epoch`` from the trainer; ``window_steps`` overrides it with windows of
that many steps (Nash-MTL's code uses 25-iteration windows). The losses averaged are the raw
task losses of each step. State (running sum, the last two means, step counter) is saved with
checkpoints (the reference implementations keep it outside their state dicts).
"""

from __future__ import annotations

from typing import Any

import torch
from mtlbench.harness.method import MethodParams, TrainingConfig
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.registry import register_method
from mtlbench.harness.tasks import TaskSet
from mtlbench.harness.weighting import LossWeighting
from pydantic import Field
from torch import Tensor


class DWAParams(MethodParams):
    """temperature: tau in softmax(r / tau); larger is closer to equal weights.
    window_steps: steps per averaging window; None: the trainer's epoch (``steps_per_epoch``).
    """

    temperature: float = Field(2.0, gt=0)
    window_steps: int | None = Field(None, gt=0)


@register_method("dwa")
class DynamicWeightAverage(LossWeighting[DWAParams]):
    """Weights softmax(r / tau) from the ratios r of the last two window-mean losses."""

    Params = DWAParams
    weights_on_simplex = True
    paper = "Liu, Johns & Davison, CVPR 2019 (MTAN; DWA)"
    cost = "1 forward + 1 backward"

    def __init__(
        self,
        params: DWAParams,
        model: MultiTaskModel,
        taskset: TaskSet,
        training: TrainingConfig,
    ) -> None:
        super().__init__(params, model, taskset, training)
        self._steps = 0  # steps seen so far
        self._window_sum: Tensor | None = None  # sum of the current window's losses (T,)
        self._means: list[Tensor] = []  # the last two completed window means, oldest first

    def _window(self) -> int:
        window = self.params.window_steps or self.steps_per_epoch
        if window is None:
            raise ValueError(
                "dwa needs an epoch length: the trainer's steps_per_epoch is unknown here, so "
                "set the parameter window_steps (steps per averaging window)"
            )
        return window

    def weights(self, task_losses: Tensor) -> Tensor:
        window = self._window()
        if self._steps > 0 and self._steps % window == 0:  # a window just ended
            assert self._window_sum is not None  # a window holds at least one step
            self._means = [*self._means, self._window_sum / window][-2:]
            self._window_sum = None
        losses = task_losses.detach()
        previous = self._window_sum
        self._window_sum = losses.clone() if previous is None else previous.to(losses) + losses
        self._steps += 1
        if len(self._means) < 2:
            return torch.full_like(losses, 1.0 / losses.shape[0])
        older, newer = (mean.to(losses) for mean in self._means)
        ratios = newer / older.clamp_min(torch.finfo(older.dtype).tiny)
        return torch.softmax(ratios / self.params.temperature, dim=0)

    def weighting_state(self) -> dict[str, Any]:
        window_sum = None if self._window_sum is None else self._window_sum.clone()
        return {
            "steps": self._steps,
            "window_sum": window_sum,
            "means": [mean.clone() for mean in self._means],
        }

    def load_weighting_state(self, state: dict[str, Any]) -> None:
        if "steps" in state:
            self._steps = state["steps"]
            self._window_sum = state["window_sum"]
            self._means = list(state["means"])
