"""The ``mtlbench`` command: run a suite, list what is registered, build the leaderboard.

Every user error (bad suite, unknown name, unwritable output, bad dataset files) ends with one
line on stderr naming the field or file and the problem, and exit code 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import typer
from mtlbench.harness.config import ConfigError, load_suite
from mtlbench.harness.registry import LOOKUP_ERRORS
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

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        # always click's non-standalone mode: its errors come here, to be written as one line
        outcome_of = functools.partial(
            super().main, args, prog_name, complete_var, False, windows_expand_args, **extra
        )
        if not standalone_mode:
            return outcome_of()
        try:
            outcome = outcome_of()
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


def _fail(message: str) -> NoReturn:
    typer.echo(f"mtlbench: error: {message}", err=True)
    raise typer.Exit(code=2)


PLUGIN_HELP = (
    "a module registering methods, datasets or engines, imported first (repeatable); looked up "
    "in the suite's folder, the working directory, then sys.path"
)


def _import_plugins(plugins: list[str] | None, suite_path: Path | None) -> list[str]:
    """Import the ``--plugin`` modules (ConfigError naming ``--plugin`` if one fails)."""
    from mtlbench.harness.plugins import PluginError, import_plugins

    folder = suite_path.resolve().parent if suite_path is not None else None
    try:
        import_plugins(plugins or [], folder)
    except PluginError as error:
        raise ConfigError(f"--plugin: {error}") from None
    return list(plugins or [])


@app.command()
def run(
    suite_path: Path = typer.Argument(..., metavar="SUITE", help="suite YAML file"),
    results_dir: Path | None = typer.Option(None, help="override output.results_dir"),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI (default: SQLite under results)"
    ),
    executor: str | None = typer.Option(
        None, help="override executor.kind: local, ray or a plugin's executor"
    ),
    address: str | None = typer.Option(None, help="Ray cluster address (with --executor ray)"),
    leaderboard: bool = typer.Option(True, help="rebuild the leaderboard afterwards"),
    progress: bool = typer.Option(True, help="show progress bars"),
    report_every: float = typer.Option(
        60.0,
        metavar="SECONDS",
        help="without progress bars (--no-progress or no terminal): one progress line this often",
    ),
    plugin: list[str] | None = typer.Option(None, metavar="MODULE", help=PLUGIN_HELP),
) -> None:
    """Run every (method, dataset, seed) of SUITE not already recorded.

    The suite is checked whole before any run starts (its fields, then what it asks of this
    machine: a CUDA device, a FLOP budget that pays for one training step). Ctrl-C marks the
    open runs KILLED, says what finished, and exits with code 130.
    """
    from mtlbench.harness.dataset import DatasetFileError
    from mtlbench.harness.leaderboard import build_leaderboard
    from mtlbench.harness.preflight import preflight
    from mtlbench.harness.registry import EXECUTORS
    from mtlbench.harness.runner import run_suite

    try:
        if not report_every > 0 or report_every == float("inf"):
            raise ConfigError(
                f"--report-every: expected a positive number of seconds, got {report_every:g}"
            )
        plugins = _import_plugins(plugin, suite_path)
        if executor is not None and executor not in EXECUTORS:
            known = ", ".join(EXECUTORS.names())
            raise ConfigError(f"--executor: unknown executor {executor!r} (known: {known})")
        suite = load_suite(suite_path, plugins)
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
def leaderboard(
    results_dir: Path = typer.Option(Path("results"), help="folder holding runs/ (Parquet)"),
) -> None:
    """Build results/leaderboard/index.md and index.html from the Parquet table."""
    from mtlbench.harness.leaderboard import build_leaderboard
    from mtlbench.harness.scaling import build_scaling_page

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
    plugin: list[str] | None = typer.Option(None, metavar="MODULE", help=PLUGIN_HELP),
) -> None:
    """Sweep a scaling study (shared parameters, tasks, workers, datasets); write its table and
    page."""
    from mtlbench.harness.runner import ensure_writable
    from mtlbench.harness.scaling import AXES, build_scaling_page, load_study, run_study

    try:
        _import_plugins(plugin, study_path)
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
    plugin: list[str] | None = typer.Option(None, metavar="MODULE", help=PLUGIN_HELP),
) -> None:
    """List each run of SUITE: done, running, resumable at step k of about n, failed, or not
    started. Reads the run table, the checkpoints and the MLflow store; changes nothing."""
    import json

    from mtlbench.harness.status import suite_status

    try:
        plugins = _import_plugins(plugin, suite_path)
        report = suite_status(load_suite(suite_path, plugins), results_dir, tracking_uri)
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
def info(
    plugin: list[str] | None = typer.Option(None, metavar="MODULE", help=PLUGIN_HELP),
) -> None:
    """List registered methods, datasets (tasks, default model size), gradient engines and
    executors (with ``--plugin``: a plugin's too)."""
    from mtlbench.harness.registry import EXECUTORS

    try:
        _import_plugins(plugin, None)
    except ConfigError as error:
        _fail(str(error))
    out = Console()
    out.print(_methods_table())
    out.print(_datasets_table())
    out.print(_engines_table())
    out.print("executors: " + ", ".join(EXECUTORS.names()))


def _methods_table() -> Table:
    from mtlbench.harness.catalog import method_catalog

    table = Table(title="methods")
    table.add_column("name", no_wrap=True)  # names are what a suite types: never folded
    for column in ("family", "paper", "consumes", "per-step cost", "engines", "parameters"):
        table.add_column(column)
    for entry in method_catalog():
        engines = f"{entry.engines} (default {entry.default_engine})"
        table.add_row(
            entry.name,
            entry.family,
            entry.paper,
            entry.consumes,
            entry.cost,
            engines,
            entry.parameters,
        )
    return table


def _datasets_table() -> Table:
    from mtlbench.harness.model import count_parameters
    from mtlbench.harness.registry import DATASETS

    table = Table(title="datasets")
    table.add_column("name", no_wrap=True)
    for column in ("tasks", "default model", "parameters (shared / heads)"):
        table.add_column(column)
    for name, cls in DATASETS.items():
        params = cls.Params()
        tasks = ", ".join(f"{t.name} ({t.kind})" for t in cls.taskset(params))
        try:
            model = cls(params).build_model()
            size = f"{count_parameters(model.encoder):,} / {count_parameters(model.heads):,}"
        except Exception as error:  # any failure: info must list every dataset
            size = f"(unavailable: {error})"
        table.add_row(name, tasks, cls.model_description, size)
    return table


def _engines_table() -> Table:
    from mtlbench.harness.catalog import engine_catalog

    table = Table(title="gradient engines")
    for column in ("name", "what it is", "engine_options (default)"):
        table.add_column(column, no_wrap=column == "name")
    for engine in engine_catalog():
        options = ", ".join(f"{option.name}={option.default}" for option in engine.options)
        table.add_row(engine.name, engine.summary or engine.error, options or "none")
    return table


def _add_package_commands() -> None:
    """Add the commands other packages declare in the ``mtlbench.commands`` entry-point group
    (mtlbench's own ``submit``, from the cluster package): ``name = "module:typer_command"``."""
    from mtlbench.harness.registry import COMMANDS

    for name in COMMANDS.names():
        try:
            command = COMMANDS.get(name)
        except LOOKUP_ERRORS as error:  # one broken package must not take the CLI down
            typer.echo(f"mtlbench: warning: {error}", err=True)
            continue
        app.command(name)(command)


_add_package_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
