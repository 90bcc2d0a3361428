"""Suite executor ``ray``: each run is a Ray task with its own resources, results come back.

``ray_executor(config)`` returns an :data:`~mtlbench.harness.runner.Executor`: it connects to
``config.address`` (or ``RAY_ADDRESS``, or starts a local cluster), submits at most
``max_concurrent_runs`` runs at a time, each a task asking ``cpus_per_run`` CPUs and
``gpus_per_run`` GPUs, and yields each :class:`RunResult` as soon as it is done. Nothing is
written on the workers except checkpoints: the driver (``run_suite``) writes the Parquet rows and
the MLflow run, so a SQLite store has one writer.

A task that dies with its worker (killed, out of memory, node lost) comes back as a ``failed``
result carrying Ray's error, and the suite goes on; Ray does not retry it (``max_retries=0``)
because a rerun of the suite retries failed runs anyway, and a run that kills its worker would
otherwise be tried again and again. Checkpoints are written under ``results_dir/checkpoints`` as
the worker sees that path: on a multi-node cluster, put ``results_dir`` on a shared filesystem to
keep them.
"""

from __future__ import annotations

import datetime
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import ray
import torch
from mtlbench.cluster._ray_setup import connect
from mtlbench.harness.config import ExecutorConfig
from mtlbench.harness.runner import Executor, StartCallback
from mtlbench.harness.suite import RunSpec
from mtlbench.harness.trainer import RunResult, environment, train_run
from rich.progress import Progress

RunFunction = Callable[[RunSpec, Path | None], RunResult]


def _run_on_worker(
    spec: RunSpec, checkpoint_dir: str | None, threads: int, run: RunFunction
) -> RunResult:
    """The body of one Ray task: train and score ``spec`` on this worker."""
    torch.set_num_threads(threads)
    return run(spec, Path(checkpoint_dir) if checkpoint_dir else None)


def failed_result(spec: RunSpec, error: BaseException) -> RunResult:
    """The record of a run whose task never returned (its worker died, or Ray failed it)."""
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    text = f"{type(error).__name__}: {error}"
    if not isinstance(error, ray.exceptions.RayError):
        text += "\n" + "".join(traceback.format_exception(error, limit=8))
    return RunResult(
        spec,
        status="failed",
        stop_reason="error",
        error=text,
        started_at=started,
        environment=environment(torch.device("cpu")),
    )


def ray_executor(config: ExecutorConfig, run: RunFunction = train_run) -> Executor:
    """An executor running each spec as a Ray task (``run`` is the task body; tests swap it)."""

    def execute(
        specs: list[RunSpec], on_start: StartCallback, progress: Progress | None, results_dir: Path
    ) -> Iterator[RunResult]:
        started_here = connect(config.address)
        task = ray.remote(_run_on_worker).options(
            num_cpus=config.cpus_per_run, num_gpus=config.gpus_per_run, max_retries=0
        )
        threads = max(1, int(config.cpus_per_run))
        checkpoints = (Path(results_dir) / "checkpoints").resolve()
        queue = list(specs)
        pending: dict[ray.ObjectRef, tuple[RunSpec, object]] = {}
        try:
            while queue or pending:
                while queue and len(pending) < config.max_concurrent_runs:
                    spec = queue.pop(0)
                    on_start(spec)
                    ref = task.remote(spec, str(checkpoints / spec.run_hash), threads, run)
                    bar = (
                        progress.add_task(f"  {spec.title} (ray)", total=None) if progress else None
                    )
                    pending[ref] = (spec, bar)
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    spec, bar = pending.pop(ref)
                    if progress is not None and bar is not None:
                        progress.remove_task(bar)
                    try:
                        result = ray.get(ref)
                    except Exception as error:  # noqa: BLE001 - a lost run is recorded, the suite goes on
                        result = failed_result(spec, error)
                    yield result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()

    return execute
