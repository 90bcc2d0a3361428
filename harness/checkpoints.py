"""Checkpoints of one run: what is written, when, how it is read back, and what is kept.

A run's checkpoints are ``<results_dir>/checkpoints/<run_hash>/step_<step:08d>.pt`` (a
``torch.save`` of everything that decides the run's numbers: :func:`snapshot`) and, written after
it, ``step_<step:08d>.json`` (the sidecar that ``mtlbench status`` reads without loading torch
files): {"step", "budget_kind", "budget_limit", "budget_spent" (in the budget's unit),
"max_steps", "mlflow_run_id", "written_at" (ISO-8601 UTC)}. Both are written to a temporary file
and renamed, so a reader never sees half a file; a checkpoint counts only when both exist, the
JSON parses and the .pt loads. A damaged one is skipped with a one-line warning on stderr and the
previous one is used.

When: every ``training.checkpoint_every`` steps, or, when that is 0 (the default), every
:data:`DEFAULT_CHECKPOINT_SECONDS` of wall time (10 minutes: a preempted GPU job loses at most
that, and a checkpoint of a ResNet-sized run, a few hundred MB, is written at most six times an
hour), and once when training ends. A finished run keeps only its last checkpoint.

Resuming is bit for bit on CPU: the snapshot holds the model, optimizer and method state
(``Method.state_dict``), every RNG stream (Python, NumPy, torch CPU and CUDA), the data order and
position (:class:`~mtlbench.harness.data.TrainingBatches`), the budget spent (total, per pass,
and a seconds budget's clock), the divergence watch, ``best_val`` state, and what the run has
recorded so far (training history, evaluations, metric points, timings).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from mtlbench.harness.budget import Budget
    from mtlbench.harness.data import TrainingBatches
    from mtlbench.harness.divergence import DivergenceWatch
    from mtlbench.harness.method import Method
    from mtlbench.harness.run_result import RunResult
    from mtlbench.harness.suite import RunSpec

DEFAULT_CHECKPOINT_SECONDS = 600.0


@dataclass
class LoopState:
    """The training loop's own variables: the step done, ``best_val`` (hypervolume, method state,
    step) and the last evaluation (solutions, validation hypervolume)."""

    step: int = 0
    best_val_hv: float = -math.inf
    best_state: dict[str, Any] | None = None
    best_step: int = 0
    last_evaluation: tuple[list[Any], float] | None = None
    loop_seconds: float = 0.0  # wall seconds in the loop (training + evaluation) before now
    wall_seconds: float = 0.0  # the run's wall seconds before now (earlier processes included)
    resumed_from_steps: list[int] = field(default_factory=list)  # earlier resumes' steps
    stop_reason: str = ""  # set in the final checkpoint: training has ended, for this reason


def capture_rng() -> dict[str, Any]:
    """Every global RNG stream: Python, NumPy, torch CPU and (if present) each CUDA device."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def snapshot(
    loop: LoopState,
    method: Method,
    batches: TrainingBatches,
    budget: Budget,
    watch: DivergenceWatch,
    result: RunResult,
    mlflow_run_id: str,
) -> dict[str, Any]:
    """Everything :func:`restore` needs to continue the run after ``loop.step``."""
    return {
        "step": loop.step,
        "loop": loop,
        "method": method.state_dict(),
        "rng": capture_rng(),
        "data": batches.state_dict(),
        "budget": budget.state_dict(),
        "watch": {"initial_loss": watch.initial_loss, "high_logs": watch.high_logs},
        "result": {
            "history": result.history,
            "evaluations": result.evaluations,
            "metric_points": result.metric_points,
            "evaluation_seconds": result.evaluation_seconds,
        },
        "mlflow_run_id": mlflow_run_id,
    }


def restore(
    payload: dict[str, Any],
    method: Method,
    batches: TrainingBatches,
    budget: Budget,
    watch: DivergenceWatch,
    result: RunResult,
) -> LoopState:
    """Put a :func:`snapshot` back into freshly built run objects; returns the loop state."""
    method.load_state_dict(payload["method"])
    batches.load_state_dict(payload["data"])
    budget.load_state_dict(payload["budget"])
    watch.initial_loss = payload["watch"]["initial_loss"]
    watch.high_logs = payload["watch"]["high_logs"]
    recorded = payload["result"]
    result.history = list(recorded["history"])
    result.evaluations = list(recorded["evaluations"])
    result.metric_points = list(recorded["metric_points"])
    result.evaluation_seconds = float(recorded["evaluation_seconds"])
    restore_rng(payload["rng"])  # last: loading states above must not move a stream
    return payload["loop"]


def _write_atomically(target: Path, write: Any) -> None:
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    write(temporary)
    os.replace(temporary, target)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass
class RunCheckpoints:
    """The checkpoints of one run in ``directory``.

    every_steps: steps between checkpoints (0: by wall time, every ``every_seconds``).
    budget_kind, budget_limit, max_steps, mlflow_run_id: copied into each sidecar.
    keep_all: a finished run keeps every checkpoint (``output.keep_checkpoints``), not its last.
    """

    directory: Path
    every_steps: int
    budget_kind: str
    budget_limit: float
    max_steps: int
    mlflow_run_id: str = ""
    keep_all: bool = False
    every_seconds: float = DEFAULT_CHECKPOINT_SECONDS
    _last_written: float = field(default_factory=time.monotonic)

    @classmethod
    def of_run(
        cls, directory: Path, spec: RunSpec, mlflow_run_id: str = "", keep_all: bool = False
    ) -> RunCheckpoints:
        """The checkpoints of ``spec`` in ``directory``, at its training protocol's cadence."""
        from mtlbench.harness.method import TrainingConfig

        training = TrainingConfig.model_validate(spec.training)
        return cls(
            directory,
            training.checkpoint_every,
            spec.budget_kind,
            spec.budget_limit,
            training.max_steps,
            mlflow_run_id,
            keep_all,
        )

    def due(self, step: int) -> bool:
        if self.every_steps:
            return step % self.every_steps == 0
        return time.monotonic() - self._last_written >= self.every_seconds

    def write(self, step: int, payload: dict[str, Any], budget_spent: float) -> Path:
        """Write ``payload`` as step ``step``'s checkpoint (.pt, then its .json sidecar)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / f"step_{step:08d}.pt"
        _write_atomically(target, lambda path: torch.save(payload, path))
        sidecar = {
            "step": step,
            "budget_kind": self.budget_kind,
            "budget_limit": self.budget_limit,
            "budget_spent": budget_spent,
            "max_steps": self.max_steps,
            "mlflow_run_id": self.mlflow_run_id,
            "hostname": platform.node(),
            "pid": os.getpid(),  # the process that wrote it (a Ray worker, the CLI)
            "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        text = json.dumps(sidecar)
        _write_atomically(target.with_suffix(".json"), lambda path: path.write_text(text))
        self._last_written = time.monotonic()
        return target

    def latest(self) -> dict[str, Any] | None:
        """The newest checkpoint that loads (damaged ones skipped with a warning), or None."""
        for sidecar in reversed(checkpoint_sidecars(self.directory)):
            path = self.directory / f"step_{sidecar['step']:08d}.pt"
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except Exception as error:  # any damage: fall back to the previous one
                _warn(f"skipping damaged checkpoint {path}: {type(error).__name__}: {error}")
        return None

    def prune(self, keep_step: int | None = None) -> None:
        """Delete every checkpoint but step ``keep_step`` (default: the newest valid one), and
        the temporary files of writes that a kill interrupted. With ``keep_all``, only those."""
        for temporary in self.directory.glob(".step_*.tmp"):  # left by a killed writer
            temporary.unlink(missing_ok=True)
        if self.keep_all:
            return
        if keep_step is None:
            valid = checkpoint_sidecars(self.directory, warn=False)
            keep_step = valid[-1]["step"] if valid else None
        for path in sorted(self.directory.glob("step_*.*")):
            if keep_step is None or path.stem != f"step_{keep_step:08d}":
                path.unlink(missing_ok=True)


def checkpoint_sidecars(directory: Path, warn: bool = True) -> list[dict[str, Any]]:
    """The parsed sidecars of ``directory``'s complete checkpoints (both files present, the JSON
    parses), oldest first; a .pt without a readable sidecar is skipped (with a warning)."""
    found = []
    for pt in sorted(Path(directory).glob("step_*.pt")):
        sidecar_path = pt.with_suffix(".json")
        try:
            sidecar = json.loads(sidecar_path.read_text())
            int(sidecar["step"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            if warn:
                _warn(f"skipping checkpoint {pt}: no valid sidecar ({type(error).__name__})")
            continue
        found.append(sidecar)
    return sorted(found, key=lambda sidecar: int(sidecar["step"]))
