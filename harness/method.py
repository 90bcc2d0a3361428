"""The method contract: a training algorithm that plugs into the trainer.

A method owns the module it trains (``self.model``, which it may wrap, e.g. PML's ensemble); the
trainer owns data, budget, evaluation and records, and, with the engine, the optimizer:
``bind(engine)`` builds it from the training protocol over ``optimizer_parameters()`` and lets
the engine wrap it (DeepSpeed's ZeRO optimizer holds the gradient partitions). ``step`` asks the
gradient engine for every gradient, so the budget sees every pass.

Methods that only decide task weights derive from the two bases of ``harness.weighting``
(Gram weightings, loss weightings); ``Method`` itself stays for algorithms whose step differs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

import torch
from mtlbench.harness.gradients import Batch, GradientEngine
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

StepLog = dict[str, Tensor]


class MethodParams(BaseModel):
    """Base of every method's typed parameters; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DivergenceRule(BaseModel):
    """When a run counts as diverged (checked every ``log_every`` steps; recorded with its reason).

    A run diverges at the first of: a non-finite task loss; a non-finite trained parameter (if
    ``check_parameters``); the mean task loss above ``loss_ratio`` × its value at step 1 (the loss
    before any update) for ``consecutive_logs`` logged steps in a row. The ratio rule applies only
    when that initial mean loss is > 0, and is off with ``loss_ratio: null``. A method that raises
    while its mean training loss is above the ratio (re-measured on the current batch) is also
    recorded ``diverged``: the failure is the blow-up's consequence.

    The mean over tasks, not each task's loss: a trade-off may raise one task's loss many times
    over (a task started near its optimum), never the mean of all by a factor of 100.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    loss_ratio: float | None = Field(100.0, gt=1)
    consecutive_logs: int = Field(3, ge=1)
    check_parameters: bool = True


class TrainingConfig(BaseModel):
    """Optimisation settings shared by every method of a suite (one fair protocol).

    batch_size: samples per step. lr: learning rate. optimizer: ``adam`` | ``sgd``.
    max_steps: hard cap on steps (the budget normally ends training first).
    log_every: steps between recorded training metrics (and divergence checks).
    eval_every: steps between validation evaluations (used by ``scoring: best_val``).
    checkpoint_every: steps between checkpoints on disk; 0 (the default): one every 10 minutes
    of wall time (``harness.checkpoints.DEFAULT_CHECKPOINT_SECONDS``), and one when training
    ends. A run that finds its checkpoint continues from it (``harness.checkpoints``).
    divergence: the rule that ends a run as ``diverged`` (:class:`DivergenceRule`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(128, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_steps: int = Field(100_000, gt=0)
    log_every: int = Field(10, gt=0)
    eval_every: int = Field(100, gt=0)
    checkpoint_every: int = Field(0, ge=0)
    divergence: DivergenceRule = DivergenceRule()


def make_optimizer(params: Any, training: TrainingConfig) -> torch.optim.Optimizer:
    if training.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=training.lr, momentum=training.momentum, weight_decay=training.weight_decay
        )
    return torch.optim.Adam(params, lr=training.lr, weight_decay=training.weight_decay)


ParamsT = TypeVar("ParamsT", bound=MethodParams)


@dataclass
class Solution:
    """One parameter set to evaluate.

    label: stable name within the run (e.g. ``"model"``, ``"alpha=0.30,0.70"``).
    model: maps inputs to outputs like a MultiTaskModel; evaluated in eval mode, no grad.
    coordinates: the preference or simplex point that produced it, if any (length T).
    """

    label: str
    model: nn.Module
    coordinates: tuple[float, ...] | None = None


class Method(ABC, Generic[ParamsT]):
    """Base class. Subclasses set ``Params`` and implement ``step``.

    Generic in its parameter type: ``class MGDA(GramWeighting[MGDAParams])`` makes
    ``self.params`` an ``MGDAParams`` for a type checker.

    Class attributes: ``Params`` (pydantic model of the method's parameters), ``default_engine``
    (engine name used when the suite names none), ``produces_weights`` (``step`` logs a
    ``"weights"`` entry (T,)), ``weights_on_simplex`` (those weights are non-negative and sum to
    1; the shared property tests check both), ``is_baseline`` (its runs are the reference of
    Δm%, not a competitor), ``engines`` (the engines it runs on; None: all, checked when the
    suite is loaded), ``consumes`` and ``cost`` (what a step needs from the engine and what
    it costs, for ``mtlbench info`` and the leaderboard), ``paper`` (the citation).
    """

    Params: ClassVar[type[MethodParams]] = MethodParams
    default_engine: ClassVar[str] = "loop"
    produces_weights: ClassVar[bool] = False
    weights_on_simplex: ClassVar[bool] = False
    is_baseline: ClassVar[bool] = False
    consumes: ClassVar[str] = ""
    cost: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    engines: ClassVar[tuple[str, ...] | None] = None  # None: every engine
    registry_name: ClassVar[str] = ""

    def __init__(
        self,
        params: ParamsT,
        model: MultiTaskModel,
        taskset: TaskSet,
        training: TrainingConfig,
    ):
        self.params: ParamsT = params
        self.model = model
        self.taskset = taskset
        self.training = training
        self.steps_per_epoch: int | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    # ---- the optimizer: built by the trainer, wrapped by the engine --------------------------
    def optimizer_parameters(self) -> Any:
        """What the run's optimizer updates (parameters or param groups): the model's."""
        return self.model.parameters()

    def bind(self, engine: GradientEngine, steps_per_epoch: int | None = None) -> None:
        """Build the optimizer from the training protocol and let ``engine`` wrap it; the trainer
        calls this once, before step 1. ``steps_per_epoch`` lets epoch-based rules (DWA, STCH's
        warm-up) know what an epoch is."""
        self.steps_per_epoch = steps_per_epoch
        self._optimizer = engine.wrap_optimizer(
            make_optimizer(self.optimizer_parameters(), self.training)
        )

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The bound optimizer; a method stepped without ``bind`` (a test driving it by hand)
        gets the plain optimizer a local engine would give, built on first use."""
        if self._optimizer is None:
            self._optimizer = make_optimizer(self.optimizer_parameters(), self.training)
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer

    @classmethod
    def check(cls, params: ParamsT, taskset: TaskSet) -> None:
        """Raise ValueError if ``params`` cannot work with these tasks (called at suite load)."""

    @classmethod
    def expand(cls, params: ParamsT, taskset: TaskSet) -> list[ParamsT]:
        """The runs one suite entry stands for (``single_task`` expands to one per task)."""
        return [params]

    @abstractmethod
    def step(self, batch: Batch, engine: GradientEngine) -> StepLog:
        """Advance training by one step; return tensors to log (no host sync required)."""

    def solutions(self) -> Iterator[Solution]:
        """The parameter sets to evaluate; evaluated one at a time, in order."""
        yield Solution("model", self.model)

    def report(self) -> dict[str, float | str]:
        """What the method has to say about its run when training ends (recorded in the run's
        ``engine_stats`` as ``method.<key>``); e.g. why a front exploration stopped."""
        return {}

    # ---- checkpoints -------------------------------------------------------------------------
    def weighting_state(self) -> dict[str, Any]:
        """The method's own state beyond model and optimizer (EMAs, warm starts, generators)."""
        return {}

    def load_weighting_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`weighting_state` returned."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "weighting": self.weighting_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_weighting_state(state.get("weighting", {}))
