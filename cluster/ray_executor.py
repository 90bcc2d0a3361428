"""Suite executor ``ray``: each run is a Ray task with its own resources, results come back.

Registered as executor ``ray`` (the ``mtlbench.executors`` entry point names
:func:`suite_executor`). ``ray_executor(config)`` returns an
:data:`~mtlbench.harness.runner.Executor`: it connects to
``config.address`` (or ``RAY_ADDRESS``, or starts a local cluster), submits at most
``max_concurrent_runs`` runs at a time, each a task asking ``cpus_per_run`` CPUs and
``gpus_per_run`` GPUs, and yields each :class:`RunResult` as soon as it is done. Nothing is
written on the workers except checkpoints: the driver (``run_suite``) writes the Parquet rows and
the MLflow run, so a SQLite store has one writer.

A task whose worker dies (killed, out of memory, node lost or preempted) is retried by Ray up to
``executor.max_retries`` times (default 2; an exception raised by the
run itself is never retried: the run records it as ``failed``), and the retry resumes from the
run's last checkpoint under ``results_dir/checkpoints`` (``harness.checkpoints``), continuing the
same MLflow run. After the last retry the run comes back as a ``failed`` result carrying Ray's
error, and the suite goes on. Checkpoints are written to that path as the worker sees it: on a
multi-node cluster, ``results_dir`` must be on storage every node sees (a shared filesystem), or
a retry on another node starts from step 0.

Progress while runs train: each worker puts its run's :class:`RunProgress` reports (merged, at
most one every ``FORWARD_SECONDS``) on a Ray queue (``ray.util.queue.Queue``, an actor owned by
the driver); the driver drains it between waits and hands the reports to its monitor, which
writes the metric points to MLflow. Workers never touch the MLflow store. A report lost with a
dead worker costs nothing but liveness: the run's record, written from its result, carries every
point it measured.

Plugins (the suite's ``plugins``, ``--plugin``): each task imports them on its worker before it
looks a name up, from the folders the driver imported them from (put on the worker's
``sys.path``; on a multi-node cluster those folders must be on every node).
"""

from __future__ import annotations

import datetime
import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from mtlbench.cluster._ray_setup import connect
from mtlbench.harness.config import ExecutorConfig, SuiteConfig
from mtlbench.harness.plugins import PluginSource, import_on_worker, plugin_sources
from mtlbench.harness.progress import MetricPoint, RunProgress
from mtlbench.harness.runner import Executor, RunMonitor
from mtlbench.harness.suite import RunSpec
from mtlbench.harness.trainer import ProgressCallback, RunResult, environment, train_run
from ray.util.queue import Queue

RunFunction = Callable[[RunSpec, Path | None, ProgressCallback | None, str, bool], RunResult]
FORWARD_SECONDS = 1.0  # least time between two reports a worker sends to the driver
WAIT_SECONDS = 0.5  # the driver looks at the progress queue at least this often


class _Forwarder:
    """A worker's progress callback: merges reports, puts one on the queue every
    ``FORWARD_SECONDS`` as ``(run_hash, RunProgress)`` with every point since the last one."""

    def __init__(self, queue: Queue, run_hash: str):
        self.queue, self.run_hash = queue, run_hash
        self.points: list[MetricPoint] = []
        self.sent_at = -float("inf")

    def __call__(self, update: RunProgress) -> None:
        self.points += update.points
        if time.monotonic() - self.sent_at < FORWARD_SECONDS:
            return
        merged = RunProgress(
            update.step, update.fraction, update.elapsed_seconds, tuple(self.points)
        )
        try:
            self.queue.put_nowait((self.run_hash, merged))
        except Exception:  # any failure: a lost report must not fail the run it reports on
            return
        self.points, self.sent_at = [], time.monotonic()


@dataclass(frozen=True)
class _Recording:
    """Where a run's state goes: its checkpoint folder (as workers see it) and MLflow run id."""

    checkpoint_dir: str
    mlflow_run_id: str
    keep_checkpoints: bool = False
    plugins: tuple[PluginSource, ...] = ()  # imported on the worker before the run starts


def _run_on_worker(
    spec: RunSpec, recording: _Recording, threads: int, run: RunFunction, queue: Queue
) -> RunResult:
    """The body of one Ray task: train and score ``spec`` on this worker (from its checkpoint
    if it has one, after a retry), reporting to ``queue``."""
    torch.set_num_threads(threads)
    import_on_worker(recording.plugins)
    path = Path(recording.checkpoint_dir)
    forwarder = _Forwarder(queue, spec.run_hash)
    return run(spec, path, forwarder, recording.mlflow_run_id, recording.keep_checkpoints)


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


def suite_executor(suite: SuiteConfig) -> Executor:
    """Executor ``ray`` for ``suite``: its ``executor`` settings, checkpoint policy and plugins
    (already imported here by the suite's loading)."""
    return ray_executor(
        suite.executor,
        keep_checkpoints=suite.output.keep_checkpoints,
        plugins=plugin_sources(suite.plugins),
    )


def ray_executor(
    config: ExecutorConfig,
    run: RunFunction = train_run,
    keep_checkpoints: bool = False,
    plugins: tuple[PluginSource, ...] = (),
) -> Executor:
    """An executor running each spec as a Ray task (``run`` is the task body; tests swap it);
    keep_checkpoints: finished runs keep every checkpoint (``output.keep_checkpoints``);
    plugins: modules each task imports first (:func:`~mtlbench.harness.plugins.plugin_sources`).
    """

    def execute(
        specs: list[RunSpec], monitor: RunMonitor, results_dir: Path
    ) -> Generator[RunResult, None, None]:
        started_here = connect(config.address)
        retries = config.max_retries
        task = ray.remote(_run_on_worker).options(
            num_cpus=config.cpus_per_run, num_gpus=config.gpus_per_run, max_retries=retries
        )
        threads = max(1, int(config.cpus_per_run))
        checkpoints = (Path(results_dir) / "checkpoints").resolve()
        reports = Queue(actor_options={"num_cpus": 0})
        by_hash = {spec.run_hash: spec for spec in specs}

        def forward_reports() -> None:
            for run_hash, update in reports.get_nowait_batch(reports.qsize()):
                monitor.progressed(by_hash[run_hash], update)

        waiting = list(specs)
        pending: dict[ray.ObjectRef, RunSpec] = {}
        try:
            while waiting or pending:
                while waiting and len(pending) < config.max_concurrent_runs:
                    spec = waiting.pop(0)
                    recording = _Recording(
                        str(checkpoints / spec.run_hash),
                        monitor.started(spec) or "",
                        keep_checkpoints,
                        plugins,
                    )
                    pending[task.remote(spec, recording, threads, run, reports)] = spec
                done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SECONDS)
                forward_reports()  # before a result, so no report arrives after its record
                for ref in done:
                    spec = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as error:  # a lost run is recorded, the suite goes on
                        result = failed_result(spec, error)
                    yield result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            reports.shutdown(force=True)
            if started_here:
                ray.shutdown()

    return execute
