"""``synthetic``: a teacher-generated multi-task classification problem of any size.

Made for scaling studies (``harness/scaling/``), where the number of tasks and the size of the
shared encoder must be set freely; generated in memory from a seed, no files.

Data: inputs x ~ N(0, I_d) (d = ``input_features``). A shared random teacher layer
h = relu(x W / sqrt(d)) (W: d × 64) feeds one random linear map per task, A_t (64 × C); the label
of task t is argmax(h A_t), then replaced by a uniform random class with probability
``label_noise``. Tasks share features (so a shared encoder helps) but not their heads.

Model: MLP encoder ``d → width → … → width`` (``depth`` Linear+ReLU layers) and T stacked
linear heads ``width → C``. Shared parameters: d·w + (depth−1)·w² + depth·w;
:func:`width_for_shared_parameters` inverts it for a target size.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from mtlbench.datasets._models import MLPEncoder
from mtlbench.harness.dataset import DatasetParams, MultiTaskDataset, Splits
from mtlbench.harness.model import MultiTaskModel, StackedMLPHeads
from mtlbench.harness.registry import register_dataset
from mtlbench.harness.tasks import TaskSet, TaskSpec
from pydantic import Field
from torch.utils.data import TensorDataset

TEACHER_FEATURES = 64


class SyntheticParams(DatasetParams):
    """num_tasks T; input_features d; classes C per task; width / depth of the MLP encoder;
    samples per split; label_noise: probability a label is replaced by a random class;
    teacher_seed: seed of the teacher and of the samples."""

    num_tasks: int = Field(4, ge=1, le=1000)
    input_features: int = Field(64, ge=1)
    classes: int = Field(4, ge=2)
    width: int = Field(256, ge=1)
    depth: int = Field(3, ge=1)
    train_samples: int = Field(4096, gt=0)
    val_samples: int = Field(1024, gt=0)
    test_samples: int = Field(1024, gt=0)
    label_noise: float = Field(0.1, ge=0, le=1)
    teacher_seed: int = 0


def shared_parameter_count(input_features: int, width: int, depth: int) -> int:
    """Encoder parameters (weights and biases) of the MLP: d·w + (depth−1)·w² + depth·w."""
    return input_features * width + (depth - 1) * width * width + depth * width


def width_for_shared_parameters(target: float, input_features: int, depth: int) -> int:
    """The width whose encoder has the parameter count closest to ``target`` (at least 1)."""
    quadratic, linear = depth - 1, input_features + depth
    if quadratic == 0:
        estimate = target / linear
    else:
        estimate = (-linear + math.sqrt(linear * linear + 4 * quadratic * target)) / (2 * quadratic)
    candidates = {max(1, math.floor(estimate)), max(1, math.ceil(estimate))}
    return min(
        candidates, key=lambda w: abs(shared_parameter_count(input_features, w, depth) - target)
    )


@register_dataset("synthetic")
class Synthetic(MultiTaskDataset):
    Params = SyntheticParams
    training_defaults = {"batch_size": 128, "optimizer": "adam", "lr": 1e-3}
    model_description = "MLP encoder d→width×depth (ReLU) + T linear heads width→C"

    @classmethod
    def taskset(cls, params: DatasetParams) -> TaskSet:
        assert isinstance(params, SyntheticParams)
        return TaskSet(
            [
                TaskSpec(f"task{t}", "classification", params.classes)
                for t in range(params.num_tasks)
            ]
        )

    @classmethod
    def input_shape(cls, params: DatasetParams) -> tuple[int, ...]:
        """(input_features,); the inputs are standard normal, as the default stand-in."""
        assert isinstance(params, SyntheticParams)
        return (params.input_features,)

    def load(self) -> Splits:
        params: SyntheticParams = self.params  # type: ignore[assignment]
        rng = np.random.default_rng(params.teacher_seed)
        features = rng.standard_normal((params.input_features, TEACHER_FEATURES)) / math.sqrt(
            params.input_features
        )
        maps = rng.standard_normal((params.num_tasks, TEACHER_FEATURES, params.classes))
        splits = {}
        for name, count in (
            ("train", params.train_samples),
            ("val", params.val_samples),
            ("test", params.test_samples),
        ):
            inputs = rng.standard_normal((count, params.input_features)).astype(np.float32)
            hidden = np.maximum(inputs @ features, 0.0)
            labels = np.einsum("bh,thc->btc", hidden, maps).argmax(axis=-1)
            noisy = rng.random(labels.shape) < params.label_noise
            labels = np.where(noisy, rng.integers(0, params.classes, labels.shape), labels)
            splits[name] = TensorDataset(
                torch.from_numpy(inputs), torch.from_numpy(labels.astype(np.float32))
            )
        return Splits(**splits)

    def build_model(self) -> MultiTaskModel:
        params: SyntheticParams = self.params  # type: ignore[assignment]
        encoder = MLPEncoder(params.input_features, (params.width,) * params.depth)
        heads = StackedMLPHeads(params.num_tasks, params.width, params.classes, hidden=None)
        return MultiTaskModel(encoder, heads, params.num_tasks)
