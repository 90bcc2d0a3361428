"""The Parquet result tables, the contract with the leaderboard.

``runs/``: one row per (run, solution), a :class:`~mtlbench.harness.records.RunRecord`.
``evaluations/``: one row per (run, evaluation during training), an
:class:`~mtlbench.harness.records.EvaluationRecord` (the anytime curve).

Each run is one file ``<results_dir>/<table>/<run_hash>.parquet`` written atomically (temporary
file, then rename), so a killed writer never leaves half a run, and rewriting a run replaces its
rows instead of duplicating them. A table is every file of its folder read together, with the
current schema: a file written before a column existed reads back with that column null.

A damaged folder degrades, it does not block: a file that cannot be read (truncated, not Parquet,
columns that cannot be cast to the schema, a stray table lacking the identity columns)
is moved to ``<results_dir>/quarantine/<table>/`` with one warning line naming it, and the rest of
the table loads. Quarantine never deletes: a name already taken there gets a numeric suffix.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from mtlbench.harness.records import EVALUATION_SCHEMA, RUN_SCHEMA, complete_row

FINAL_STATUSES = ("completed", "diverged")

SCHEMA = RUN_SCHEMA  # the run table's columns, derived from RunRecord
QUARANTINE_FOLDER = "quarantine"  # under the results folder; one subfolder per table

_log = logging.getLogger(__name__)


# Columns of every file mtlbench ever wrote to either table (the oldest files lack later ones,
# such as is_baseline): a Parquet file without them is not one of its tables.
IDENTITY_COLUMNS = frozenset({"run_hash", "suite", "method", "dataset", "seed"})


@dataclasses.dataclass(frozen=True)
class _Table:
    """One table: its folder under the results folder and its schema."""

    folder: str
    schema: pa.Schema


_RUNS = _Table("runs", RUN_SCHEMA)
_EVALUATIONS = _Table("evaluations", EVALUATION_SCHEMA)


def _write_atomic(
    directory: Path, run_hash: str, rows: list[dict[str, Any]], schema: pa.Schema
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([complete_row(row, schema) for row in rows], schema=schema)
    target = directory / f"{run_hash}.parquet"
    temporary = directory / f".{run_hash}.{os.getpid()}.tmp"
    pq.write_table(table, temporary)
    os.replace(temporary, target)
    return target


class _Unreadable(Exception):
    """A table file that cannot join its table; the message says why, in a few words."""


def _read_file(path: Path, table: _Table) -> pa.Table:
    """The rows of one file of ``table``, cast to its schema; :class:`_Unreadable` if they
    cannot be."""
    if not path.is_file():
        raise _Unreadable("not a regular file")
    try:
        columns = set(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as error:
        raise _Unreadable(f"not a readable Parquet file ({_first_line(error)})") from None
    missing = sorted(IDENTITY_COLUMNS - columns)
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise _Unreadable(f"not an mtlbench table (no column {shown})")
    try:
        rows = pq.read_table(path, schema=table.schema)
    except (pa.ArrowException, OSError) as error:
        raise _Unreadable(f"columns do not fit the table's schema ({_first_line(error)})") from None
    if rows.column("run_hash").null_count:
        raise _Unreadable("rows without a run_hash")
    return rows


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/name.1``, ``.2``, ... : the first that does not exist."""
    candidate, number = folder / name, 0
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = folder / f"{name}.{number}"
    return candidate


def _move_aside(path: Path, quarantine: Path) -> Path | None:
    """Move ``path`` into ``quarantine`` without replacing anything there; the new path, or
    None if another process moved it first."""
    quarantine.mkdir(parents=True, exist_ok=True)
    for _ in range(100):  # a name taken between the check and the move: try the next one
        target = _free_name(quarantine, path.name)
        try:
            _move_without_replacing(path, target)
            return target
        except FileExistsError:
            continue
        except FileNotFoundError:
            return None
    raise OSError(f"no free name for {path.name} in {quarantine}")


def _move_without_replacing(path: Path, target: Path) -> None:
    """Rename ``path`` to ``target``; FileExistsError if ``target`` appeared meanwhile. A file is
    hard-linked then unlinked (a link never replaces, where a rename would); a folder, or a
    file on a file system without hard links, is renamed after the caller's check."""
    if path.is_file():
        try:
            os.link(path, target)
        except FileExistsError:
            raise
        except OSError:  # no hard links here
            os.rename(path, target)
            return
        os.unlink(path)
    else:
        os.rename(path, target)


def _same_file(path: Path, before: os.stat_result) -> bool:
    """Whether ``path`` is still the file ``before`` described (not replaced by a writer)."""
    try:
        after = path.stat()
    except FileNotFoundError:
        return False
    return (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def _read_folder(results_dir: Path, table: _Table) -> pa.Table:
    """Every ``*.parquet`` file of the table's folder, cast to its schema and concatenated;
    unreadable files are moved to ``quarantine/<folder>`` with one warning line each."""
    directory = results_dir / table.folder
    quarantine = results_dir / QUARANTINE_FOLDER / table.folder
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    parts = []
    for path in files:
        try:
            before = path.stat()
            parts.append(_read_file(path, table))
        except FileNotFoundError:
            continue  # replaced or moved aside by another process since the listing
        except _Unreadable as problem:
            if not _same_file(path, before):
                continue  # rewritten while being read: the next read sees the new file
            try:
                moved = _move_aside(path, quarantine)
            except OSError as error:  # e.g. a read-only folder: skip the file, say so
                _log.warning(
                    "mtlbench: warning: %s: %s; skipped (cannot move it aside: %s)",
                    path,
                    problem,
                    _first_line(error),
                )
                continue
            if moved is not None:
                _log.warning("mtlbench: warning: %s: %s; moved to %s", path, problem, moved)
    if not parts:
        return table.schema.empty_table()
    return pa.concat_tables(parts)


class ResultStore:
    """Read and write the run table (``results_dir/runs``) and the evaluation table
    (``results_dir/evaluations``); unreadable files go to ``results_dir/quarantine``."""

    def __init__(self, results_dir: Path):
        self.results_dir = Path(results_dir)
        self.directory = self.results_dir / _RUNS.folder
        self.evaluations_directory = self.results_dir / _EVALUATIONS.folder
        self.quarantine_directory = self.results_dir / QUARANTINE_FOLDER

    def write_run(self, run_hash: str, rows: list[dict[str, Any]]) -> Path:
        """Write (or replace) the rows of one run, atomically. A row lacking a column gets
        null there; a key that is not a column is an error."""
        return _write_atomic(self.directory, run_hash, rows, SCHEMA)

    def write_evaluations(self, run_hash: str, rows: list[dict[str, Any]]) -> Path:
        """Write (or replace) the anytime rows of one run, atomically."""
        return _write_atomic(self.evaluations_directory, run_hash, rows, EVALUATION_SCHEMA)

    def read(self) -> pa.Table:
        """The whole run table (empty, with the schema, if nothing was recorded)."""
        return _read_folder(self.results_dir, _RUNS)

    def rows(self) -> list[dict[str, Any]]:
        return self.read().to_pylist()

    def evaluation_rows(self) -> list[dict[str, Any]]:
        """The whole evaluation table as rows (none for results written before it existed)."""
        return _read_folder(self.results_dir, _EVALUATIONS).to_pylist()

    def finished_hashes(self) -> set[str]:
        """Runs with a final outcome (completed or diverged); failed runs are retried."""
        table = self.read()
        if table.num_rows == 0:
            return set()
        return {
            row["run_hash"]
            for row in table.select(["run_hash", "status"]).to_pylist()
            if row["status"] in FINAL_STATUSES
        }
