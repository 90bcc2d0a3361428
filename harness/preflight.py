"""Pre-flight: what a suite asks of this machine, checked once at load, before any run starts.

:mod:`mtlbench.harness.config` checks what the suite alone decides; this module checks what
depends on where it runs:

- ``device: cuda`` needs a CUDA device here, unless the runs go to a remote Ray cluster (its
  workers have the GPUs, not this driver);
- a FLOP budget must pay for at least one training step of every dataset's default model
  (else each run would end "completed" before its first update: an untrained model). One step
  is the cheapest any method makes: one forward (encoder and heads) and one weighted backward
  over a training batch, measured exactly as the trainer's engine charges it (the ``loop``
  engine's calibration, FlopCounterMode). A dataset whose files are missing is skipped here: it
  fails on its own with a line naming the file.

Errors are :class:`~mtlbench.harness.config.ConfigError`: one line naming the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from mtlbench.harness.budget import Budget
from mtlbench.harness.config import ConfigError, DatasetEntry, SuiteConfig
from mtlbench.harness.data import sample_count
from mtlbench.harness.dataset import DatasetFileError
from mtlbench.harness.gradients import GradientEngine
from mtlbench.harness.registry import DATASETS
from torch.utils.data import Dataset, default_collate

# The passes of one forward and one weighted backward, as ``GradientEngine`` names and charges them.
STEP_PASSES = ("encoder_forward", "heads_forward", "heads_backward", "encoder_backward")
# Samples the step is measured on: FLOPs of the counted operations are linear in the batch size.
MEASURED_SAMPLES = 4


@dataclass(frozen=True)
class StepCost:
    """FLOPs of one training step (forward + backward) of a dataset's default model.

    flops_per_sample: FLOPs per training sample; batch_size: samples in the first batch (the
    suite's batch size, or the whole training split when it is smaller).
    """

    dataset: str
    flops_per_sample: float
    batch_size: int

    @property
    def flops(self) -> float:
        return self.flops_per_sample * self.batch_size


def _runs_remotely(suite: SuiteConfig, executor_kind: str | None) -> bool:
    """Whether the runs execute on a Ray cluster elsewhere (an address other than local)."""
    if (executor_kind or suite.executor.kind) != "ray":
        return False
    address = suite.executor.address or os.environ.get("RAY_ADDRESS")
    return address not in (None, "", "local")


def check_device(suite: SuiteConfig, executor_kind: str | None = None) -> None:
    """Refuse ``device: cuda`` where the runs would execute without CUDA."""
    if suite.device != "cuda" or _runs_remotely(suite, executor_kind):
        return
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU build"
        raise ConfigError(
            f"device: 'cuda', but this machine has no usable CUDA device (torch "
            f"{torch.__version__}, {built}); use 'cpu' or 'auto'"
        )


def _first_samples(split: Dataset, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` (inputs, targets) of a split, collated as the trainer's batches are."""
    return default_collate([split[index] for index in range(count)])


def measure_step(entry: DatasetEntry, batch_size: int) -> StepCost | None:
    """FLOPs of one training step of ``entry``'s default model on the CPU; None when the
    dataset's files are missing. The global RNGs are left as they were."""
    dataset_cls = DATASETS.get(entry.name)
    dataset = dataset_cls(dataset_cls.Params.model_validate(entry.params))
    try:
        splits = dataset.load()
    except DatasetFileError:
        return None
    train_size = sample_count(splits.train)
    calibration = _first_samples(splits.train, min(MEASURED_SAMPLES, train_size))
    with torch.random.fork_rng(devices=[]):
        model = dataset.build_model()
        engine = GradientEngine(
            model, dataset.taskset(dataset.params), Budget("flops", 1.0), calibration
        )
    per_sample = sum(engine.costs.per_sample[kind] for kind in STEP_PASSES)
    return StepCost(entry.name, per_sample, min(batch_size, train_size))


def check_budget(suite: SuiteConfig) -> list[StepCost]:
    """Refuse a FLOP budget below one training step of any of the suite's datasets; return the
    step costs measured (empty for a seconds budget)."""
    if suite.budget.flops is None:
        return []
    costs = []
    for index, entry in enumerate(suite.datasets):
        cost = measure_step(entry, suite.training.batch_size)
        if cost is None:
            continue
        if suite.budget.flops < cost.flops:
            raise ConfigError(
                f"budget.flops: {suite.budget.flops:.4g} does not pay for one training step of "
                f"datasets[{index}] ({entry.name!r}): {cost.flops:.4g} FLOPs (forward and "
                f"backward of its default model on a batch of {cost.batch_size})"
            )
        costs.append(cost)
    return costs


def preflight(suite: SuiteConfig, executor_kind: str | None = None, source: str = "") -> None:
    """Every machine-dependent check of ``suite`` (``executor_kind`` overrides the suite's);
    ``source`` (the suite file) prefixes the error line."""
    try:
        check_device(suite, executor_kind)
        check_budget(suite)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}" if source else str(error)) from None
