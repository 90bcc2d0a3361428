"""The scaling study's datasets axis: a real dataset (``multidigits``, embedded: HV present) and
one whose files are absent (``census``: stand-in inputs of the real shapes, HV null), end to end
through the CLI; FLOPs per step against counts made without the engine (FlopCounterMode on a
plain forward and backward; by hand for census's MLP), parameter counts against the model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mtlbench.datasets._files import DATA_ROOT_ENV
from mtlbench.harness.cli import app
from mtlbench.harness.dataset import DatasetFileError
from mtlbench.harness.registry import DATASETS
from mtlbench.harness.scaling import parse_study, point_inputs, study_points
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

BATCH = 16
SMALL_DIGITS = {"train_pairs": 256, "val_pairs": 64, "test_pairs": 128}
STUDY = {
    "name": "tiny-datasets",
    "methods": [{"name": "ew"}],
    "axes": {"datasets": ["multidigits", "census"]},
    "dataset_params": {"multidigits": SMALL_DIGITS},
    # max_seconds below any step: one timed step of the three (FLOPs per step must still be one
    # step's)
    "timing": {"warmup": 1, "repeats": 3, "max_seconds": 1e-9},
    "budget": {"ew_steps": 2},
    "training": {"batch_size": BATCH},
}


def _plain_step_flops(name: str, params: dict, batch: int) -> float:
    """FLOPs of one forward and backward of the summed task losses (the EW step), counted by
    torch's FlopCounterMode on the dataset's default model, without any gradient engine."""
    dataset_cls = DATASETS.get(name)
    parsed = dataset_cls.Params.model_validate(params)
    model = dataset_cls(parsed).build_model()
    inputs, targets = dataset_cls.stand_in_batch(parsed, batch, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        losses = dataset_cls.taskset(parsed).per_sample_losses(model(inputs), targets)
        losses.mean(0).sum().backward()
    return float(counter.get_total_flops())


def test_points_of_the_datasets_axis_carry_each_datasets_task_count() -> None:
    study = parse_study({**STUDY, "axes": {"datasets": ["multidigits", "celeba", "utkface"]}})
    points = study_points(study)
    assert [(p.axis, p.dataset, p.tasks) for p in points] == [
        ("datasets", "multidigits", 2),
        ("datasets", "celeba", 40),
        ("datasets", "utkface", 3),
    ]


def test_datasets_axis_real_and_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)  # census's files are absent
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(STUDY))
    results = tmp_path / "results"
    outcome = CliRunner().invoke(app, ["scale", str(study_file), "--results-dir", str(results)])
    assert outcome.exit_code == 0, outcome.output
    rows = pq.read_table(results / "scaling" / "tiny-datasets.parquet").to_pylist()
    by_dataset = {row["dataset"]: row for row in rows}
    assert set(by_dataset) == {"multidigits", "census"}
    assert {row["status"] for row in rows} == {"ok"}, [row["error"] for row in rows]

    digits = by_dataset["multidigits"]
    assert digits["stand_in"] is False and digits["hv_status"] == "completed"
    assert 0 <= digits["hypervolume"] <= 1 and digits["hv_steps"] == 2
    assert json.loads(digits["input_shape"]) == [1, 20, 20] and digits["task_count"] == 2
    model = DATASETS.get("multidigits")(DATASETS.get("multidigits").Params()).build_model()
    assert digits["parameter_count"] == sum(p.numel() for p in model.parameters())
    assert digits["flops_per_step"] == pytest.approx(
        _plain_step_flops("multidigits", SMALL_DIGITS, BATCH), rel=1e-9
    )

    census = by_dataset["census"]
    assert census["stand_in"] is True and "no data root" in census["stand_in_reason"]
    assert census["hypervolume"] is None and census["hv_status"] is None
    inputs, hidden, tasks, classes = 492, 256, 2, 2  # the KDD files' one-hot width, PaMaL's MLP
    assert json.loads(census["input_shape"]) == [inputs] and census["task_count"] == tasks
    assert census["parameter_count"] == inputs * hidden + hidden + tasks * (hidden * classes + 2)
    # by hand, 2 FLOPs per multiply-add: forward, weight gradients, and the input gradient of
    # the heads only (the inputs need none)
    encoder, heads = inputs * hidden, tasks * hidden * classes
    assert census["flops_per_step"] == pytest.approx(2 * BATCH * (2 * encoder + 3 * heads))
    assert census["flops_per_step"] == pytest.approx(_plain_step_flops("census", {}, BATCH))
    assert math.isfinite(census["step_seconds"]) and census["peak_memory_bytes"] > 0
    assert all(len(row["step_seconds_repeats"]) == 1 for row in rows)

    markdown = (results / "leaderboard" / "scaling.md").read_text()
    assert "| census | ew | 127,236 | 2 | 492 |" in markdown and "| stand-in |" in markdown
    assert "stand-in inputs of the real shapes" in markdown
    assert (results / "leaderboard" / "scaling_tiny-datasets_datasets.png").stat().st_size > 0


def test_unknown_dataset_on_the_axis_is_one_line_exit_2(tmp_path: Path) -> None:
    study_file = tmp_path / "study.yaml"
    study_file.write_text(
        yaml.safe_dump({**STUDY, "axes": {"datasets": ["multidigits", "imagenet"]}})
    )
    outcome = CliRunner().invoke(app, ["scale", str(study_file), "--results-dir", str(tmp_path)])
    assert outcome.exit_code == 2
    lines = outcome.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in outcome.output
    assert "axes.datasets[1]: unknown dataset 'imagenet'" in lines[0]
    assert str(study_file) in lines[0]


@pytest.mark.parametrize("name", ["scaling", "scaling_datasets"])
def test_shipped_studies_are_valid(name: str) -> None:
    path = Path(__file__).parents[1] / "suites" / f"{name}.yaml"
    study = parse_study(yaml.safe_load(path.read_text()), str(path))
    assert study.name == name
    if name == "scaling_datasets":
        datasets = [p.dataset for p in study_points(study) if p.axis == "datasets"]
        assert datasets == ["multidigits", "multimnist", "census", "utkface", "celeba"]


def test_absent_files_give_a_stand_in_and_malformed_files_fail(tmp_path: Path) -> None:
    def census_study(root: Path) -> dict:
        return {
            **STUDY,
            "axes": {"datasets": ["census"]},
            "dataset_params": {"census": {"data_root": str(root)}},
        }

    absent = parse_study(census_study(tmp_path / "elsewhere"))
    (point,) = study_points(absent)
    inputs = point_inputs(absent, point, torch.device("cpu"))
    assert inputs.stand_in and "is not a folder" in inputs.stand_in_reason
    assert inputs.batch[0].shape == (BATCH, 492) and inputs.batch[1].shape == (BATCH, 2)

    folder = tmp_path / "census"
    folder.mkdir()
    for name in ("census-income.data", "census-income.test"):
        (folder / name).write_text("40, Private, 3\n")
    malformed = parse_study(census_study(tmp_path))
    with pytest.raises(DatasetFileError, match=r"census-income\.data:1: expected 42 fields"):
        point_inputs(malformed, point, torch.device("cpu"))
