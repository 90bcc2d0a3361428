"""``celeba``: aligned face images; 40 binary attribute tasks.

Reads, from ``<data root>/celeba/`` (the layout of the official archive and of torchvision):
- ``list_attr_celeba.txt``: line 1 the number of images, line 2 the 40 attribute names, then one
  row per image, ``<file name>`` followed by 40 values in {-1, 1} separated by spaces;
- ``list_eval_partition.txt``: ``<file name> <0|1|2>`` (train / val / test, the official split:
  162,770 / 19,867 / 19,962);
- ``img_align_celeba/``: the JPEG images.
A malformed line (e.g. a row with 39 attributes) is one error naming the file and line; the names
line must be the standard 40 attributes in the standard order. Images listed but absent from
``img_align_celeba/`` are skipped, counted and reported in one warning; an image that does not
decode fails when first read, naming the file (``verify_images`` checks them all up front and
skips them counted instead, at the cost of decoding 200k files).

Target of attribute k: 1 if the value is 1, else 0. Images: RGB, resized to ``image_size`` (64×64,
as Sener & Koltun 2018, no crop), in [-1, 1]. Default model (Sener & Koltun): CIFAR-style
ResNet-18 encoder (2048 features on 64×64) and 40 heads Linear(2048, 2), held stacked. Their
settings: Adam, lr 5e-4, batch 256, 100 epochs, lr ×0.85 every 10 epochs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from mtlbench.datasets._files import data_root
from mtlbench.datasets._images import (
    ImageFiles,
    report_skipped,
    stand_in_images,
    verify_images,
)
from mtlbench.datasets._models import ResNet18Encoder
from mtlbench.harness.dataset import (
    DatasetFileError,
    DatasetParams,
    MultiTaskDataset,
    Splits,
)
from mtlbench.harness.model import MultiTaskModel, StackedMLPHeads
from mtlbench.harness.registry import register_dataset
from mtlbench.harness.tasks import TaskSet, TaskSpec
from pydantic import Field

FOLDER = "celeba"
ATTRIBUTES_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_FOLDER = "img_align_celeba"
ATTRIBUTES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


class CelebAParams(DatasetParams):
    """image_size: side of the resized images. width: ResNet base channels (64 = ResNet-18).
    verify_images: decode every image at load and skip (counted) those that fail."""

    image_size: int = Field(64, ge=8)
    width: int = Field(64, gt=0)
    verify_images: bool = False


def read_attributes(path: Path) -> tuple[list[str], np.ndarray]:
    """File names and targets (N, 40) in {0, 1} from ``list_attr_celeba.txt``."""
    if not path.is_file():
        raise DatasetFileError(f"celeba: {path.name} not found in {path.parent}", absent=True)
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise DatasetFileError(f"{path}: expected a count line and an attribute-names line")
    try:
        declared = int(lines[0].strip())
    except ValueError:
        raise DatasetFileError(
            f"{path}:1: expected the number of images, got {lines[0]!r}"
        ) from None
    names = lines[1].split()
    if names != ATTRIBUTES:
        differ = next(
            (i for i, (a, b) in enumerate(zip(names, ATTRIBUTES, strict=False)) if a != b), None
        )
        detail = (
            f"{len(names)} names, expected {len(ATTRIBUTES)}"
            if differ is None
            else f"name {differ + 1} is {names[differ]!r}, expected {ATTRIBUTES[differ]!r}"
        )
        raise DatasetFileError(f"{path}:2: not the 40 CelebA attributes ({detail})")
    files, rows = [], []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(ATTRIBUTES) + 1:
            raise DatasetFileError(
                f"{path}:{number}: expected a file name and {len(ATTRIBUTES)} attribute values, "
                f"got {len(fields) - 1} values"
            )
        if any(value not in ("1", "-1") for value in fields[1:]):
            raise DatasetFileError(f"{path}:{number}: attribute values must be 1 or -1")
        files.append(fields[0])
        rows.append([value == "1" for value in fields[1:]])
    if len(files) != declared:
        raise DatasetFileError(f"{path}:1: declares {declared} images, the file lists {len(files)}")
    return files, np.asarray(rows, dtype=np.float32).reshape(-1, len(ATTRIBUTES))


def read_partition(path: Path) -> dict[str, int]:
    """File name -> split code (0 train, 1 val, 2 test) from ``list_eval_partition.txt``."""
    if not path.is_file():
        raise DatasetFileError(f"celeba: {path.name} not found in {path.parent}", absent=True)
    partition = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DatasetFileError(f"{path}:{number}: expected '<file name> <0|1|2>', got {line!r}")
        partition[fields[0]] = int(fields[1])
    return partition


@register_dataset("celeba")
class CelebA(MultiTaskDataset):
    Params = CelebAParams
    training_defaults = {"batch_size": 256, "optimizer": "adam", "lr": 5e-4, "epochs": 100}
    model_description = "ResNet-18 (CIFAR-style, 64×64 → 2048) + 40 heads Linear(2048, 2)"

    @classmethod
    def taskset(cls, params: DatasetParams) -> TaskSet:
        return TaskSet([TaskSpec(name, "classification", 2) for name in ATTRIBUTES])

    @classmethod
    def input_shape(cls, params: DatasetParams) -> tuple[int, ...]:
        assert isinstance(params, CelebAParams)
        return (3, params.image_size, params.image_size)

    @classmethod
    def stand_in_inputs(
        cls, params: DatasetParams, batch_size: int, generator: torch.Generator
    ) -> torch.Tensor:
        assert isinstance(params, CelebAParams)
        return stand_in_images(batch_size, params.image_size, generator)

    def build_model(self) -> MultiTaskModel:
        params: CelebAParams = self.params  # type: ignore[assignment]
        encoder = ResNet18Encoder(params.image_size, params.width)
        heads = StackedMLPHeads(len(ATTRIBUTES), encoder.representation_size, 2, hidden=None)
        return MultiTaskModel(encoder, heads, num_tasks=len(ATTRIBUTES))

    def load(self) -> Splits:
        params: CelebAParams = self.params  # type: ignore[assignment]
        folder = data_root(self.params, "celeba") / FOLDER
        files, targets = read_attributes(folder / ATTRIBUTES_FILE)
        partition = read_partition(folder / PARTITION_FILE)
        unassigned = [name for name in files if name not in partition]
        if unassigned:
            raise DatasetFileError(
                f"{folder / PARTITION_FILE}: no split for {len(unassigned)} image(s) of "
                f"{ATTRIBUTES_FILE}, e.g. {unassigned[0]}"
            )
        image_folder = folder / IMAGE_FOLDER
        if not image_folder.is_dir():
            raise DatasetFileError(
                f"celeba: image folder {IMAGE_FOLDER}/ not found in {folder}", absent=True
            )
        present = set(os.listdir(image_folder))
        keep = np.array([name in present for name in files], dtype=bool)
        report_skipped(
            "celeba",
            f"no image in {image_folder}",
            [n for n, k in zip(files, keep, strict=True) if not k],
        )
        if params.verify_images:
            index = np.flatnonzero(keep)
            readable = verify_images([image_folder / files[i] for i in index])
            report_skipped(
                "celeba",
                "undecodable image data",
                [files[i] for i, ok in zip(index, readable, strict=True) if not ok],
            )
            keep[index[~np.asarray(readable, dtype=bool)]] = False
        codes = np.array([partition[name] for name in files])
        splits = {}
        for split, code in SPLIT_CODES.items():
            index = np.flatnonzero(keep & (codes == code))
            if len(index) == 0:
                raise DatasetFileError(
                    f"celeba: the {split} split ({PARTITION_FILE} code {code}) is empty"
                )
            splits[split] = ImageFiles(
                [image_folder / files[i] for i in index],
                torch.from_numpy(targets[index]),
                params.image_size,
            )
        return Splits(**splits)
