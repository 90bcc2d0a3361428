"""Measuring one (method, point): step time, FLOPs per step, peak memory; and the hypervolume of
a short run at a fixed budget.

The batch is the first training batch of the point's dataset, or, where the dataset's files are
absent (loading raises :class:`~mtlbench.harness.dataset.DatasetFileError` with ``absent`` set),
a *stand-in* batch of the real shapes (``MultiTaskDataset.stand_in_batch``): the cost columns are
then measured on it, the row is marked ``stand_in`` and no hypervolume is computed (there is no
data to evaluate on).
Files that are present but malformed fail the point, as they fail a run.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from mtlbench.harness.budget import Budget
from mtlbench.harness.config import MethodEntry
from mtlbench.harness.dataset import DatasetFileError, MultiTaskDataset
from mtlbench.harness.registry import DATASETS, METHODS
from mtlbench.harness.scaling.config import ScalingStudy
from mtlbench.harness.scaling.memory import PeakMemory
from mtlbench.harness.scaling.points import StudyPoint, dataset_params
from torch import Tensor

UNLIMITED_FLOPS = 1e30
EW_PASSES = ("encoder_forward", "heads_forward", "heads_backward", "encoder_backward")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_for(
    study: ScalingStudy, entry: MethodEntry, point: StudyPoint
) -> tuple[str, dict[str, Any]]:
    """The gradient engine and its options for a method at a point (the workers axis sets K)."""
    method_cls = METHODS.get(entry.name)
    engine = entry.engine or method_cls.default_engine
    options = dict(entry.engine_options)
    if point.axis == "workers":
        engine = study.workers.engine
        options.update(study.workers.engine_options())
        options[study.workers.option] = point.workers
    return engine, options


@dataclass
class PointInputs:
    """The dataset object of a point and the one batch its steps are timed on.

    batch: (inputs (B, *input_shape), targets (B, T)) on the device; stand_in: the batch is a
    stand-in of the real shapes (the files are absent); stand_in_reason: the loader's error.
    """

    dataset: MultiTaskDataset
    batch: tuple[Tensor, Tensor]
    stand_in: bool
    stand_in_reason: str


def point_inputs(study: ScalingStudy, point: StudyPoint, device: torch.device) -> PointInputs:
    """Load the point's dataset and take one training batch, or build a stand-in batch."""
    from mtlbench.harness.data import training_batches
    from mtlbench.harness.trainer import load_dataset

    params = dataset_params(study, point)
    batch_size = study.training.batch_size
    try:
        dataset, splits = load_dataset(point.dataset, params)
    except DatasetFileError as error:
        if not error.absent:  # present but malformed: the point fails, as a run would
            raise
        dataset_cls = DATASETS.get(point.dataset)
        dataset = dataset_cls(dataset_cls.Params.model_validate(params))
        generator = torch.Generator().manual_seed(study.seed)
        inputs, targets = dataset_cls.stand_in_batch(dataset.params, batch_size, generator)
        reason = str(error).splitlines()[0]
        return PointInputs(dataset, (inputs.to(device), targets.to(device)), True, reason)
    batch = next(training_batches(splits.train, batch_size, study.seed, device))
    return PointInputs(dataset, (batch[0], batch[1]), False, "")


def _timed_steps(
    step: Any, repeats: int, max_seconds: float | None, device: torch.device
) -> tuple[list[float], PeakMemory]:
    """Run ``step()`` ``repeats`` times, or fewer once they have taken ``max_seconds`` in all
    (at least once); the wall seconds of each and the peak memory over them."""
    memory = PeakMemory(device)
    memory.reset()
    seconds: list[float] = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
        if max_seconds is not None and sum(seconds) >= max_seconds:
            break
    return seconds, memory


def measure_point(
    study: ScalingStudy, entry: MethodEntry, point: StudyPoint, device: torch.device
) -> dict[str, Any]:
    """Time ``timing.repeats`` steps of one method at one point; return the cost columns.

    Units: seconds, FLOPs (2 per multiply-add, the budget's tally), bytes; parameter counts are
    numbers of scalars (``parameter_count``: the dataset's default model, encoder and heads;
    ``shared_parameters``: its encoder; ``method_parameters``: the model as the method holds it).
    """
    from mtlbench.harness.gradients import get_engine
    from mtlbench.harness.trainer import seed_everything

    prepared = point_inputs(study, point, device)
    dataset, batch = prepared.dataset, prepared.batch
    taskset = type(dataset).taskset(dataset.params)
    method_cls = METHODS.get(entry.name)
    params = method_cls.expand(method_cls.Params.model_validate(entry.params), taskset)[0]
    method_cls.check(params, taskset)
    seed_everything(study.seed)
    model = dataset.build_model().to(device)
    shared = sum(p.numel() for p in model.shared_parameters())
    parameter_count = sum(p.numel() for p in model.parameters())
    method = method_cls(params, model, taskset, study.training)
    method.model.to(device)
    engine_name, options = engine_for(study, entry, point)
    budget = Budget("flops", UNLIMITED_FLOPS)
    engine = get_engine(engine_name)(method.model, taskset, budget, batch, **options)
    method.bind(engine)
    size = int(batch[0].shape[0])
    ew_step_flops = sum(engine.costs.flops(kind, size) for kind in EW_PASSES)
    timing = study.timing
    warm_started = time.perf_counter()
    for _ in range(timing.warmup):
        method.step(batch, engine)
        if timing.max_seconds and time.perf_counter() - warm_started >= timing.max_seconds:
            break
    flops_before = budget.spent_flops
    seconds, memory = _timed_steps(
        lambda: method.step(batch, engine), timing.repeats, timing.max_seconds, device
    )
    peak, above = memory.read()
    step_seconds = statistics.median(seconds)
    return {
        "engine": engine_name,
        "engine_options": json.dumps(options, sort_keys=True),
        "method_params": json.dumps(params.model_dump(mode="json"), sort_keys=True),
        "dataset": point.dataset,
        "dataset_params": json.dumps(dataset_params(study, point), sort_keys=True, default=str),
        "stand_in": prepared.stand_in,
        "stand_in_reason": prepared.stand_in_reason,
        "input_shape": json.dumps(list(batch[0].shape[1:])),
        "parameter_count": int(parameter_count),
        "task_count": len(taskset),
        "shared_parameters": int(shared),
        "method_parameters": int(sum(p.numel() for p in method.model.parameters())),
        "step_seconds": step_seconds,
        "step_seconds_repeats": seconds,
        "flops_per_step": (budget.spent_flops - flops_before) / len(seconds),
        "ew_step_flops": ew_step_flops,
        "samples_per_second": size / step_seconds if step_seconds > 0 else math.nan,
        "peak_memory_bytes": int(peak),
        "step_memory_bytes": int(above),
        "memory_measure": memory.measure,
    }


def hypervolume_point(
    study: ScalingStudy, entry: MethodEntry, point: StudyPoint, measured: dict[str, Any]
) -> dict[str, Any]:
    """A short trainer run at the study's fixed budget; its test hypervolume and outcome.

    measured: the point's :func:`measure_point` columns (its EW step FLOPs and method params).
    """
    from mtlbench.harness.suite import RunSpec
    from mtlbench.harness.trainer import train_run

    assert study.budget is not None
    if study.budget.flops is not None:
        budget_flops = study.budget.flops
    else:
        assert study.budget.ew_steps is not None
        budget_flops = study.budget.ew_steps * measured["ew_step_flops"]
    engine, options = engine_for(study, entry, point)
    spec = RunSpec(
        suite=study.name,
        method=entry.name,
        method_label=entry.label or entry.name,
        method_params=json.loads(measured["method_params"]),
        engine=engine,
        engine_options=options,
        dataset=point.dataset,
        dataset_params=dataset_params(study, point),
        seed=study.seed,
        budget_kind="flops",
        budget_limit=float(budget_flops),
        training=study.training.model_dump(mode="json"),
        scoring="final",
        device=study.device,
    )
    result = train_run(spec)
    return {
        "hv_budget_flops": float(budget_flops),
        "hypervolume": result.hypervolume.value if result.hypervolume else math.nan,
        "hv_steps": int(result.steps),
        "hv_status": result.status,
        "hv_error": result.error.splitlines()[0] if result.error else "",
    }
