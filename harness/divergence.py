"""Divergence of one run: the rule of :class:`~mtlbench.harness.method.DivergenceRule`, applied.

The trainer feeds a :class:`DivergenceWatch` the mean task loss of step 1 (before any update)
and then each logged row; the watch answers with the reason the run diverged, or None. A reason
is one line that names the rule and the numbers that broke it, recorded as the run's ``error``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from mtlbench.harness.gradients import Batch
from mtlbench.harness.method import DivergenceRule, Method
from mtlbench.harness.tasks import TaskSet

TASK_LOSS_PREFIX = "task_losses"
"""Logged row keys ``task_losses/<task>``: the per-task training losses a step returned."""


def mean_task_loss(row: dict[str, float]) -> float | None:
    """The mean of a logged row's ``task_losses/*`` entries (None if the step logged none)."""
    losses = [value for key, value in row.items() if key.startswith(TASK_LOSS_PREFIX)]
    return sum(losses) / len(losses) if losses else None


def non_finite_parameter(parameters: Iterable[torch.Tensor]) -> bool:
    """True if any entry of any tensor is NaN or ±inf (one host sync for all of them)."""
    flags = [torch.isfinite(p.detach()).all() for p in parameters if p.numel() > 0]
    return bool(flags) and not bool(torch.stack(flags).all())


class NonFiniteGradients(FloatingPointError):
    """A step met task gradients that are not finite (raised before any weight is solved for):
    the state has blown up, so the run is diverged whatever its loss reads."""


class DivergenceWatch:
    """The state of the rule over one run: the initial loss and the current run of high logs."""

    def __init__(self, rule: DivergenceRule):
        self.rule = rule
        self.initial_loss: float | None = None
        self.high_logs = 0  # consecutive logged steps above loss_ratio × initial_loss

    def set_initial(self, mean_loss: float | None) -> None:
        """Record the mean task loss of step 1 (the reference of the ratio rule)."""
        self.initial_loss = mean_loss

    @property
    def threshold(self) -> float | None:
        """The mean loss above which a log counts as high (None: the ratio rule is off)."""
        if self.rule.loss_ratio is None or self.initial_loss is None:
            return None
        if not (math.isfinite(self.initial_loss) and self.initial_loss > 0):
            return None
        return self.rule.loss_ratio * self.initial_loss

    def above_threshold(self, mean_loss: float) -> bool:
        threshold = self.threshold
        return threshold is not None and mean_loss > threshold

    def observe(
        self, step: int, row: dict[str, float], parameters: Iterable[torch.Tensor]
    ) -> str | None:
        """Apply the rule to the row logged at ``step``; the reason if the run diverged."""
        non_finite = sorted(
            key
            for key, value in row.items()
            if key.startswith(TASK_LOSS_PREFIX) and not math.isfinite(value)
        )
        if non_finite:
            return f"non-finite task loss at step {step} ({non_finite[0]})"
        if self.rule.check_parameters and non_finite_parameter(parameters):
            return f"non-finite parameters at step {step}"
        mean_loss = mean_task_loss(row)
        if mean_loss is None or not self.above_threshold(mean_loss):
            self.high_logs = 0
            return None
        self.high_logs += 1
        if self.high_logs < self.rule.consecutive_logs:
            return None
        return (
            f"mean task loss {mean_loss:.3g} above {self.rule.loss_ratio:g} x its initial value "
            f"{self.initial_loss:.3g} for {self.high_logs} consecutive logs (step {step})"
        )

    def explains_failure(self, mean_loss: float | None, error: BaseException) -> str | None:
        """The reason to record a method's exception as divergence: its training loss, measured
        after the failure, is above the ratio (or not finite). None: a plain failure."""
        if isinstance(error, NonFiniteGradients):
            return str(error) if mean_loss is None else f"{error} (mean task loss {mean_loss:.3g})"
        if mean_loss is None:
            return None
        if math.isfinite(mean_loss) and not self.above_threshold(mean_loss):
            return None
        first_line = str(error).splitlines()[0] if str(error) else ""
        return (
            f"mean task loss {mean_loss:.3g} (initial {self.initial_loss:.3g}) when the method "
            f"raised {type(error).__name__}: {first_line}"
        )


def trained_tensors(method: Method) -> list[torch.Tensor]:
    """The model's parameters and anything else the optimizer updates (UW's, FAMO's own)."""
    tensors: list[torch.Tensor] = list(method.model.parameters())
    seen = {id(t) for t in tensors}
    for group in getattr(method.optimizer, "param_groups", []):
        for tensor in group["params"]:
            if isinstance(tensor, torch.Tensor) and id(tensor) not in seen:
                tensors.append(tensor)
                seen.add(id(tensor))
    return tensors


@torch.no_grad()
def mean_loss_now(method: Method, taskset: TaskSet, batch: Batch) -> float | None:
    """The mean task loss of the method's first solution on ``batch`` (eval mode, uncharged);
    None if it cannot be measured (the state is too broken to run a forward)."""
    try:
        model = next(iter(method.solutions())).model
        was_training = model.training
        model.eval()
        inputs, targets = batch
        losses = taskset.per_sample_losses(model(inputs), targets).double().mean()
        model.train(was_training)
        return float(losses)
    except Exception:  # only a diagnosis of a failure already being recorded
        return None
