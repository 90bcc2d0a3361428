"""``census``: tabular records of the US census; binary tasks such as age bracket and education.

The references (PaMaL, Dimitriadis et al. 2023; CPMTL, Ma et al. 2020; Pareto MTL, Lin et al.
2019) use the UCI **Census-Income (KDD)** files, ``census-income.data`` and ``census-income.test``
(199,523 / 99,762 rows of 42 comma-separated fields), read here from ``<data root>/census/``
(``source: kdd``, the default). The smaller UCI **Adult** files ``adult.data`` / ``adult.test``
(32,561 / 16,281 rows of 15 fields; the test file's ``|1x3 Cross validator`` line is skipped) are
read from ``<data root>/adult/`` with ``source: adult``. Files may be gzipped (``.gz``).

Tasks (choose with ``tasks``; default ``[age, education]``, PaMaL's census setting; CPMTL uses
``[age, education, never_married]`` with ``hidden: [256, 128]``), each binary:
- ``age``: age ≥ 40;
- ``education``: any schooling beyond high school: the value starts with Bachelors, Some
  (college), Masters, Asso(ciate), Doctorate or Prof(essional school). (PaMaL's rule lists
  "Maters", a typo that leaves Masters degrees out; this follows the evident intent.)
- ``never_married``: marital status "Never married" (KDD) / "Never-married" (Adult);
- ``income``: the record's income label, > 50,000 $ (KDD "50000+.") / > 50K (Adult).

Inputs: every column except the instance weight (``instance weight`` / ``fnlwgt``: a sampling
weight the UCI notes say must not be used by classifiers), the income label and the columns a
chosen task is derived from (age; education and, for Adult, education-num; marital status).
Continuous columns are standardised by the training split's mean and standard deviation;
nominal columns (numeric codes included; "?" is a value like any other) are one-hot encoded over
the values seen in the training file (a value absent there encodes as all zeros). With the full
KDD files and the default tasks that is 492 inputs (6 continuous + 486 one-hot), 485 with
CPMTL's three tasks; for Adult 89 with the default tasks.

Splits: the training file is split by a fixed permutation (``split_seed``) into train and val
(``val_fraction``, default 10 %); the test file is the test split. A row with the wrong number of
fields or an unparseable number is one error naming the file and line.

Default model: MLP encoder ``inputs → hidden`` (ReLU; default ``[256]`` as PaMaL) and one stacked
Linear(hidden[-1], 2) head per task. PaMaL's settings: Adam, lr 1e-3, batch 256, 10 epochs.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from mtlbench.datasets._census_schemas import (
    ADULT,
    KDD,
    SCHEMAS,
    TASK_RULES,
    Schema,
    TaskName,
    input_columns,
)
from mtlbench.datasets._files import carve_validation, data_root, find_file, read_bytes
from mtlbench.datasets._models import MLPEncoder
from mtlbench.harness.dataset import DatasetFileError, DatasetParams, MultiTaskDataset, Splits
from mtlbench.harness.model import MultiTaskModel, StackedMLPHeads
from mtlbench.harness.registry import register_dataset
from mtlbench.harness.tasks import TaskSet, TaskSpec
from pydantic import Field, field_validator
from torch.utils.data import TensorDataset

# the column specifications live in _census_schemas; importers of these names from here keep working
__all__ = [
    "ADULT",
    "KDD",
    "SCHEMAS",
    "TASK_RULES",
    "Census",
    "CensusParams",
    "Schema",
    "TaskName",
    "input_columns",
    "read_rows",
]


class CensusParams(DatasetParams):
    """source: ``kdd`` (Census-Income KDD, the references') or ``adult``. tasks: binary tasks in
    order. hidden: widths of the MLP encoder. split_seed / val_fraction: the train/val split."""

    source: Literal["kdd", "adult"] = "kdd"
    tasks: tuple[TaskName, ...] = ("age", "education")
    hidden: tuple[int, ...] = (256,)
    split_seed: int = Field(0, ge=0)
    val_fraction: float = Field(0.1, gt=0, lt=1)

    @field_validator("tasks")
    @classmethod
    def _distinct_tasks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("tasks must be a non-empty list without repeats")
        return value

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or min(value) <= 0:
            raise ValueError("hidden must be a non-empty list of positive widths")
        return value


def read_rows(path: Path, width: int) -> list[tuple[int, list[str]]]:
    """(line number, stripped fields) of each record; blank and ``|`` comment lines skipped."""
    text = read_bytes(path).decode("utf-8", errors="replace")
    rows = []
    for number, fields in enumerate(csv.reader(io.StringIO(text), skipinitialspace=True), start=1):
        if not fields or (
            len(fields) == 1 and (not fields[0].strip() or fields[0].startswith("|"))
        ):
            continue
        if len(fields) != width:
            raise DatasetFileError(f"{path}:{number}: expected {width} fields, got {len(fields)}")
        rows.append((number, [field.strip() for field in fields]))
    if not rows:
        raise DatasetFileError(f"{path}: no records")
    return rows


@register_dataset("census")
class Census(MultiTaskDataset):
    Params = CensusParams
    training_defaults = {"batch_size": 256, "optimizer": "adam", "lr": 1e-3, "epochs": 10}
    model_description = "MLP inputs→256 (ReLU) + heads Linear(256, 2); 492 inputs on the KDD files"

    input_features: int | None = None

    @classmethod
    def taskset(cls, params: DatasetParams) -> TaskSet:
        assert isinstance(params, CensusParams)
        return TaskSet([TaskSpec(name, "classification", 2) for name in params.tasks])

    def nominal_input_features(self) -> int:
        """Input width on the full published training file (without reading it)."""
        return type(self).input_shape(self.params)[0]

    @classmethod
    def input_shape(cls, params: DatasetParams) -> tuple[int, ...]:
        """(inputs,): the continuous input columns plus one one-hot slot per distinct value of
        each nominal input column in the published training file (``Schema.distinct``), the
        width :meth:`load` produces from the full files."""
        assert isinstance(params, CensusParams)
        schema = SCHEMAS[params.source]
        continuous, nominal = input_columns(schema, params.tasks)
        return (len(continuous) + sum(schema.distinct[c] for c in nominal),)

    @classmethod
    def stand_in_inputs(
        cls, params: DatasetParams, batch_size: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Rows encoded as :meth:`load` encodes them: standard normal continuous columns (they
        are standardised), then for each nominal column one 1 at a uniformly drawn value."""
        assert isinstance(params, CensusParams)
        schema = SCHEMAS[params.source]
        continuous, nominal = input_columns(schema, params.tasks)
        blocks = [torch.randn(batch_size, len(continuous), generator=generator)]
        for column in nominal:
            values = schema.distinct[column]
            drawn = torch.randint(0, values, (batch_size,), generator=generator)
            blocks.append(torch.nn.functional.one_hot(drawn, values).float())
        return torch.cat(blocks, dim=1)

    def build_model(self) -> MultiTaskModel:
        """The MLP; its input width is the loaded encoding's, or the nominal one before load()."""
        params: CensusParams = self.params  # type: ignore[assignment]
        width = self.input_features or self.nominal_input_features()
        encoder = MLPEncoder(width, params.hidden)
        heads = StackedMLPHeads(len(params.tasks), params.hidden[-1], 2, hidden=None)
        return MultiTaskModel(encoder, heads, num_tasks=len(params.tasks))

    def load(self) -> Splits:
        params: CensusParams = self.params  # type: ignore[assignment]
        schema = SCHEMAS[params.source]
        folder = data_root(self.params, "census") / schema.folder
        files = {
            split: find_file([folder], [name, name + ".gz"], f"census ({params.source})")
            for split, name in (("train", schema.train_file), ("test", schema.test_file))
        }
        rows = {split: read_rows(path, len(schema.columns)) for split, path in files.items()}
        continuous, nominal = input_columns(schema, params.tasks)
        position = {name: index for index, name in enumerate(schema.columns)}
        vocabulary = {
            column: {
                v: i for i, v in enumerate(sorted({r[position[column]] for _, r in rows["train"]}))
            }
            for column in nominal
        }
        width = len(continuous) + sum(len(v) for v in vocabulary.values())
        encoded = {}
        for split, split_rows in rows.items():
            numbers = _numbers(files[split], split_rows, [position[c] for c in continuous])
            one_hot = np.zeros((len(split_rows), width - len(continuous)), dtype=np.float32)
            offset = 0
            for column in nominal:
                codes, field = vocabulary[column], position[column]
                code = np.fromiter(
                    (codes.get(row[field], -1) for _, row in split_rows), np.int64, len(split_rows)
                )
                seen = np.flatnonzero(code >= 0)
                one_hot[seen, offset + code[seen]] = 1.0
                offset += len(codes)
            targets = np.zeros((len(split_rows), len(params.tasks)), dtype=np.float32)
            for task_index, task in enumerate(params.tasks):
                column, rule = TASK_RULES[task]
                source = position[column]
                values = _task_values(files[split], split_rows, source, rule, task)
                targets[:, task_index] = values
            encoded[split] = (numbers, one_hot, targets)
        train_index, val_index = carve_validation(
            len(rows["train"]), params.val_fraction, params.split_seed
        )
        train_numbers = encoded["train"][0][train_index]
        mean = train_numbers.mean(axis=0)
        std = train_numbers.std(axis=0)
        std[std == 0] = 1.0
        self.input_features = width

        def tensors(split: str, index: np.ndarray | None) -> TensorDataset:
            numbers, one_hot, targets = encoded[split]
            if index is not None:  # select the rows first: each row is standardised once
                numbers, one_hot, targets = numbers[index], one_hot[index], targets[index]
            inputs = np.concatenate([(numbers - mean) / std, one_hot], axis=1).astype(np.float32)
            return TensorDataset(torch.from_numpy(inputs), torch.from_numpy(targets))

        return Splits(
            train=tensors("train", train_index),
            val=tensors("train", val_index),
            test=tensors("test", None),
        )


def _numbers(path: Path, rows: list[tuple[int, list[str]]], columns: list[int]) -> np.ndarray:
    values = np.zeros((len(rows), len(columns)), dtype=np.float64)
    for row_index, (number, row) in enumerate(rows):
        for column_index, column in enumerate(columns):
            try:
                values[row_index, column_index] = float(row[column])
            except ValueError:
                raise DatasetFileError(
                    f"{path}:{number}: field {column + 1} is {row[column]!r}, expected a number"
                ) from None
    return values


def _task_values(
    path: Path,
    rows: list[tuple[int, list[str]]],
    column: int,
    rule: Callable[[str], bool],
    task: str,
) -> np.ndarray:
    values = np.zeros(len(rows), dtype=np.float32)
    for row_index, (number, row) in enumerate(rows):
        try:
            values[row_index] = float(rule(row[column]))
        except ValueError:
            raise DatasetFileError(
                f"{path}:{number}: field {column + 1} ({row[column]!r}) gives no {task} label"
            ) from None
    return values
