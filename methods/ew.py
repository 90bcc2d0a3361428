"""``ew``: linear scalarization, minimise sum_t w_t L_t with a fixed preference vector w.

With no preference, w is uniform (equal weighting, "EW"); a preference is normalised to the
simplex. One forward and one backward per step: the baseline every ratio is measured against.
"""

from __future__ import annotations

import torch
from mtlbench.harness.method import MethodParams, TrainingConfig
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.registry import register_method
from mtlbench.harness.tasks import TaskSet
from mtlbench.harness.weighting import LossWeighting
from pydantic import field_validator


class EWParams(MethodParams):
    """preference: non-negative task weights (normalised to sum 1); None = uniform."""

    preference: tuple[float, ...] | None = None

    @field_validator("preference")
    @classmethod
    def _non_negative(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and (min(value) < 0 or sum(value) <= 0):
            raise ValueError("preference must be non-negative with a positive sum")
        return value


def preference_weights(preference: tuple[float, ...] | None, num_tasks: int) -> torch.Tensor:
    """The weight vector (T,) on the simplex for a preference (None -> uniform)."""
    if preference is None:
        return torch.full((num_tasks,), 1.0 / num_tasks)
    weights = torch.tensor(preference, dtype=torch.float32)
    return weights / weights.sum()


@register_method("ew")
class EqualWeighting(LossWeighting[EWParams]):
    """Fixed weights: uniform, or the normalised ``preference``."""

    Params = EWParams
    weights_on_simplex = True
    consumes = "task losses"
    cost = "1 forward + 1 backward"
    paper = "linear scalarization (equal weights by default)"

    def __init__(
        self,
        params: EWParams,
        model: MultiTaskModel,
        taskset: TaskSet,
        training: TrainingConfig,
    ) -> None:
        super().__init__(params, model, taskset, training)
        self.fixed_weights = preference_weights(params.preference, len(taskset))

    @classmethod
    def check(cls, params: EWParams, taskset: TaskSet) -> None:
        if params.preference is not None and len(params.preference) != len(taskset):
            raise ValueError(
                f"preference has {len(params.preference)} entries, the dataset has "
                f"{len(taskset)} tasks"
            )

    def weights(self, task_losses: torch.Tensor) -> torch.Tensor:
        return self.fixed_weights.to(task_losses)
