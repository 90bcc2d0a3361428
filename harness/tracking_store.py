"""Opening the MLflow tracking store: a damaged or unreachable store is one line, not a traceback.

A SQLite store (the default, ``<results_dir>/mlflow.db``) is checked before MLflow touches it:
the file must be an SQLite database that passes ``PRAGMA quick_check`` and whose schema revision
is the one this MLflow writes. Its creation (MLflow runs every schema migration on a new file)
happens under a file lock next to the database (``mlflow.db.lock``), so two first runs started at
once into a new results folder do not migrate it twice. A server URI (``http(s)://host:port``)
must answer one request of MLflow's REST API within a few seconds before MLflow's own client
(which retries a dead server for minutes) is used. Every failure is a
:class:`TrackingStoreError`, one line naming the file or URI and how to recover.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import sqlite3
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from filelock import FileLock, Timeout
from mlflow.tracking import MlflowClient
from mtlbench.harness.config import ConfigError

LOCK_TIMEOUT_SECONDS = 120.0  # how long a run waits for another one creating the store
PROBE_TIMEOUT_SECONDS = 5.0  # a tracking server that has not answered by then counts as down
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
_MOVE_ASIDE = "move it aside (the Parquet tables under the results folder do not need it)"


class TrackingStoreError(ConfigError):
    """The MLflow store cannot be used; the message is one line naming it and the way out."""


def open_tracking_client(tracking_uri: str, results_dir: Path) -> MlflowClient:
    """An MLflow client on ``tracking_uri``, its store checked and, if new, created.

    ``results_dir`` is the results folder the URI belongs to (the default store lives there);
    a SQLite store elsewhere is locked next to its own file. Raises
    :class:`TrackingStoreError` for a damaged, foreign or other-version SQLite file, a lock
    held too long, and a server URI where no MLflow server answers."""
    for noisy in ("mlflow", "alembic"):  # schema-migration chatter on a new SQLite store
        logging.getLogger(noisy).setLevel(logging.WARNING)
    database = sqlite_path(tracking_uri)
    if database is not None:
        return _open_sqlite(tracking_uri, database)
    scheme = urlsplit(tracking_uri).scheme
    if scheme in ("http", "https"):
        _probe_server(tracking_uri)
    try:
        return MlflowClient(tracking_uri=tracking_uri)
    except Exception as error:  # any failure to open the store is one line
        raise TrackingStoreError(
            f"{_without_password(tracking_uri)}: cannot open the MLflow tracking store: "
            f"{_first_line(error)}"
        ) from None


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///<path>`` URI (relative or absolute); None for any
    other URI and for an in-memory database."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    location = unquote(tracking_uri[len("sqlite:///") :].split("?", 1)[0])
    return Path(location) if location and location != ":memory:" else None


def _open_sqlite(tracking_uri: str, database: Path) -> MlflowClient:
    lock_path = database.with_name(database.name + ".lock")
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(lock_path, timeout=LOCK_TIMEOUT_SECONDS):
            check_sqlite_store(database)
            try:
                return MlflowClient(tracking_uri=tracking_uri)  # creates and migrates a new store
            except Exception as error:  # whatever MLflow raises: one line
                raise TrackingStoreError(
                    f"{database}: MLflow cannot open this store ({_first_line(error)}); "
                    f"{_MOVE_ASIDE}"
                ) from None
    except Timeout:
        raise TrackingStoreError(
            f"{lock_path}: another process has held this lock for over "
            f"{LOCK_TIMEOUT_SECONDS:.0f} s; if no mtlbench run is running, delete the lock file"
        ) from None
    except OSError as error:
        raise TrackingStoreError(f"{lock_path}: cannot take the store's lock ({error})") from None


def check_sqlite_store(database: Path) -> None:
    """Raise :class:`TrackingStoreError` unless ``database`` is absent, empty, or an intact
    MLflow store of this MLflow's schema revision (read only; nothing is written)."""
    if not database.exists() or (database.is_file() and database.stat().st_size == 0):
        return  # MLflow creates it
    if not database.is_file():
        raise TrackingStoreError(f"{database}: the MLflow store is not a file; {_MOVE_ASIDE}")
    with database.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise TrackingStoreError(
            f"{database}: not an SQLite database (damaged or overwritten); {_MOVE_ASIDE}, "
            "and the next run starts a new store"
        )
    revision, tables = _read_store(database)
    if not tables:
        return  # an empty database: MLflow creates its tables
    expected = _schema_head()
    if revision == expected:
        return
    if revision is None:
        raise TrackingStoreError(
            f"{database}: not a complete MLflow store (no schema revision; a first run "
            f"interrupted while creating it, or another program's database); {_MOVE_ASIDE}"
        )
    if _known_revision(revision):
        raise TrackingStoreError(
            f"{database}: MLflow store of an older schema ({revision}, this MLflow writes "
            f"{expected}); back the file up, then run: mlflow db upgrade sqlite:///{database}"
        )
    raise TrackingStoreError(
        f"{database}: MLflow store of an unknown schema revision {revision!r} (a newer MLflow "
        f"wrote it?); use that MLflow version, or {_MOVE_ASIDE}"
    )


def _read_store(database: Path) -> tuple[str | None, set[str]]:
    """(the alembic schema revision or None, the table names) of an SQLite file, after
    ``PRAGMA quick_check``; :class:`TrackingStoreError` if SQLite finds it damaged."""
    try:
        connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise TrackingStoreError(f"{database}: cannot open the MLflow store ({error})") from None
    try:
        verdict = connection.execute("PRAGMA quick_check").fetchone()
        if verdict is None or verdict[0] != "ok":
            problem = verdict[0] if verdict else "no answer"
            raise TrackingStoreError(
                f"{database}: the MLflow store is damaged ({problem}); {_MOVE_ASIDE}"
            )
        tables = {
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        revision = None
        if "alembic_version" in tables:
            found = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = found[0] if found else None
        return revision, tables
    except sqlite3.DatabaseError as error:  # "file is not a database", "malformed", ...
        raise TrackingStoreError(
            f"{database}: the MLflow store is damaged ({error}); {_MOVE_ASIDE}"
        ) from None
    finally:
        connection.close()


def _schema_head() -> str:
    """The schema revision this MLflow writes (the head of its alembic migrations)."""
    from mlflow.store.db.utils import _get_latest_schema_revision  # no public equivalent

    return _get_latest_schema_revision()


def _known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of this MLflow's migrations (then the store is older)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError
    from mlflow.store.db.utils import _get_alembic_config  # where MLflow keeps its migrations

    scripts = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
    try:
        return scripts.get_revision(revision) is not None
    except CommandError:
        return False


def _probe_server(tracking_uri: str) -> None:
    """Raise :class:`TrackingStoreError` unless an MLflow tracking server answers one request
    of its REST API at ``tracking_uri`` within :data:`PROBE_TIMEOUT_SECONDS`.

    Only a dead address (refused, unknown host, no answer in time) or an HTTP answer that is
    not MLflow's is an error: a server asking for credentials, or a TLS certificate this probe
    cannot verify, is left to MLflow's own client and its settings."""
    parts = urlsplit(tracking_uri)
    where = parts.netloc.rsplit("@", 1)[-1]
    shown = _without_password(tracking_uri)  # never printed, nor sent by this probe
    if not parts.hostname:
        raise TrackingStoreError(f"{shown}: the tracking URI names no host")
    probe = f"{shown.rstrip('/')}/api/2.0/mlflow/experiments/get?experiment_id=0"
    try:
        with urllib.request.urlopen(probe, timeout=PROBE_TIMEOUT_SECONDS):
            return
    except urllib.error.HTTPError as answer:
        if answer.code in (401, 403) or _is_mlflow_error(answer):
            return  # credentials, or an MLflow error about experiment 0: a server is there
        raise TrackingStoreError(
            f"{shown}: {where} answers HTTP {answer.code} to MLflow's REST API, so it is "
            "not an MLflow tracking server (or the URI's path is wrong)"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        if isinstance(reason, ssl.SSLError):
            return  # a certificate MLflow may be configured to accept
        if isinstance(reason, (TimeoutError, socket.timeout)):
            text = f"no answer within {PROBE_TIMEOUT_SECONDS:.0f} s"
        elif isinstance(reason, OSError):
            text = reason.strerror or str(reason)
        else:
            text = str(reason)
        raise TrackingStoreError(
            f"{shown}: no MLflow tracking server answers at {where} ({text}); "
            "start it, or leave out --tracking-uri to record in the results folder"
        ) from None


def _is_mlflow_error(answer: urllib.error.HTTPError) -> bool:
    """Whether an HTTP error's body is MLflow's JSON error (``{"error_code": ...}``)."""
    try:
        body = json.loads(answer.read(65536) or b"null")
    except (ValueError, OSError):
        return False
    return isinstance(body, dict) and "error_code" in body


def _without_password(uri: str) -> str:
    """``uri`` without the ``user:password@`` part of its address, if it has one."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
