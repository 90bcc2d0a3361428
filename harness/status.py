"""Where a suite stands: each of its runs done, running, resumable, failed or not started.

:func:`suite_status` reads three things and writes none of them (nor creates anything: not the
results folder, not ``mlflow.db``, not a quarantine file):

- the run table, ``<results_dir>/runs/<run_hash>.parquet`` (statuses completed / diverged /
  failed), one file at a time; a file that cannot be read is one warning line, not a move to
  the quarantine folder as :class:`~mtlbench.harness.store.ResultStore` would do;
- the checkpoints, ``<results_dir>/checkpoints/<run_hash>/step_<step:08d>.pt``, each with its
  JSON sidecar ``step_<step:08d>.json`` (:data:`SIDECAR_FIELDS`); a checkpoint counts only when
  both files exist and the sidecar parses with every field;
- the MLflow store: child runs tagged ``mtlbench.run_hash`` whose status is RUNNING. A SQLite
  store is opened read-only (``mode=ro``) and skipped when its file is absent; a server
  (``http(s)://``) gets search queries only.

A run's state, first match wins: ``done`` (a completed or diverged record), ``running`` (an
MLflow run RUNNING: its driver is training it, or died without marking it KILLED, which the next
``mtlbench run`` does; when the newest checkpoint's sidecar names a process of this machine
that has ended, the run is ``resumable`` instead), ``failed`` (a failed record, with its
one-line error), ``resumable`` (a valid checkpoint at step k; the total is estimated from the
budget spent at step k), ``not started``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sqlite3
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mtlbench.harness.config import ConfigError, SuiteConfig
from mtlbench.harness.store import FINAL_STATUSES
from mtlbench.harness.suite import RunSpec, expand_suite
from mtlbench.harness.tracking import RUN_HASH_TAG

STATES = ("done", "running", "resumable", "failed", "not started")  # display order
SIDECAR_FIELDS: dict[str, type | tuple[type, ...]] = {
    "step": int,
    "budget_kind": str,
    "budget_limit": (int, float),
    "budget_spent": (int, float),
    "max_steps": int,
    "mlflow_run_id": str,
    "written_at": str,
}


@dataclass(frozen=True)
class Checkpoint:
    """The newest valid checkpoint of a run, as its sidecar describes it.

    budget_spent and budget_limit are in the budget's unit (FLOPs or seconds, ``budget_kind``);
    written_at is an ISO-8601 UTC time."""

    step: int
    budget_kind: str
    budget_limit: float
    budget_spent: float
    max_steps: int
    mlflow_run_id: str
    written_at: str
    hostname: str = ""  # optional sidecar fields: the machine and process that wrote it
    pid: int | None = None

    def writer_has_ended(self) -> bool:
        """Whether the process that wrote this checkpoint is known to have ended: it ran on
        this machine (``hostname``) and no process ``pid`` exists here any more. False when
        it cannot be known (another machine, no pid recorded)."""
        if self.pid is None or self.pid <= 0 or self.hostname != platform.node():
            return False
        try:
            os.kill(self.pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, under another user
            return False
        return False

    @property
    def estimated_steps(self) -> int:
        """About how many steps the whole run takes: the step rate of the budget so far
        (``step`` steps for ``budget_spent``) carried to ``budget_limit``, capped at
        ``max_steps``; ``max_steps`` when nothing was spent yet."""
        if not (self.budget_spent > 0 and math.isfinite(self.budget_limit)):
            return self.max_steps
        at_budget = round(self.step * self.budget_limit / self.budget_spent)
        return max(self.step, min(self.max_steps, at_budget))


@dataclass
class RunStatus:
    """One run of the suite and where it stands. ``hypervolume``: of a done run's front (None
    if it has none, e.g. diverged before any scored solution); ``step`` / ``estimated_steps``:
    of its newest checkpoint (None without one); ``error``: a failed run's first error line."""

    run_hash: str
    method_label: str
    dataset: str
    seed: int
    state: str
    detail: str
    record_status: str | None = None
    hypervolume: float | None = None
    error: str | None = None
    step: int | None = None
    estimated_steps: int | None = None
    budget_spent_fraction: float | None = None
    mlflow_run_id: str | None = None
    running_since: str | None = None  # ISO-8601 UTC start of the RUNNING MLflow run


@dataclass
class SuiteStatus:
    """Every run of a suite (in ``expand_suite`` order) and the warnings met reading them
    (one line each: an unreadable Parquet file, an unreadable MLflow store)."""

    suite: str
    results_dir: str
    runs: list[RunStatus]
    warnings: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Runs per state, every state of :data:`STATES` present (0 when none)."""
        found = Counter(run.state for run in self.runs)
        return {state: found[state] for state in STATES}

    def summary(self) -> str:
        """One line: ``suite S: 1 done, 0 running, ... (N runs)``."""
        counts = ", ".join(f"{n} {state}" for state, n in self.counts.items())
        return f"suite {self.suite}: {counts} ({len(self.runs)} runs)"

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "results_dir": self.results_dir,
            "counts": self.counts,
            "runs": [asdict(run) for run in self.runs],
            "warnings": self.warnings,
        }


def suite_status(
    suite: SuiteConfig, results_dir: Path | None = None, tracking_uri: str | None = None
) -> SuiteStatus:
    """Where each run of ``suite`` stands in ``results_dir`` (default: the suite's) and the
    MLflow store at ``tracking_uri`` (default: the suite's, else ``<results_dir>/mlflow.db``).
    Reads only. Raises ConfigError for a tracking URI it cannot query (one line)."""
    results_dir = Path(results_dir or suite.output.results_dir)
    warnings: list[str] = []
    records = read_run_records(results_dir, warnings)
    running = running_runs(
        tracking_uri or suite.output.tracking_uri or f"sqlite:///{results_dir / 'mlflow.db'}",
        warnings,
    )
    runs = [
        _status_of(spec, records.get(spec.run_hash), running.get(spec.run_hash), results_dir)
        for spec in expand_suite(suite)
    ]
    return SuiteStatus(suite.name, str(results_dir), runs, warnings)


def _status_of(
    spec: RunSpec, record: dict[str, Any] | None, running: RunningRun | None, results_dir: Path
) -> RunStatus:
    status = RunStatus(spec.run_hash, spec.method_label, spec.dataset, spec.seed, "", "")
    if record is not None:
        status.record_status = record["status"]
    checkpoint = newest_checkpoint(results_dir / "checkpoints" / spec.run_hash)
    at = ""
    if checkpoint is not None:
        status.step, status.estimated_steps = checkpoint.step, checkpoint.estimated_steps
        if checkpoint.budget_limit > 0:
            status.budget_spent_fraction = checkpoint.budget_spent / checkpoint.budget_limit
        at = f"step {checkpoint.step} of about {checkpoint.estimated_steps}"
    if record is not None and record["status"] in FINAL_STATUSES:
        status.state = "done"
        hypervolume = record.get("hypervolume")
        if hypervolume is not None and math.isfinite(hypervolume):
            status.hypervolume = float(hypervolume)
        shown = "no HV" if status.hypervolume is None else f"HV {status.hypervolume:.4g}"
        status.detail = f"{record['status']}, {shown}, {record.get('steps') or 0} steps"
    elif running is not None and checkpoint is not None and checkpoint.writer_has_ended():
        # the driver died without marking its MLflow run KILLED (the next `mtlbench run` does)
        status.state, status.mlflow_run_id = "resumable", running.run_id
        status.detail = _resumable_detail(checkpoint, at) + f"; process {checkpoint.pid} ended"
    elif running is not None:
        status.state, status.mlflow_run_id = "running", running.run_id
        status.running_since = running.started_at
        since = f" since {_shown_time(running.started_at)}" if running.started_at else ""
        status.detail = f"MLflow run {running.run_id}{since}" + (
            f", checkpoint at {at}" if at else ""
        )
    elif record is not None and record["status"] == "failed":
        status.state = "failed"
        status.error = _first_line(record.get("error") or "") or "failed (no error recorded)"
        status.detail = status.error + (f" (checkpoint at {at})" if at else "")
    elif checkpoint is not None:
        status.state = "resumable"
        status.detail = _resumable_detail(checkpoint, at)
    else:
        status.state = "not started"
    return status


def _resumable_detail(checkpoint: Checkpoint, at: str) -> str:
    """``at step k of about n, 40% of the flops budget spent (checkpoint <time>)``."""
    spent = ""
    if checkpoint.budget_limit > 0:
        fraction = checkpoint.budget_spent / checkpoint.budget_limit
        spent = f", {fraction:.0%} of the {checkpoint.budget_kind} budget spent"
    return f"at {at}{spent} (checkpoint {_shown_time(checkpoint.written_at)})"


_RECORD_COLUMNS = ("run_hash", "status", "error", "hypervolume", "steps")


def read_run_records(results_dir: Path, warnings: list[str]) -> dict[str, dict[str, Any]]:
    """run hash → the columns status needs of its first row (status, error, hypervolume, steps),
    one file of ``<results_dir>/runs`` at a time. An unreadable file adds one line to
    ``warnings`` and is left where it is (no quarantine: status changes nothing)."""
    # pyarrow reads the files directly rather than through ResultStore.read(), which moves a
    # damaged file to the quarantine folder: a side effect status must not have
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = results_dir / "runs"
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        try:
            present = set(pq.read_schema(path).names)
            wanted = [c for c in _RECORD_COLUMNS if c in present]
            if not {"run_hash", "status"} <= set(wanted):
                raise ValueError("not an mtlbench run table (no run_hash or status column)")
            rows = pq.read_table(path, columns=wanted).to_pylist()
        except FileNotFoundError:
            continue  # replaced by a writer since the listing
        except (pa.ArrowException, OSError, ValueError) as error:
            warnings.append(f"{path}: unreadable, skipped ({_first_line(str(error))})")
            continue
        for row in rows:
            if row["run_hash"] and row["run_hash"] not in records:
                records[row["run_hash"]] = {"error": "", "hypervolume": None, "steps": 0, **row}
    return records


def newest_checkpoint(directory: Path) -> Checkpoint | None:
    """The highest-step checkpoint in ``directory`` whose ``.pt`` and ``.json`` sidecar both
    exist and whose sidecar parses with every field of :data:`SIDECAR_FIELDS`; None if none."""
    sidecars = sorted(directory.glob("step_*.json"), reverse=True) if directory.is_dir() else []
    for sidecar in sidecars:  # step_<step:08d>: the names sort as the steps do
        if not sidecar.with_suffix(".pt").is_file():
            continue
        try:
            content = json.loads(sidecar.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if not isinstance(content, dict) or not all(
            isinstance(content.get(name), kind) and not isinstance(content.get(name), bool)
            for name, kind in SIDECAR_FIELDS.items()
        ):
            continue
        hostname, pid = content.get("hostname"), content.get("pid")
        return Checkpoint(
            **{name: content[name] for name in SIDECAR_FIELDS},
            hostname=hostname if isinstance(hostname, str) else "",
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        )
    return None


@dataclass(frozen=True)
class RunningRun:
    """An MLflow run in status RUNNING: its id and start (ISO-8601 UTC, "" if unknown)."""

    run_id: str
    started_at: str

    @classmethod
    def of(cls, run_id: str, start_time_ms: int | None) -> RunningRun:
        if start_time_ms is None:
            return cls(run_id, "")
        start = datetime.fromtimestamp(start_time_ms / 1000, tz=timezone.utc)
        return cls(run_id, start.isoformat(timespec="seconds").replace("+00:00", "Z"))


def running_runs(tracking_uri: str, warnings: list[str]) -> dict[str, RunningRun]:
    """run hash → the active MLflow run in status RUNNING (the first started) at
    ``tracking_uri``. SQLite: read-only, nothing when the file is absent, one line in
    ``warnings`` when it cannot be read. A server: search queries only. Any other URI:
    ConfigError."""
    from mtlbench.harness.tracking_store import sqlite_path

    database = sqlite_path(tracking_uri)
    if database is not None:
        return _running_in_sqlite(database, warnings)
    if tracking_uri.startswith(("http://", "https://")):
        return _running_on_server(tracking_uri)
    raise ConfigError(
        f"--tracking-uri: status reads sqlite:///<file> stores and http(s):// servers, "
        f"got {tracking_uri!r}"
    )


# MLflow's SQL schema (tables runs and tags), read-only: MlflowClient on a SQLite URI would
# create and migrate the file, which status must never do
_RUNNING_QUERY = """
SELECT tags.value, runs.run_uuid, runs.start_time
FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid
WHERE tags.key = ? AND runs.status = 'RUNNING' AND runs.lifecycle_stage = 'active'
ORDER BY runs.start_time
"""


def _running_in_sqlite(database: Path, warnings: list[str]) -> dict[str, RunningRun]:
    if not database.is_file():
        return {}
    try:
        connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = connection.execute(_RUNNING_QUERY, (RUN_HASH_TAG,)).fetchall()
        finally:
            connection.close()
    except sqlite3.Error as error:
        warnings.append(f"{database}: MLflow store unreadable, running runs not shown ({error})")
        return {}
    running: dict[str, RunningRun] = {}
    for run_hash, run_id, start_time_ms in found:
        running.setdefault(run_hash, RunningRun.of(run_id, start_time_ms))
    return running


def _running_on_server(tracking_uri: str) -> dict[str, RunningRun]:
    from mlflow.tracking import MlflowClient
    from mtlbench.harness.tracking_store import _probe_server  # one line for a dead server

    _probe_server(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    found: dict[str, RunningRun] = {}
    if experiment_ids:
        for run in client.search_runs(
            experiment_ids,
            filter_string="attributes.status = 'RUNNING'",
            max_results=50_000,  # the most one page of MLflow's search may hold
            order_by=["attributes.start_time ASC"],
        ):
            run_hash = run.data.tags.get(RUN_HASH_TAG)
            if run_hash:
                found.setdefault(run_hash, RunningRun.of(run.info.run_id, run.info.start_time))
    return found


def _shown_time(iso_time: str) -> str:
    """An ISO-8601 time as ``YYYY-MM-DD HH:MM:SS UTC`` (as given if it does not parse)."""
    try:
        moment = datetime.fromisoformat(iso_time.replace("Z", "+00:00"))
    except ValueError:
        return iso_time
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""
