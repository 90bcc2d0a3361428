"""``utkface``: face images; tasks age (regression), gender (2-way) and race (5-way).

Reads every ``*.jpg`` under ``<data root>/UTKFace/`` (the "Aligned & Cropped Faces" archive
extracts there; sub-folders such as the in-the-wild ``part1/ part2/ part3/`` are searched too).
Labels come from the file name, ``[age]_[gender]_[race]_[date&time].jpg`` (the cropped set adds
``.chip.jpg``): age an integer (years), gender 0 (male) / 1 (female), race 0..4 (White, Black,
Asian, Indian, Others). Files whose name does not parse (the published archive has three, e.g.
``39_1_20170116174525125.jpg.chip.jpg``) and, with ``verify_images`` (default), files that do not
decode are skipped, counted and reported in one warning; other files (not ``.jpg``) are ignored.

Splits as PaMaL (Dimitriadis et al. 2023): a fixed permutation (``split_seed``) of the kept files,
70 % train / 10 % val / 20 % test. Images: RGB, resized to ``image_size`` (64), in [-1, 1].

Age target: standardised by the training split's mean and standard deviation (PaMaL does the
same), loss Huber, metric MAE in those standard-deviation units (multiply by
``age_std_years``, set by ``load()``, for years). Its hypervolume reference is 1.0 by this rule:
the constant prediction of the training mean has a training MAE of at most one standard
deviation (E|a − mean| ≤ std), so 1.0 bounds the trivial predictor, as error 1.0 does for
classification.

Default model (Sener & Koltun 2018 / PaMaL): CIFAR-style ResNet-18 encoder (2048 features on
64×64) and heads Linear(2048, 1), Linear(2048, 2), Linear(2048, 5). PaMaL's settings: Adam,
lr 1e-3, batch 256, 100 epochs.
"""

from __future__ import annotations

import re
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
from mtlbench.harness.model import MultiTaskModel, SeparateHeads
from mtlbench.harness.registry import register_dataset
from mtlbench.harness.tasks import TaskSet, TaskSpec
from pydantic import Field
from torch import nn

FOLDER_NAMES = ("UTKFace", "utkface")
NAME_PATTERN = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)\.jpg(\.chip\.jpg)?$", re.IGNORECASE)
SPLIT_FRACTIONS = (0.7, 0.1)  # train, val; the rest is test
NUM_RACES = 5


class UTKFaceParams(DatasetParams):
    """image_size: side of the resized images. width: ResNet base channels (64 = ResNet-18; tests
    shrink it). split_seed: permutation of the files into splits. verify_images: decode every
    file at load, counting and skipping unreadable ones (else they fail when first read)."""

    image_size: int = Field(64, ge=8)
    width: int = Field(64, gt=0)
    split_seed: int = Field(0, ge=0)
    verify_images: bool = True


def parse_name(name: str) -> tuple[int, int, int] | None:
    """(age, gender, race) from a UTKFace file name, or None when it does not parse."""
    match = NAME_PATTERN.match(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


@register_dataset("utkface")
class UTKFace(MultiTaskDataset):
    Params = UTKFaceParams
    training_defaults = {"batch_size": 256, "optimizer": "adam", "lr": 1e-3, "epochs": 100}
    model_description = "ResNet-18 (CIFAR-style, 64×64 → 2048) + heads Linear(2048, 1 | 2 | 5)"

    age_mean_years: float = float("nan")
    age_std_years: float = float("nan")

    @classmethod
    def taskset(cls, params: DatasetParams) -> TaskSet:
        return TaskSet(
            [
                TaskSpec("age", "regression", 1, hv_reference=1.0, regression_loss="huber"),
                TaskSpec("gender", "classification", 2),
                TaskSpec("race", "classification", NUM_RACES),
            ]
        )

    @classmethod
    def input_shape(cls, params: DatasetParams) -> tuple[int, ...]:
        assert isinstance(params, UTKFaceParams)
        return (3, params.image_size, params.image_size)

    @classmethod
    def stand_in_inputs(
        cls, params: DatasetParams, batch_size: int, generator: torch.Generator
    ) -> torch.Tensor:
        assert isinstance(params, UTKFaceParams)
        return stand_in_images(batch_size, params.image_size, generator)

    def build_model(self) -> MultiTaskModel:
        params: UTKFaceParams = self.params  # type: ignore[assignment]
        encoder = ResNet18Encoder(params.image_size, params.width)
        size = encoder.representation_size
        heads = SeparateHeads([nn.Linear(size, 1), nn.Linear(size, 2), nn.Linear(size, NUM_RACES)])
        return MultiTaskModel(encoder, heads, num_tasks=3)

    def folder(self) -> Path:
        root = data_root(self.params, "utkface")
        for name in FOLDER_NAMES:
            if (root / name).is_dir():
                return root / name
        raise DatasetFileError(
            f"utkface: image folder {FOLDER_NAMES[0]}/ not found in {root}", absent=True
        )

    def labelled_files(self) -> tuple[list[Path], np.ndarray]:
        """Files that parse (and decode, with verify_images) and their labels (N, 3) int."""
        params: UTKFaceParams = self.params  # type: ignore[assignment]
        folder = self.folder()
        candidates = sorted(
            (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in {".jpg", ".jpeg"}),
            key=lambda p: p.relative_to(folder).as_posix(),
        )
        paths, labels, unparsed = [], [], []
        for path in candidates:
            parsed = parse_name(path.name)
            if parsed is None:
                unparsed.append(path.name)
            else:
                paths.append(path)
                labels.append(parsed)
        report_skipped("utkface", "names not of the form age_gender_race_datetime.jpg", unparsed)
        if params.verify_images and paths:
            readable = verify_images(paths)
            report_skipped(
                "utkface",
                "undecodable image data",
                [p.name for p, ok in zip(paths, readable, strict=True) if not ok],
            )
            paths = [p for p, ok in zip(paths, readable, strict=True) if ok]
            labels = [label for label, ok in zip(labels, readable, strict=True) if ok]
        if not paths:
            raise DatasetFileError(
                f"utkface: no usable age_gender_race_datetime.jpg image in {folder}"
            )
        return paths, np.asarray(labels, dtype=np.int64).reshape(-1, 3)

    def load(self) -> Splits:
        params: UTKFaceParams = self.params  # type: ignore[assignment]
        paths, labels = self.labelled_files()
        order = np.random.default_rng(params.split_seed).permutation(len(paths))
        train_end = int(SPLIT_FRACTIONS[0] * len(paths))
        val_end = train_end + int(SPLIT_FRACTIONS[1] * len(paths))
        parts = {
            "train": order[:train_end],
            "val": order[train_end:val_end],
            "test": order[val_end:],
        }
        train_ages = labels[parts["train"], 0].astype(np.float64)
        if len(train_ages) == 0:
            raise DatasetFileError(f"utkface: {len(paths)} images are too few for a training split")
        self.age_mean_years = float(train_ages.mean())
        self.age_std_years = float(train_ages.std()) or 1.0
        targets = labels.astype(np.float32)
        targets[:, 0] = (targets[:, 0] - self.age_mean_years) / self.age_std_years
        targets_tensor = torch.from_numpy(targets)
        splits = {
            name: ImageFiles(
                [paths[i] for i in index],
                targets_tensor[torch.from_numpy(index)],
                params.image_size,
            )
            for name, index in parts.items()
        }
        return Splits(**splits)
