"""A damaged results folder degrades, it does not block (issue 21).

Through the real CLI and a real SQLite MLflow store: an unreadable Parquet file is moved to
``results/quarantine/`` with one warning and the rest loads; a damaged ``mlflow.db`` or an
unreachable tracking server is one error line with exit code 2; two first runs started at once
into a new folder both succeed. The damage is done to files a real run wrote.
"""

from __future__ import annotations

import http.server
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from _tiny_suite import tiny_suite
from mlflow.tracking import MlflowClient
from mtlbench.harness.cli import app
from mtlbench.harness.store import ResultStore
from typer.testing import CliRunner

STORE_LOGGER = "mtlbench.harness.store"


def _suite(name: str, seeds: list[int]) -> dict:
    """A suite of tiny runs (seconds each): 2 tasks, an 8-unit encoder, 64 training samples."""
    return tiny_suite(name, seeds, 2.0e5, checkpoint_every=20)


def _write_suite(folder: Path, name: str, seeds: list[int] | None = None) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_suite(name, seeds or [0])))
    return path


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _stderr_lines(outcome) -> list[str]:
    return [line for line in outcome.stderr.splitlines() if line.strip()]


def _snapshot(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path → bytes), except those under ``skip``."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not str(path.relative_to(folder)).startswith(skip)
    }


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A results folder holding two recorded runs (run and evaluation tables, mlflow.db)."""
    folder = tmp_path_factory.mktemp("recorded")
    suite = _write_suite(folder, "tiny", [0, 1])
    results = folder / "results"
    outcome = _invoke("run", str(suite), "--results-dir", str(results), "--no-progress")
    assert outcome.exit_code == 0, outcome.output
    assert len(list((results / "runs").glob("*.parquet"))) == 2
    assert len(list((results / "evaluations").glob("*.parquet"))) == 2
    return results


@pytest.fixture
def results(recorded: Path, tmp_path: Path) -> Path:
    """A private copy of the recorded folder, to damage."""
    copy = tmp_path / "results"
    shutil.copytree(recorded, copy)
    return copy


# ---- Parquet files ----------------------------------------------------------------------------
def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))
    return path


def _uncastable(path: Path) -> Path:
    """Same columns, but ``seed`` holds text that cannot be cast to the schema's int64."""
    table = pq.read_table(path)
    column = table.schema.get_field_index("seed")
    texts = pa.array(["not a seed"] * table.num_rows, pa.string())
    pq.write_table(table.set_column(column, "seed", texts), path)
    return path


def _stray(path: Path) -> Path:
    """A Parquet file of another program next to the records."""
    stray = path.with_name("exported_by_someone_else.parquet")
    pq.write_table(pa.table({"epoch": [1, 2], "loss": [0.5, 0.25]}), stray)
    return stray


DAMAGES: dict[str, Callable[[Path], Path]] = {
    "truncated": _truncate,
    "random_bytes": _random_bytes,
    "uncastable": _uncastable,
    "stray": _stray,
}


@pytest.mark.parametrize("table", ["runs", "evaluations"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_unreadable_parquet_is_moved_aside_and_the_rest_loads(
    results: Path, table: str, damage: str, caplog
) -> None:
    victim = min((results / table).glob("*.parquet"))
    hashes = {path.stem for path in (results / "runs").glob("*.parquet")}
    damaged = DAMAGES[damage](victim)
    damaged_bytes = damaged.read_bytes()
    before = _snapshot(results, skip=("leaderboard",))
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)

    outcome = _invoke("leaderboard", "--results-dir", str(results))

    assert outcome.exit_code == 0, outcome.output
    assert "Traceback" not in outcome.output
    moved = results / "quarantine" / table / damaged.name
    warnings = [r.getMessage() for r in caplog.records if r.name == STORE_LOGGER]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert str(damaged) in warnings[0] and str(moved) in warnings[0]
    assert not damaged.exists() and moved.read_bytes() == damaged_bytes  # moved, not lost
    after = _snapshot(results, skip=("leaderboard",))
    relative = str(damaged.relative_to(results))
    assert after.pop(str(moved.relative_to(results))) == before.pop(relative)
    assert after == before  # every other file byte-identical
    # everything else loads: the runs whose file survived, read back by pyarrow itself
    store = ResultStore(results)
    survivors = hashes - ({damaged.stem} if table == "runs" else set())
    assert {row["run_hash"] for row in store.rows()} == survivors
    expected_evaluations = sum(
        pq.read_metadata(path).num_rows for path in (results / "evaluations").glob("*.parquet")
    )
    assert len(store.evaluation_rows()) == expected_evaluations
    assert len(caplog.records) == 1  # the second read finds nothing left to move
    assert "No runs recorded yet" not in (results / "leaderboard" / "index.md").read_text()


def test_quarantine_never_replaces_a_file_already_there(results: Path, caplog) -> None:
    victim = min((results / "runs").glob("*.parquet"))
    earlier = results / "quarantine" / "runs" / victim.name
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"moved aside by an earlier read")
    damaged_bytes = _truncate(victim).read_bytes()
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)

    outcome = _invoke("leaderboard", "--results-dir", str(results))

    assert outcome.exit_code == 0, outcome.output
    assert earlier.read_bytes() == b"moved aside by an earlier read"
    suffixed = earlier.with_name(victim.name + ".1")
    assert suffixed.read_bytes() == damaged_bytes
    assert str(suffixed) in caplog.records[0].getMessage()


def test_run_loads_past_a_damaged_file_and_runs_the_lost_record_again(
    results: Path, caplog
) -> None:
    victim = _random_bytes(min((results / "runs").glob("*.parquet")))
    damaged_bytes = victim.read_bytes()
    evaluations = _snapshot(results / "evaluations")
    suite = _write_suite(results.parent, "tiny", [0, 1])
    caplog.set_level(logging.WARNING, logger=STORE_LOGGER)

    outcome = _invoke(
        "run", str(suite), "--results-dir", str(results), "--no-progress", "--no-leaderboard"
    )

    assert outcome.exit_code == 0, outcome.output
    assert "Traceback" not in outcome.output
    moved = results / "quarantine" / "runs" / victim.name
    assert [r.getMessage() for r in caplog.records if r.name == STORE_LOGGER] == [
        (
            f"mtlbench: warning: {victim}: not a readable Parquet file (Parquet magic bytes not "
            f"found in footer. Either the file is corrupted or this is not a parquet file.); "
            f"moved to {moved}"
        )
    ]
    assert moved.read_bytes() == damaged_bytes
    assert "1 already recorded, 1 to run" in outcome.stderr  # only the lost record
    assert pq.read_table(victim).column("run_hash").to_pylist() == [victim.stem]
    assert _snapshot(results / "evaluations", skip=(victim.name,)) == {
        name: data for name, data in evaluations.items() if name != victim.name
    }


def test_the_warning_is_one_line_on_stderr(results: Path) -> None:
    """In a process of its own (pytest captures log records): the line reaches stderr alone."""
    victim = _truncate(min((results / "evaluations").glob("*.parquet")))
    reader = (
        "import sys; from mtlbench.harness.store import ResultStore; "
        "print(len(ResultStore(sys.argv[1]).evaluation_rows()))"
    )
    outcome = subprocess.run(
        [sys.executable, "-c", reader, str(results)], capture_output=True, text=True
    )
    assert outcome.returncode == 0, outcome.stderr
    moved = results / "quarantine" / "evaluations" / victim.name
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mtlbench: warning: {victim}: "), lines
    assert lines[0].endswith(f"; moved to {moved}")
    expected_rows = sum(
        pq.read_metadata(path).num_rows for path in (results / "evaluations").glob("*.parquet")
    )
    assert int(outcome.stdout) == expected_rows > 0


# ---- the MLflow store -------------------------------------------------------------------------
def _half(database: Path) -> None:
    data = database.read_bytes()
    database.write_bytes(data[: len(data) // 2])


def _zeros(database: Path) -> None:
    database.write_bytes(bytes(database.stat().st_size))


def _noise(database: Path) -> None:
    database.write_bytes(np.random.default_rng(1).bytes(database.stat().st_size))


def _revision(value: str) -> Callable[[Path], None]:
    def set_revision(database: Path) -> None:
        with sqlite3.connect(database) as connection:
            connection.execute("UPDATE alembic_version SET version_num = ?", (value,))
        connection.close()

    return set_revision


def _first_migration() -> str:
    """MLflow's oldest schema revision (read from its alembic scripts)."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    return ScriptDirectory.from_config(_get_alembic_config(db_url="")).get_base()


STORE_DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_half, "damaged"),
    "zero_filled": (_zeros, "not an SQLite database"),
    "random_bytes": (_noise, "not an SQLite database"),
    "unknown_revision": (_revision("fedcba987654"), "unknown schema revision 'fedcba987654'"),
    "older_revision": (lambda db: _revision(_first_migration())(db), "mlflow db upgrade"),
}


@pytest.mark.parametrize("damage", list(STORE_DAMAGES))
def test_a_damaged_mlflow_store_is_one_line_naming_it(results: Path, damage: str) -> None:
    damage_store, says = STORE_DAMAGES[damage]
    database = results / "mlflow.db"
    damage_store(database)
    before = _snapshot(results)
    suite = _write_suite(results.parent, "other", [5])  # a run to do: the store is needed

    outcome = _invoke("run", str(suite), "--results-dir", str(results), "--no-progress")

    assert outcome.exit_code == 2
    lines = _stderr_lines(outcome)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"mtlbench: error: {database}: ") and says in lines[0]
    assert "Traceback" not in outcome.output
    after = _snapshot(results)
    assert set(after) - set(before) <= {"mlflow.db.lock"}  # the lock, taken to check
    assert {name: after[name] for name in before} == before


@pytest.fixture
def refused_uri() -> str:
    """An address where nothing listens: a port bound, then released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class _NotMlflow(http.server.BaseHTTPRequestHandler):
    """Answers 501 to every request (it defines no do_GET), and logs nothing."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def other_server_uri():
    """A real HTTP server that is not MLflow."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _NotMlflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("refused_uri", "no MLflow tracking server answers at 127.0.0.1:"),
        ("other_server_uri", "answers HTTP 501 to MLflow's REST API"),
    ],
)
def test_an_unreachable_tracking_server_is_one_line_naming_it(
    results: Path, where: str, says: str, request
) -> None:
    uri = request.getfixturevalue(where)
    suite = _write_suite(results.parent, "other", [5])
    before = _snapshot(results)

    outcome = _invoke(
        "run", str(suite), "--results-dir", str(results), "--tracking-uri", uri, "--no-progress"
    )

    assert outcome.exit_code == 2
    lines = _stderr_lines(outcome)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"mtlbench: error: {uri}: ") and says in lines[0]
    assert _snapshot(results) == before


# ---- two first runs at once -------------------------------------------------------------------
def _environment() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_ENABLE_ASYNC_LOGGING": "false"}


def test_two_first_runs_at_once_into_a_new_folder(tmp_path: Path) -> None:
    results = tmp_path / "results"  # does not exist yet: both runs create mlflow.db
    suites = {
        name: _write_suite(tmp_path, name, [seed])
        for seed, name in enumerate(("first", "second", "third"))
    }
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mtlbench.harness.cli",
                "run",
                str(suites[name]),
                "--results-dir",
                str(results),
                "--no-progress",
                "--no-leaderboard",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_environment(),
        )
        for name in ("first", "second")
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr

    outcome = _invoke("run", str(suites["third"]), "--results-dir", str(results), "--no-progress")

    assert outcome.exit_code == 0, outcome.output
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    for name in suites:
        experiment = client.get_experiment_by_name(name)
        assert experiment is not None, name
        kinds = sorted(
            run.data.tags["mtlbench.kind"] for run in client.search_runs([experiment.experiment_id])
        )
        assert kinds == ["run", "suite"], (name, kinds)
    assert len(ResultStore(results).rows()) == 3
