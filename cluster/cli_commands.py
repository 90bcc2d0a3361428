"""Commands that the ``mtlbench`` CLI takes from the cluster package: ``mtlbench submit``.

Declared in the ``mtlbench.commands`` entry-point group (pyproject.toml) and added to the CLI by
:mod:`mtlbench.harness.cli`, which names no cluster module. Imports only typer at module level:
the CLI imports this module each time it starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from mtlbench.harness.config import ConfigError
from rich.console import Console


def _fail(message: str) -> NoReturn:
    """The CLI's user error: one line on stderr, exit code 2."""
    typer.echo(f"mtlbench: error: {message}", err=True)
    raise typer.Exit(code=2)


def submit(
    suite_path: Annotated[
        Path, typer.Argument(metavar="SUITE", help="suite YAML file inside the project")
    ],
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray job server (dashboard) address, e.g. http://head:8265 (default: RAY_ADDRESS)"
        ),
    ] = None,
    results_dir: Annotated[
        str | None,
        typer.Option(
            help="results folder, on storage every node sees (e.g. /mnt/efs/mtlbench-results "
            "with the ray-up recipe) so a retried run finds its checkpoints "
            "[default: $HOME/mtlbench-results]"
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI the job writes to")
    ] = None,
    working_dir: Annotated[
        Path | None,
        typer.Option(help="folder uploaded as the job's working dir [default: the project]"),
    ] = None,
    ship_code: Annotated[
        bool, typer.Option(help="ship this checkout's code with the job (py_modules)")
    ] = True,
    dry_run: Annotated[
        bool,
        typer.Option(help="print the job (JSON) and the equivalent `ray job submit`; send nothing"),
    ] = False,
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
    Console(stderr=True).print(
        f"submitted; follow it with: ray job logs --follow {submission_id}{where}"
    )
