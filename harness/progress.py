"""Progress of a suite: what a run reports while it trains, and how the driver shows it.

A training run reports :class:`RunProgress` objects (steps done, fraction of its budget spent,
seconds since training started, and the MLflow metric points measured since its last report,
each stamped with the wall-clock time it was measured). The driver forwards the points to MLflow
(``Tracker.log_progress``) and shows the progress with :class:`SuiteProgress`: bars on a
terminal, else one line every ``report_seconds`` (cluster logs show life), each with an ETA.

ETA of a run: its elapsed seconds × (1 − f) / f, f the fraction of the budget spent (or of
``max_steps`` done, whichever is larger): the remaining budget at the rate it has been spent
so far, evaluations included.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

if TYPE_CHECKING:
    from mtlbench.harness.run_result import RunResult
    from mtlbench.harness.suite import RunSpec


@dataclass(frozen=True)
class MetricPoint:
    """One MLflow metric point. timestamp_ms: Unix time in milliseconds when it was measured;
    step: training step (``train.*``) or FLOPs spent (``anytime.*``)."""

    key: str
    value: float
    timestamp_ms: int
    step: int


def now_ms() -> int:
    """The current Unix time in milliseconds (MLflow's timestamp unit)."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class RunProgress:
    """One report of a run in flight.

    step: steps done; fraction: of the budget spent or of max_steps done (the larger), in
    [0, 1]; elapsed_seconds: wall seconds since training started; points: metric points
    measured since the previous report.
    """

    step: int
    fraction: float
    elapsed_seconds: float
    points: tuple[MetricPoint, ...] = ()

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the rate the budget has been spent so far (None before any spend)."""
        if self.fraction <= 0 or self.elapsed_seconds <= 0:
            return None
        return self.elapsed_seconds * (1 - self.fraction) / self.fraction


def format_seconds(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``12s``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class _RunState:
    title: str
    progress: RunProgress | None = None
    bar: TaskID | None = None


@dataclass
class SuiteProgress:
    """The console view of a suite in flight.

    With ``bars`` a rich progress bar per run and one for the suite; otherwise a background
    thread prints :meth:`line` every ``report_seconds``. Use as a context manager.
    """

    console: Console
    suite_name: str
    total_runs: int
    bars: bool
    report_seconds: float = 60.0
    statuses: dict[str, int] = field(default_factory=dict)
    _running: dict[str, _RunState] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _bars: Progress | None = None
    _overall: TaskID | None = None

    def __enter__(self) -> Self:
        if self.bars:
            self._bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                console=self.console,
                transient=False,
            )
            self._bars.start()
            self._overall = self._bars.add_task(
                f"suite {self.suite_name}", total=self.total_runs, eta=""
            )
        elif self.report_seconds > 0:
            self._thread = threading.Thread(target=self._report, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bars is not None:
            self._bars.stop()

    def _report(self) -> None:
        while not self._stop.wait(self.report_seconds):
            self.console.print(self.line(), markup=False, highlight=False, soft_wrap=True)

    @property
    def recorded(self) -> int:
        return sum(self.statuses.values())

    def run_started(self, spec: RunSpec) -> None:
        with self._lock:
            state = _RunState(spec.title)
            if self._bars is not None:
                state.bar = self._bars.add_task(f"  {spec.title}", total=1.0, eta="")
            self._running[spec.run_hash] = state

    def run_progressed(self, spec: RunSpec, update: RunProgress) -> None:
        with self._lock:
            state = self._running.get(spec.run_hash)
            if state is None:  # a late report of a run already recorded
                return
            state.progress = update
            if self._bars is not None and state.bar is not None:
                self._bars.update(
                    state.bar,
                    completed=update.fraction,
                    description=f"  {spec.title} step {update.step}",
                    eta=f"ETA {format_seconds(update.eta_seconds)}",
                )

    def run_finished(self, result: RunResult) -> None:
        with self._lock:
            self.statuses[result.status] = self.statuses.get(result.status, 0) + 1
            state = self._running.pop(result.spec.run_hash, None)
            if self._bars is not None:
                if state is not None and state.bar is not None:
                    self._bars.remove_task(state.bar)
                if self._overall is not None:
                    self._bars.advance(self._overall)

    def counts_text(self) -> str:
        """``2 completed, 1 diverged`` (or ``none``)."""
        return ", ".join(f"{n} {status}" for status, n in sorted(self.statuses.items())) or "none"

    def line(self) -> str:
        """One line: the time, runs recorded of the total, and each run in flight with its
        step, budget fraction and ETA."""
        with self._lock:
            running = []
            for state in self._running.values():
                update = state.progress
                if update is None:
                    running.append(f"{state.title} starting")
                    continue
                running.append(
                    f"{state.title} step {update.step}, {100 * update.fraction:.0f}% of budget, "
                    f"ETA {format_seconds(update.eta_seconds)}"
                )
            head = (
                f"{time.strftime('%H:%M:%S')} suite {self.suite_name}: "
                f"{self.recorded}/{self.total_runs} runs recorded ({self.counts_text()})"
            )
        return head + ("; running: " + "; ".join(running) if running else "")
