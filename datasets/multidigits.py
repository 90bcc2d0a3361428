"""``multidigits``: the embedded default, a MultiMNIST-style dataset needing no download.

Built deterministically from scikit-learn's bundled handwritten digits (``load_digits``: 1,797
images of 8×8 pixels, values 0..16). As in MultiMNIST, two digits share one canvas: each digit is
upscaled ×2 (nearest) to 16×16, the *left* one placed at the top-left ``[0:16, 0:16]`` of a
20×20 canvas and the *right* one shifted to the bottom-right ``[4:20, 4:20]``; overlaps take the
maximum. Task 1 = left digit, task 2 = right digit (10 classes each).

Splits: the 1,797 source digits are first split into disjoint pools (train 1,200 / val 200 /
test 397, fixed permutation with seed 0), then pairs are drawn inside each pool
(6,000 / 1,000 / 2,000), so no test digit image was ever seen in training.
"""

from __future__ import annotations

import numpy as np
import torch
from mtlbench.datasets._models import multi_lenet
from mtlbench.harness.dataset import DatasetParams, MultiTaskDataset, Splits
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.registry import register_dataset
from mtlbench.harness.tasks import TaskSet, TaskSpec
from pydantic import Field
from torch.utils.data import TensorDataset

DIGIT_SIDE = 16
CANVAS_SIDE = 20
SHIFT = CANVAS_SIDE - DIGIT_SIDE
POOL_SIZES = {"train": 1200, "val": 200, "test": 397}


class MultiDigitsParams(DatasetParams):
    """train_pairs / val_pairs / test_pairs: overlaid pairs drawn per split."""

    train_pairs: int = Field(6000, gt=0)
    val_pairs: int = Field(1000, gt=0)
    test_pairs: int = Field(2000, gt=0)


def overlay_pairs(
    images: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``count`` ordered pairs and overlay them.

    images: (N, 8, 8) in [0, 16]; returns canvases (count, 1, 20, 20) in [0, 1] and
    labels (count, 2) = (left digit, right digit).
    """
    big = images.repeat(2, axis=1).repeat(2, axis=2) / 16.0
    left = rng.integers(0, len(images), size=count)
    right = rng.integers(0, len(images), size=count)
    canvas = np.zeros((count, CANVAS_SIDE, CANVAS_SIDE), dtype=np.float32)
    canvas[:, :DIGIT_SIDE, :DIGIT_SIDE] = big[left]
    canvas[:, SHIFT:, SHIFT:] = np.maximum(canvas[:, SHIFT:, SHIFT:], big[right])
    targets = np.stack([labels[left], labels[right]], axis=1).astype(np.float32)
    return canvas[:, None], targets


@register_dataset("multidigits")
class MultiDigits(MultiTaskDataset):
    Params = MultiDigitsParams
    training_defaults = {"batch_size": 128, "optimizer": "adam", "lr": 1e-3}
    model_description = "LeNet encoder (conv 1→10→20, fc 80→50) + 2 heads 50→50→10"

    @classmethod
    def taskset(cls, params: DatasetParams) -> TaskSet:
        return TaskSet(
            [TaskSpec("left", "classification", 10), TaskSpec("right", "classification", 10)]
        )

    @classmethod
    def input_shape(cls, params: DatasetParams) -> tuple[int, ...]:
        return (1, CANVAS_SIDE, CANVAS_SIDE)

    @classmethod
    def stand_in_inputs(
        cls, params: DatasetParams, batch_size: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Uniform in [0, 1], the range of the canvases."""
        return torch.rand((batch_size, *cls.input_shape(params)), generator=generator)

    def load(self) -> Splits:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits.images.astype(np.float32)
        labels = digits.target.astype(np.int64)
        order = np.random.default_rng(0).permutation(len(images))
        bounds = np.cumsum([0, *POOL_SIZES.values()])
        params = self.params
        assert isinstance(params, MultiDigitsParams)
        counts = {
            "train": params.train_pairs,
            "val": params.val_pairs,
            "test": params.test_pairs,
        }
        splits = {}
        for index, name in enumerate(POOL_SIZES):
            pool = order[bounds[index] : bounds[index + 1]]
            rng = np.random.default_rng(1 + index)
            inputs, targets = overlay_pairs(images[pool], labels[pool], counts[name], rng)
            splits[name] = TensorDataset(torch.from_numpy(inputs), torch.from_numpy(targets))
        return Splits(**splits)

    def build_model(self) -> MultiTaskModel:
        return multi_lenet(CANVAS_SIDE, num_tasks=2)
