"""The points of a study: one per value of each swept axis, the other axes at ``base``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtlbench.harness.scaling.config import ScalingStudy

SYNTHETIC = "synthetic"
DATASET = SYNTHETIC  # the dataset of every numeric axis


@dataclass(frozen=True)
class StudyPoint:
    """One point of one axis.

    axis / axis_value: the swept axis and its value there (on ``datasets``, the position of the
    dataset in the axis list); tasks: T; width: the synthetic MLP's width (0 for another
    dataset, whose model is its own default); workers: K; dataset: registered dataset name.
    """

    axis: str
    axis_value: float
    tasks: int
    width: int
    workers: int
    dataset: str = SYNTHETIC


def _width(study: ScalingStudy, target: float) -> int:
    from mtlbench.datasets.synthetic import width_for_shared_parameters

    problem = study.problem
    return width_for_shared_parameters(target, problem.input_features, problem.depth)


def _dataset_points(study: ScalingStudy) -> list[StudyPoint]:
    from mtlbench.harness.registry import DATASETS

    base = study.base
    points = []
    for index, name in enumerate(study.axes.datasets or []):
        if name == SYNTHETIC:
            tasks, width = base.tasks, _width(study, base.shared_parameters)
        else:
            dataset_cls = DATASETS.get(name)
            params = dataset_cls.Params.model_validate(study.dataset_params.get(name, {}))
            tasks, width = len(dataset_cls.taskset(params)), 0
        points.append(StudyPoint("datasets", float(index), tasks, width, base.workers, name))
    return points


def study_points(study: ScalingStudy) -> list[StudyPoint]:
    """Every point, axis by axis, each axis in increasing order (memory peaks then only grow);
    the datasets axis last, in the order listed."""
    base = study.base
    base_width = _width(study, base.shared_parameters)
    points = [
        StudyPoint("shared_parameters", value, base.tasks, _width(study, value), base.workers)
        for value in study.axes.shared_parameters or []
    ]
    points += [
        StudyPoint("tasks", float(value), int(value), base_width, base.workers)
        for value in study.axes.tasks or []
    ]
    points += [
        StudyPoint("workers", float(value), base.tasks, base_width, int(value))
        for value in study.axes.workers or []
    ]
    return points + _dataset_points(study)


def dataset_params(study: ScalingStudy, point: StudyPoint) -> dict[str, Any]:
    """The parameters of the point's dataset (a ``synthetic`` one from the problem and point)."""
    if point.dataset != SYNTHETIC:
        return dict(study.dataset_params.get(point.dataset, {}))
    return {
        **study.problem.model_dump(),
        "num_tasks": point.tasks,
        "width": point.width,
        "teacher_seed": study.seed,
    }


def axis_x(row: dict[str, Any]) -> float:
    """A row's x on its axis: the actual shared-parameter count on ``shared_parameters``
    (not the target), the model's whole parameter count on ``datasets``, else the axis value."""
    if row["axis"] == "shared_parameters":
        return float(row["shared_parameters"])
    if row["axis"] == "datasets":
        return float(row["parameter_count"])
    return float(row["axis_value"])
