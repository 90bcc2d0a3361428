"""``side_and_radius``: an example dataset of two tasks on points of the plane, made in memory.

Inputs x: (2,) standard normal. Task ``side``: which side of the vertical axis x lies on
(classification, 2 classes, objective 1 − accuracy). Task ``radius``: its distance to the origin
‖x‖ (regression, objective the mean absolute error, in the units of x).
"""

from __future__ import annotations

import torch
from mtlbench.harness.dataset import DatasetParams, MultiTaskDataset, Splits
from mtlbench.harness.model import MultiTaskModel, SeparateHeads
from mtlbench.harness.registry import register_dataset
from mtlbench.harness.tasks import TaskSet, TaskSpec
from pydantic import Field
from torch import nn
from torch.utils.data import TensorDataset


class SideAndRadiusParams(DatasetParams):
    """samples: per split; width: hidden units of the encoder; seed: of the data (not the run)."""

    samples: int = Field(256, gt=0)
    width: int = Field(16, ge=1)
    seed: int = 0


@register_dataset("side_and_radius")
class SideAndRadius(MultiTaskDataset):
    Params = SideAndRadiusParams
    model_description = "MLP 2→width (ReLU) + Linear(width, 2) and Linear(width, 1)"

    @classmethod
    def taskset(cls, params: DatasetParams) -> TaskSet:
        # hv_reference: the worst objective the hypervolume counts (1.0 = error of every sample;
        # 2.0 for the radius MAE, about twice its mean)
        return TaskSet(
            [
                TaskSpec("side", "classification", num_outputs=2),
                TaskSpec("radius", "regression", num_outputs=1, hv_reference=2.0),
            ]
        )

    @classmethod
    def input_shape(cls, params: DatasetParams) -> tuple[int, ...]:
        return (2,)

    def load(self) -> Splits:
        params: SideAndRadiusParams = self.params  # type: ignore[assignment]
        generator = torch.Generator().manual_seed(params.seed)
        splits = []
        for _ in ("train", "val", "test"):
            points = torch.randn(params.samples, 2, generator=generator)
            side = (points[:, 0] > 0).float()  # class index, stored as float like every target
            radius = points.norm(dim=1)
            splits.append(TensorDataset(points, torch.stack([side, radius], dim=1)))
        return Splits(*splits)

    def build_model(self) -> MultiTaskModel:
        params: SideAndRadiusParams = self.params  # type: ignore[assignment]
        encoder = nn.Sequential(nn.Linear(2, params.width), nn.ReLU())
        heads = SeparateHeads([nn.Linear(params.width, 2), nn.Linear(params.width, 1)])
        return MultiTaskModel(encoder, heads, num_tasks=2)
