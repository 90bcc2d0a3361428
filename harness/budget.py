"""The compute budget of one run: every pass a gradient engine makes is charged here.

A budget is counted in FLOPs (``kind="flops"``) or wall seconds (``kind="seconds"``). FLOPs are
always tallied, whatever the kind, so a seconds-budgeted run still records its compute. A charge
that would overspend raises :class:`BudgetExhausted` *before* the pass runs: the spend never
exceeds the limit, and the trainer turns the exception into a clean end of training.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

BudgetKind = Literal["flops", "seconds"]


class BudgetExhausted(Exception):
    """Raised by :meth:`Budget.charge` when the next pass would exceed the budget.

    ``stop_reason`` is what the run records as its stop reason; a method that ends training
    itself with budget left (a subclass) names its own reason.
    """

    stop_reason = "budget"


@dataclass
class Budget:
    """kind: unit of ``limit``; limit: FLOPs or seconds (> 0)."""

    kind: BudgetKind
    limit: float
    spent_flops: float = 0.0
    flops_by_pass: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    passes_by_kind: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    started_at: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if not self.limit > 0:
            raise ValueError(f"budget limit must be > 0, got {self.limit}")

    def restart_clock(self) -> None:
        """Start counting seconds now (call after set-up, before the first step)."""
        self.started_at = time.perf_counter()

    @contextmanager
    def uncharged(self) -> Iterator[None]:
        """Wall time spent inside does not count toward a seconds budget (evaluation)."""
        paused_at = time.perf_counter()
        try:
            yield
        finally:
            self.started_at += time.perf_counter() - paused_at

    @property
    def elapsed_seconds(self) -> float:
        return time.perf_counter() - self.started_at

    def charge(self, kind: str, flops: float, passes: int = 1) -> None:
        """Charge ``flops`` for ``passes`` passes of ``kind`` (e.g. "encoder_backward").

        Raises BudgetExhausted (and charges nothing) if the budget cannot cover it.
        """
        if self.kind == "flops" and self.spent_flops + flops > self.limit:
            raise BudgetExhausted(f"{kind} needs {flops:.3g} FLOPs, {self.remaining:.3g} left")
        if self.kind == "seconds" and self.elapsed_seconds > self.limit:
            raise BudgetExhausted(f"{self.elapsed_seconds:.1f} s spent of {self.limit:.1f} s")
        self.spent_flops += flops
        self.flops_by_pass[kind] += flops
        self.passes_by_kind[kind] += passes

    @property
    def spent(self) -> float:
        """Spend in the budget's own unit."""
        return self.spent_flops if self.kind == "flops" else self.elapsed_seconds

    @property
    def remaining(self) -> float:
        return max(self.limit - self.spent, 0.0)

    @property
    def fraction_spent(self) -> float:
        return min(self.spent / self.limit, 1.0)

    def state_dict(self) -> dict[str, object]:
        """The spend, for a checkpoint: FLOPs (total, per pass kind), passes, clock seconds."""
        return {
            "spent_flops": self.spent_flops,
            "flops_by_pass": dict(self.flops_by_pass),
            "passes_by_kind": dict(self.passes_by_kind),
            "elapsed_seconds": self.elapsed_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the spend of :meth:`state_dict` (a seconds budget's clock included)."""
        self.spent_flops = float(state["spent_flops"])
        self.flops_by_pass = defaultdict(float, state["flops_by_pass"])
        self.passes_by_kind = defaultdict(int, state["passes_by_kind"])
        self.started_at = time.perf_counter() - float(state["elapsed_seconds"])

    def summary(self) -> dict[str, float]:
        """Flat record of the spend: totals and FLOPs per pass kind."""
        record = {
            "budget_spent": self.spent,
            "budget_spent_flops": self.spent_flops,
            "budget_fraction_spent": self.fraction_spent,
        }
        for kind, flops in sorted(self.flops_by_pass.items()):
            record[f"flops_{kind}"] = flops
        return record


def require_counted_step(budget: Budget, step_flops: float, what: str) -> None:
    """Refuse a FLOP budget that could never end a run: ``step_flops`` is what one training step
    of ``what`` (a model) measures (``harness.costs``: the matrix rule, else the element-wise
    rule). When it is 0 the run would go on unbudgeted, so this raises ``ConfigError`` (one line,
    with the advice to use a seconds budget). Seconds budgets always end."""
    if budget.kind == "flops" and not step_flops > 0:
        from mtlbench.harness.config import ConfigError  # config imports the engines: lazily

        raise ConfigError(
            f"{what}: a training step measures 0 FLOPs (no counted operation), so a FLOP budget "
            "would never end the run; use a seconds budget (budget: {seconds: ...})"
        )
