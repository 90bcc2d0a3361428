"""Two 28×28 items on one canvas (MultiMNIST and its Fashion variants), read from IDX files.

Construction (Sabour et al. 2017 as used by Sener & Koltun 2018, ``multi_mnist_loader.py``):
the *left* item is placed at ``[0:28, 0:28]`` of a 36×36 zero canvas, the *right* item at
``[6:34, 6:34]``; where they overlap the pixel is the maximum of the two; the canvas is resized
back to 28×28 by nearest neighbour (the sampling of Pillow's ``Image.NEAREST``: output pixel i
reads input pixel ``floor((i + 0.5) · 36/28)``). Task 1 = left label, task 2 = right label.

Splits (deterministic from the parameter ``seed``):
- the source *training* images (60,000 per source) are split into a train pool and a validation
  pool (``val_fraction`` of them, default 10 % → 54,000 / 6,000) by a fixed permutation, so no
  validation item is ever seen in training; the source *test* images (10,000) are the test pool;
- inside each pool every image is the left item of exactly one canvas (in order) and the right
  item is drawn uniformly from the same pool of the right source: train 54,000, val 6,000 and
  test 10,000 canvases.
Inputs are standardised by the mean and standard deviation of the training canvases.

The canvases are generated once and cached under ``<data root>/mtlbench_cache/`` as an ``.npz``
(written atomically; keyed by dataset, seed, val_fraction and the source files' sizes); a
read-only data root only means no cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from mtlbench.datasets._files import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    cache_path,
    carve_validation,
    data_root,
    find_file,
    load_npz,
    read_idx,
    save_npz_atomic,
)
from mtlbench.datasets._models import multi_lenet
from mtlbench.harness.dataset import DatasetFileError, DatasetParams, MultiTaskDataset, Splits
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet, TaskSpec
from pydantic import Field
from torch.utils.data import TensorDataset

ITEM_SIDE = 28
CANVAS_SIDE = 36
SHIFT = 6  # the right item occupies [6:34, 6:34] (2 pixels short of the bottom-right corner)
NEAREST_INDEX = np.floor((np.arange(ITEM_SIDE) + 0.5) * CANVAS_SIDE / ITEM_SIDE).astype(np.int64)
CACHE_VERSION = 1
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class IdxSource:
    """One IDX dataset: its folder under the data root (and an alternative, torchvision's)."""

    title: str
    folder: str
    alternative: str

    def folders(self, root: Path) -> list[Path]:
        return [root / self.folder, root / self.alternative]

    def files(self, root: Path) -> dict[str, Path]:
        return {
            key: find_file(self.folders(root), [name, name + ".gz"], self.title)
            for key, name in IDX_NAMES.items()
        }

    def load(self, root: Path) -> dict[str, np.ndarray]:
        """train/test images (N, 28, 28) uint8 and labels (N,) uint8, checked consistent."""
        files = self.files(root)
        arrays: dict[str, np.ndarray] = {}
        for split in ("train", "test"):
            images = read_idx(files[f"{split}_images"], IDX_IMAGES_MAGIC, (ITEM_SIDE, ITEM_SIDE))
            labels = read_idx(files[f"{split}_labels"], IDX_LABELS_MAGIC)
            if len(images) != len(labels):
                raise DatasetFileError(
                    f"{files[f'{split}_labels']}: {len(labels)} labels for {len(images)} images "
                    f"in {files[f'{split}_images'].name}"
                )
            if labels.size and labels.max() > 9:
                raise DatasetFileError(f"{files[f'{split}_labels']}: label {labels.max()} > 9")
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
        return arrays

    def signature(self, root: Path) -> str:
        return ";".join(f"{p.name}:{p.stat().st_size}" for p in self.files(root).values())


MNIST = IdxSource("MNIST", "mnist", "MNIST/raw")
FASHION = IdxSource("Fashion-MNIST", "fashion_mnist", "FashionMNIST/raw")


def overlay(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Overlay item pairs. left, right: (N, 28, 28) uint8 -> canvases (N, 28, 28) uint8."""
    canvas = np.zeros((len(left), CANVAS_SIDE, CANVAS_SIDE), dtype=np.uint8)
    canvas[:, :ITEM_SIDE, :ITEM_SIDE] = left
    window = canvas[:, SHIFT : SHIFT + ITEM_SIDE, SHIFT : SHIFT + ITEM_SIDE]
    np.maximum(window, right, out=window)
    return canvas[:, NEAREST_INDEX][:, :, NEAREST_INDEX]


class OverlayParams(DatasetParams):
    """seed: draws the validation pool and the right items (the construction, not the run).
    val_fraction: share of the source training images held out for validation."""

    seed: int = Field(0, ge=0)
    val_fraction: float = Field(0.1, gt=0, lt=1)


class TwoItemOverlay(MultiTaskDataset):
    """Base of ``multimnist``, ``multifashion``, ``fashion_mnist``: subclasses name the sources."""

    Params = OverlayParams
    left_source: ClassVar[IdxSource] = MNIST
    right_source: ClassVar[IdxSource] = MNIST
    task_names: ClassVar[tuple[str, str]] = ("left", "right")
    training_defaults = {"batch_size": 256, "optimizer": "adam", "lr": 1e-3, "epochs": 10}
    model_description = "MultiLeNet: conv 1→10→20 (5×5), fc 320→50; 2 heads 50→50→10"

    @classmethod
    def taskset(cls, params: DatasetParams) -> TaskSet:
        return TaskSet([TaskSpec(name, "classification", 10) for name in cls.task_names])

    @classmethod
    def input_shape(cls, params: DatasetParams) -> tuple[int, ...]:
        """(1, 28, 28); the inputs are standardised, so the default standard-normal stand-in
        matches their range."""
        return (1, ITEM_SIDE, ITEM_SIDE)

    def build_model(self) -> MultiTaskModel:
        return multi_lenet(ITEM_SIDE, num_tasks=2)

    def _cache_file(self, root: Path) -> Path:
        params: OverlayParams = self.params  # type: ignore[assignment]
        name = f"{self.registry_name}_seed{params.seed}_val{params.val_fraction:g}_v{CACHE_VERSION}"
        return cache_path(root, name + ".npz")

    def canvases(self) -> dict[str, np.ndarray]:
        """``{split}_inputs`` (N, 28, 28) uint8 and ``{split}_targets`` (N, 2) uint8 per split,
        from the cache when it matches the source files, else generated (and cached)."""
        root = data_root(self.params, self.registry_name)
        signature = self.left_source.signature(root) + "|" + self.right_source.signature(root)
        target = self._cache_file(root)
        cached = load_npz(target)
        if cached is not None and str(cached.get("signature", "")) == signature:
            return cached
        arrays = self._generate(root)
        save_npz_atomic(target, signature=np.array(signature), **arrays)
        return arrays

    def _generate(self, root: Path) -> dict[str, np.ndarray]:
        params: OverlayParams = self.params  # type: ignore[assignment]
        left = self.left_source.load(root)
        right = left if self.right_source == self.left_source else self.right_source.load(root)
        pools = {}
        for name, source in (("left", left), ("right", right)):
            train, val = carve_validation(
                len(source["train_labels"]), params.val_fraction, params.seed
            )
            test = np.arange(len(source["test_labels"]))
            pools[name] = {"train": ("train", train), "val": ("train", val), "test": ("test", test)}
        arrays = {}
        for split, split_id in SPLIT_IDS.items():
            left_part, left_index = pools["left"][split]
            right_part, right_pool = pools["right"][split]
            if len(left_index) == 0 or len(right_pool) == 0:
                raise DatasetFileError(
                    f"{self.registry_name}: the {split} split would be empty "
                    f"(too few source images for val_fraction={params.val_fraction})"
                )
            rng = np.random.default_rng([params.seed, split_id])
            right_index = rng.choice(right_pool, size=len(left_index))
            arrays[f"{split}_inputs"] = overlay(
                left[f"{left_part}_images"][left_index], right[f"{right_part}_images"][right_index]
            )
            arrays[f"{split}_targets"] = np.stack(
                [
                    left[f"{left_part}_labels"][left_index],
                    right[f"{right_part}_labels"][right_index],
                ],
                axis=1,
            )
        return arrays

    def load(self) -> Splits:
        arrays = self.canvases()
        scaled = {name: arrays[f"{name}_inputs"].astype(np.float32) / 255.0 for name in SPLIT_IDS}
        mean, std = float(scaled["train"].mean()), float(scaled["train"].std()) or 1.0

        def split(name: str) -> TensorDataset:
            inputs = (scaled[name] - mean) / std
            targets = arrays[f"{name}_targets"].astype(np.float32)
            return TensorDataset(torch.from_numpy(inputs[:, None]), torch.from_numpy(targets))

        return Splits(**{name: split(name) for name in SPLIT_IDS})
