"""The ``mtlbench`` command: run a suite, list what is registered, build the leaderboard.

Every user error (bad suite, unknown name, unwritable output, bad dataset files) ends with one
line on stderr naming the field or file and the problem, and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from mtlbench.harness.config import ConfigError, load_suite
from rich.console import Console
from rich.table import Table
from rich.text import Text

try:  # recent typer ships its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

# `mtlbench` alone shows the help (click >= 8.2 signals it with this usage error)
_NO_ARGS: tuple[type[Exception], ...] = tuple(
    getattr(click_errors, name) for name in ("NoArgsIsHelpError",) if hasattr(click_errors, name)
)


class _OneLineErrors(typer.core.TyperGroup):
    """Typer's command group, except that a usage error (unknown command or option, a value of
    the wrong type, a missing argument) is one line, ``mtlbench: error: ...``, and exit code 2,
    like every other user error, instead of Typer's multi-line usage panel."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            outcome = super().main(*args, standalone_mode=False, **kwargs)
        except _NO_ARGS as error:
            error.show()  # type: ignore[attr-defined]
            sys.exit(error.exit_code)  # type: ignore[attr-defined]
        except click_errors.UsageError as error:
            message = " ".join(error.format_message().split())
            typer.echo(f"mtlbench: error: {message}", err=True)
            sys.exit(2)
        sys.exit(outcome if isinstance(outcome, int) else 0)


app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, cls=_OneLineErrors)
console = Console(stderr=True)
USER_ERRORS = (ConfigError,)


def _fail(message: str) -> None:
    typer.echo(f"mtlbench: error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def run(
    suite_path: Path = typer.Argument(..., metavar="SUITE", help="suite YAML file"),
    results_dir: Path | None = typer.Option(None, help="override output.results_dir"),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI (default: SQLite under results)"
    ),
    executor: str | None = typer.Option(None, help="override executor.kind: local | ray"),
    address: str | None = typer.Option(None, help="Ray cluster address (with --executor ray)"),
    leaderboard: bool = typer.Option(True, help="rebuild the leaderboard afterwards"),
    progress: bool = typer.Option(True, help="show progress bars"),
    report_every: float = typer.Option(
        60.0,
        metavar="SECONDS",
        help="without progress bars (--no-progress or no terminal): one progress line this often",
    ),
) -> None:
    """Run every (method, dataset, seed) of SUITE not already recorded.

    The suite is checked whole before any run starts (its fields, then what it asks of this
    machine: a CUDA device, a FLOP budget that pays for one training step). Ctrl-C marks the
    open runs KILLED, says what finished, and exits with code 130.
    """
    from mtlbench.harness.dataset import DatasetFileError
    from mtlbench.harness.leaderboard import build_leaderboard
    from mtlbench.harness.preflight import preflight
    from mtlbench.harness.runner import run_suite

    try:
        if executor is not None and executor not in ("local", "ray"):
            raise ConfigError(f"--executor: expected local or ray, got {executor!r}")
        if not report_every > 0 or report_every == float("inf"):
            raise ConfigError(
                f"--report-every: expected a positive number of seconds, got {report_every:g}"
            )
        suite = load_suite(suite_path)
        if address:
            suite = suite.model_copy(
                update={"executor": suite.executor.model_copy(update={"address": address})}
            )
        preflight(suite, executor, source=str(suite_path))
        summary = run_suite(
            suite,
            results_dir,
            tracking_uri,
            executor,
            console,
            progress,
            report_seconds=report_every,
        )
        failures = [r for r in summary.recorded if r.status == "failed"]
        if failures and len(failures) == len(summary.recorded):
            first = failures[0].error.splitlines()[0] if failures[0].error else "failed"
            if first.startswith("DatasetFileError"):
                _fail(first.split(": ", 1)[1])
        target = Path(results_dir or suite.output.results_dir)
        if leaderboard:
            page = build_leaderboard(target)
            console.print(f"leaderboard: {page}")
        counts = ", ".join(f"{v} {k}" for k, v in sorted(summary.counts.items())) or "nothing new"
        console.print(f"done: {counts}; {summary.skipped} skipped (already recorded)")
    except (ConfigError, DatasetFileError) as error:
        _fail(str(error))
    except KeyboardInterrupt:
        # run_suite has marked its open runs KILLED and printed what finished; 128 + SIGINT
        raise typer.Exit(code=130) from None


@app.command()
def submit(
    suite_path: Path = typer.Argument(
        ..., metavar="SUITE", help="suite YAML file inside the project"
    ),
    address: str | None = typer.Option(
        None,
        help="Ray job server (dashboard) address, e.g. http://head:8265 (default: RAY_ADDRESS)",
    ),
    results_dir: str | None = typer.Option(
        None,
        help="results folder, on storage every node sees (e.g. /mnt/efs/mtlbench-results with the ray-up recipe) so a retried run finds its checkpoints [default: $HOME/mtlbench-results]",
    ),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI the job writes to"),
    working_dir: Path | None = typer.Option(
        None, help="folder uploaded as the job's working dir [default: the project]"
    ),
    ship_code: bool = typer.Option(
        True, help="ship this checkout's code with the job (py_modules)"
    ),
    dry_run: bool = typer.Option(
        False, help="print the job (JSON) and the equivalent `ray job submit`; send nothing"
    ),
) -> None:
    """Run SUITE on a Ray cluster as a Ray job (`ray job submit`), the project as working dir."""
    import json

    from mtlbench.cluster.submit import SubmitError, build_submission
    from mtlbench.cluster.submit import submit as send

    try:
        job = build_submission(
            suite_path, address, results_dir, tracking_uri, working_dir, ship_code
        )
    except (ConfigError, SubmitError) as error:
        _fail(str(error))
    if dry_run:
        typer.echo(json.dumps(job.describe(), indent=2))
        return
    submission_id = send(job)
    where = f" --address {address}" if address else ""
    typer.echo(submission_id)
    console.print(f"submitted; follow it with: ray job logs --follow {submission_id}{where}")


@app.command()
def leaderboard(
    results_dir: Path = typer.Option(Path("results"), help="folder holding runs/ (Parquet)"),
) -> None:
    """Build results/leaderboard/index.md and index.html from the Parquet table."""
    from mtlbench.harness.leaderboard import build_leaderboard
    from mtlbench.harness.scaling_report import build_scaling_page

    if not (results_dir / "runs").is_dir() and not (results_dir / "scaling").is_dir():
        _fail(f"{results_dir / 'runs'}: no recorded runs there (run a suite first)")
    if (results_dir / "runs").is_dir():
        typer.echo(str(build_leaderboard(results_dir)))
    scaling_page = build_scaling_page(results_dir)
    if scaling_page:
        typer.echo(str(scaling_page))


@app.command()
def scale(
    study_path: Path = typer.Argument(
        ..., metavar="SUITE", help="scaling study YAML (study: scaling)"
    ),
    results_dir: Path | None = typer.Option(None, help="override output.results_dir"),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI (default: SQLite under results)"
    ),
    device: str | None = typer.Option(None, help="override device: cpu | cuda | auto"),
    axis: list[str] | None = typer.Option(None, help="sweep only this axis (repeatable)"),
) -> None:
    """Sweep a scaling study (shared parameters, tasks, workers); write its table and page."""
    from mtlbench.harness.runner import ensure_writable
    from mtlbench.harness.scaling import AXES, load_study, run_study
    from mtlbench.harness.scaling_report import build_scaling_page

    try:
        study = load_study(study_path)
        if device:
            if device not in ("cpu", "cuda", "auto"):
                raise ConfigError(f"--device: expected cpu, cuda or auto, got {device!r}")
            study = study.model_copy(update={"device": device})
        if axis:
            unknown = sorted(set(axis) - set(AXES))
            if unknown:
                raise ConfigError(f"--axis: unknown axis {unknown[0]!r} (known: {', '.join(AXES)})")
            kept = {name: (getattr(study.axes, name) if name in axis else None) for name in AXES}
            study = study.model_copy(update={"axes": study.axes.model_copy(update=kept)})
        target = Path(results_dir or study.output.results_dir)
        ensure_writable(target)
        outcome = run_study(study, target, tracking_uri, log=console.print)
    except ConfigError as error:
        _fail(str(error))
    page = build_scaling_page(target)
    console.print(
        f"table: {outcome.table}; {outcome.measured} points measured, {outcome.reused} reused"
    )
    typer.echo(str(page))


@app.command()
def status(
    suite_path: Path = typer.Argument(..., metavar="SUITE", help="suite YAML file"),
    results_dir: Path | None = typer.Option(None, help="override output.results_dir"),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow store to look for running runs: sqlite:///FILE or a server URL"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the status as JSON (for scripts)"),
) -> None:
    """List each run of SUITE: done, running, resumable at step k of about n, failed, or not
    started. Reads the run table, the checkpoints and the MLflow store; changes nothing."""
    import json

    from mtlbench.harness.status import suite_status

    try:
        report = suite_status(load_suite(suite_path), results_dir, tracking_uri)
    except ConfigError as error:
        _fail(str(error))
    for warning in report.warnings:
        typer.echo(f"mtlbench: warning: {warning}", err=True)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    colours = {"done": "green", "running": "cyan", "resumable": "yellow", "failed": "red"}
    table = Table(title=f"suite {report.suite} ({report.results_dir})")
    for column in ("method", "dataset", "seed", "state", "detail"):
        table.add_column(column, no_wrap=column != "detail")
    for run in report.runs:  # Text: a label or an error with [brackets] is not markup
        state = Text(run.state, style=colours.get(run.state, ""))
        table.add_row(Text(run.method_label), run.dataset, str(run.seed), state, Text(run.detail))
    out = Console()
    out.print(table)
    out.print(report.summary(), markup=False, highlight=False, soft_wrap=True)


@app.command()
def info() -> None:
    """List registered methods, datasets (tasks, default model size) and gradient engines."""
    from mtlbench.harness.catalog import method_catalog
    from mtlbench.harness.gradients import engine_names
    from mtlbench.harness.model import count_parameters
    from mtlbench.harness.registry import DATASETS

    out = Console()
    methods = Table(title="methods")
    methods.add_column("name", no_wrap=True)  # names are what a suite types: never folded
    for column in ("family", "paper", "consumes", "per-step cost", "engines", "parameters"):
        methods.add_column(column)
    for entry in method_catalog():
        engines = f"{entry.engines} (default {entry.default_engine})"
        methods.add_row(
            entry.name,
            entry.family,
            entry.paper,
            entry.consumes,
            entry.cost,
            engines,
            entry.parameters,
        )
    out.print(methods)
    datasets = Table(title="datasets")
    datasets.add_column("name", no_wrap=True)
    for column in ("tasks", "default model", "parameters (shared / heads)"):
        datasets.add_column(column)
    for name, cls in DATASETS.items():
        params = cls.Params()
        tasks = ", ".join(f"{t.name} ({t.kind})" for t in cls.taskset(params))
        try:
            model = cls(params).build_model()
            size = f"{count_parameters(model.encoder):,} / {count_parameters(model.heads):,}"
        except Exception as error:  # noqa: BLE001 - info must list every dataset
            size = f"(unavailable: {error})"
        datasets.add_row(name, tasks, cls.model_description, size)
    out.print(datasets)
    out.print("engines: " + ", ".join(engine_names()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
