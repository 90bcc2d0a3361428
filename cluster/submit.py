"""``mtlbench submit``: a suite as a Ray job, with this project as the job's working directory.

The job runs ``mtlbench run SUITE --executor ray`` on the cluster's head node (its driver), so
the runs spread over the cluster as Ray tasks and the records are written on the head, by one
writer. The project folder is uploaded as the job's ``working_dir`` (so the suite path is
relative to it); the code itself is shipped as a ``py_modules`` package ``mtlbench/`` copied from
``harness/``, ``methods/``, ``datasets/`` and ``cluster/``, so every worker runs exactly the
submitter's code (the cluster only needs the dependencies: torch, ray, mlflow, pyarrow, ...).

``address`` is the cluster's *dashboard* (job server) address, e.g. ``http://head:8265``, not
the ``head:6379`` that ``ray.init`` takes; ``RAY_ADDRESS`` is used when it is not given.
"""

from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE_FOLDERS = ("harness", "methods", "datasets", "cluster")
UPLOAD_EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "results",
    "**/__pycache__",
    "*.parquet",
    "*.db",
    "*.pt",
    "mlruns",
    "mlartifacts",
]
DEFAULT_RESULTS_DIR = "$HOME/mtlbench-results"  # on the head node; expanded by the job's shell


class SubmitError(ValueError):
    """The submission cannot be built; one line naming the argument and the problem."""


def project_root() -> Path:
    """The checkout this mtlbench is installed from (holds pyproject.toml and the packages)."""
    import mtlbench.harness

    return Path(mtlbench.harness.__file__).resolve().parent.parent


@dataclass
class Submission:
    """What is sent to the job server: the entrypoint (a shell command) and its runtime env."""

    address: str | None
    entrypoint: str
    working_dir: Path
    ship_code: bool
    runtime_env: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    def ray_job_submit_command(self, packaged: str = "<packaged mtlbench>") -> list[str]:
        """The equivalent ``ray job submit`` command line (``packaged``: the py_modules path)."""
        env = dict(self.runtime_env)
        if self.ship_code:
            env["py_modules"] = [packaged]
        command = ["ray", "job", "submit"]
        if self.address:
            command += ["--address", self.address]
        command += ["--working-dir", str(self.working_dir), "--runtime-env-json", json.dumps(env)]
        if self.metadata:
            command += ["--metadata-json", json.dumps(self.metadata)]
        command += ["--", "bash", "-c", self.entrypoint]
        return command

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``--dry-run`` prints)."""
        env = {"working_dir": str(self.working_dir), **self.runtime_env}
        if self.ship_code:
            env["py_modules"] = [f"<copy of {', '.join(PACKAGE_FOLDERS)} as mtlbench/>"]
        return {
            "address": self.address,
            "entrypoint": self.entrypoint,
            "runtime_env": env,
            "metadata": self.metadata,
            "ray_job_submit": shlex.join(self.ray_job_submit_command()),
        }


def build_submission(
    suite_path: Path,
    address: str | None = None,
    results_dir: str | None = None,
    tracking_uri: str | None = None,
    working_dir: Path | None = None,
    ship_code: bool = True,
) -> Submission:
    """The job for ``suite_path``, which must lie inside ``working_dir`` (default: the project)."""
    from mtlbench.harness.config import load_suite

    suite = load_suite(suite_path)  # fail here, not on the cluster, on a bad suite
    root = Path(working_dir or project_root()).resolve()
    try:
        relative = Path(suite_path).resolve().relative_to(root)
    except ValueError:
        raise SubmitError(
            f"SUITE: {suite_path} is not inside the working directory {root} that is uploaded"
        ) from None
    results = shlex.quote(results_dir) if results_dir else f'"{DEFAULT_RESULTS_DIR}"'
    command = [
        "python",
        "-m",
        "mtlbench.harness.cli",
        "run",
        shlex.quote(relative.as_posix()),
        "--executor",
        "ray",
        "--results-dir",
        results,
        "--no-progress",
    ]
    if tracking_uri:
        command += ["--tracking-uri", shlex.quote(tracking_uri)]
    runtime_env: dict[str, Any] = {"excludes": list(UPLOAD_EXCLUDES)}
    return Submission(
        address=address,
        entrypoint=" ".join(command),
        working_dir=root,
        ship_code=ship_code,
        runtime_env=runtime_env,
        metadata={"mtlbench.suite": suite.name},
    )


def package_code(destination: Path, root: Path | None = None) -> Path:
    """Copy the packages into ``destination/mtlbench`` (a regular package); returns that folder."""
    root = Path(root or project_root())
    package = Path(destination) / "mtlbench"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        '"""mtlbench, shipped to a Ray cluster by mtlbench submit."""\n'
    )
    for folder in PACKAGE_FOLDERS:
        shutil.copytree(
            root / folder, package / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    return package


def submit(submission: Submission) -> str:
    """Send the job; returns its submission id (follow it with ``ray job logs --follow``)."""
    import tempfile

    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(submission.address)
    runtime_env = {"working_dir": str(submission.working_dir), **submission.runtime_env}
    with tempfile.TemporaryDirectory(prefix="mtlbench-submit-") as staging:
        if submission.ship_code:
            runtime_env["py_modules"] = [str(package_code(Path(staging)))]
        return client.submit_job(
            entrypoint=submission.entrypoint, runtime_env=runtime_env, metadata=submission.metadata
        )
