"""Cluster recipes and ``mtlbench submit``: checked against Ray's own schema and CLI definitions.

- the ``ray up`` YAML passes Ray's autoscaler schema (after Ray fills its defaults) and has GPU
  workers, a head that runs no work, and the project mounted and installed; every ``ray start``
  runs with token authentication and every node gets the token file;
- the SLURM script is valid bash; its dry run prints one head and one worker ``ray start`` per
  node and the suite command, every flag of which the real ``ray start`` / ``mtlbench run`` know;
  it makes a private token for the job and refuses to start Ray without token authentication;
- both put the results folder (checkpoints a retried run resumes from) on storage every node
  sees: an EFS (NFS) mount at the same path on every node and in every container for ``ray up``;
  for SLURM a folder under the submit directory by default, checked from every node before Ray
  starts; their header comments say so;
- ``mtlbench submit --dry-run`` builds a ``ray job submit`` whose flags Ray's CLI knows, and the
  code it ships as ``py_modules`` imports as ``mtlbench`` ahead of the installed copy.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import typer
import yaml
from mtlbench.cluster.submit import package_code, project_root
from mtlbench.cluster.wait_for_nodes import main as wait_main
from mtlbench.harness.cli import app
from typer.testing import CliRunner

RECIPES = project_root() / "cluster" / "recipes"


def _flags(command) -> set[str]:
    """Every option spelling a click command accepts (``--num-cpus``, ``-v``, ...)."""
    return {
        spelling for param in command.params for spelling in (*param.opts, *param.secondary_opts)
    }


def _used_flags(tokens: list[str]) -> set[str]:
    return {token.split("=", 1)[0] for token in tokens if token.startswith("-")}


RUN_FLAGS = _flags(typer.main.get_group(app).commands["run"])


def test_ray_up_yaml_passes_rays_schema_and_has_gpu_workers() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((RECIPES / "ray-cluster-gpu.yaml").read_text())
    validate_config(prepare_config(config))  # raises on an unknown or malformed field
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}  # runs land on workers only
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["max_workers"] >= 1 for t in gpu_types)
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    assert config["file_mounts"] == {"~/mtlbench": ".", "~/.ray/auth_token": "~/.ray/auth_token"}
    assert any("pip install" in c and "-e ~/mtlbench" in c for c in config["setup_commands"])
    from ray.scripts.scripts import start

    segments = [
        shlex.split(segment)
        for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
        for segment in command.split(";")
        if "ray start" in segment
    ]
    assert len(segments) == 2
    for tokens in segments:
        assert _used_flags(tokens[tokens.index("start") + 1 :]) <= _flags(start), tokens
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            before_start = command[: command.index("ray start")]
            assert "export RAY_AUTH_MODE=token;" in before_start, command


def test_slurm_script_dry_run_prints_valid_commands() -> None:
    from ray.scripts.scripts import start

    script = RECIPES / "slurm-ray.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "#SBATCH --gpus-per-node=" in script.read_text()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/someone",
        "SLURM_JOB_ID": "4242",
        "DRY_RUN": "1",
        "NODES": "gpu01,gpu02 gpu03",
        "SLURM_CPUS_PER_TASK": "16",
        "SLURM_GPUS_PER_NODE": "a100:4",
    }
    out = subprocess.run(
        ["bash", str(script), "suites/quickstart.yaml", "/shared/results"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    starts = [shlex.split(line.rstrip(" &")) for line in out if " ray start " in line]
    assert len(starts) == 3 and all(line.endswith(" &") for line in out if " ray start " in line)
    head, *workers = starts
    assert (
        head[:6] == ["srun", "--nodes=1", "--ntasks=1", "-w", "gpu01", "ray"] and "--head" in head
    )
    assert {w[4] for w in workers} == {"gpu02", "gpu03"}
    assert all("--address=gpu01:6379" in w for w in workers)
    for line in starts:
        assert "--num-cpus=16" in line and "--num-gpus=4" in line and "--block" in line
        assert _used_flags(line[line.index("start") + 1 :]) <= _flags(start)
    waits = [shlex.split(line) for line in out if "wait_for_nodes" in line]
    assert [w[w.index("--nodes") + 1] for w in waits] == ["1", "3"]
    suite_lines = [shlex.split(line) for line in out if line.startswith("mtlbench run")]
    assert len(suite_lines) == 1 and out[-1].startswith("mtlbench run")
    suite = suite_lines[0]
    assert suite[2] == "suites/quickstart.yaml" and _used_flags(suite) <= RUN_FLAGS
    assert suite[suite.index("--address") + 1] == "gpu01:6379"
    assert suite[suite.index("--executor") + 1] == "ray"
    assert suite[suite.index("--results-dir") + 1] == "/shared/results"
    token_file = "/home/someone/.ray/mtlbench-4242.token"
    first_start = next(i for i, line in enumerate(out) if " ray start " in line)
    assert "check_shared /shared/results" in out[:first_start]
    assert out.index(f"make_token {token_file}") < first_start
    assert f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token_file}" in out[:first_start]


def _header(path: Path) -> str:
    """The leading comment block of a recipe, ``#`` marks and line continuations removed."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#!").removeprefix(" "))
    return "\n".join(lines).replace("\\\n", " ")


def test_ray_up_yaml_puts_the_results_folder_on_storage_every_node_sees() -> None:
    recipe = RECIPES / "ray-cluster-gpu.yaml"
    config = yaml.safe_load(recipe.read_text())
    assert all("initialization_commands" not in t for t in config["available_node_types"].values())
    mounts = [
        shlex.split(segment)
        for command in config["initialization_commands"]
        for segment in command.split(";")
        if "mount -t nfs4" in segment
    ]
    assert len(mounts) == 1
    mount = mounts[0]
    options = mount[mount.index("-o") + 1].split(",")
    assert "nfsvers=4.1" in options and "hard" in options  # EFS's recommended client options
    server, mount_point = mount[-2:]
    assert server.endswith(".amazonaws.com:/") and mount_point.startswith("/")
    assert f"--volume={mount_point}:{mount_point}" in config["docker"]["run_options"]

    header = _header(recipe)
    assert "Shared results folder" in header and mount_point in header
    [submit_line] = [line for line in header.splitlines() if " mtlbench submit " in line]
    submit = shlex.split(submit_line)[1:]  # after RAY_AUTH_MODE=token
    assert _used_flags(submit) <= _flags(typer.main.get_group(app).commands["submit"])
    results_dir = Path(submit[submit.index("--results-dir") + 1])
    assert results_dir.is_relative_to(mount_point) and results_dir != Path(mount_point)


def test_slurm_script_results_default_to_the_submit_dir_and_say_so() -> None:
    script = RECIPES / "slurm-ray.sbatch"
    out = subprocess.run(
        ["bash", str(script), "suites/quickstart.yaml"],
        env={"PATH": "/usr/bin:/bin", "HOME": "/h", "DRY_RUN": "1", "NODES": "a b"},
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert "check_shared /results" in out  # no SLURM_SUBMIT_DIR: the folder it was run from
    out = subprocess.run(
        ["bash", str(script), "suites/quickstart.yaml"],
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": "/h",
            "DRY_RUN": "1",
            "NODES": "a b",
            "SLURM_SUBMIT_DIR": "/project/me",
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    first_start = next(i for i, line in enumerate(out) if " ray start " in line)
    assert "check_shared /project/me/results" in out[:first_start]
    suite = shlex.split(out[-1])
    assert suite[suite.index("--results-dir") + 1] == "/project/me/results"
    header = _header(script)
    assert "Shared results folder" in header and "$SLURM_SUBMIT_DIR" in header
    assert "shared scratch" in header and "node-local" in header


@pytest.mark.parametrize(
    ("srun", "folder", "code", "message"),
    [
        ('srun() { while [[ $1 == -* ]]; do shift; done; "$@"; }', "shared", 0, ""),
        (
            "srun() { return 1; }",  # a node does not see the probe
            "shared",
            2,
            " is not seen by every node; put it on shared storage",
        ),
        ("srun() { :; }", "file/below", 2, ": cannot write there"),
    ],
)
def test_slurm_check_shared(tmp_path: Path, srun: str, folder: str, code: int, message: str):
    """``check_shared``: the probe written in the folder must be found by a task on every node
    (``srun`` here runs on this machine, or fails as a node without the folder would)."""
    script = (RECIPES / "slurm-ray.sbatch").read_text()
    start = script.index("check_shared() {")
    function = script[start : script.index("\n}\n", start) + 3]
    (tmp_path / "file").write_text("a file, not a folder")
    target = tmp_path / folder
    checked = subprocess.run(
        ["bash", "-c", f'{srun}\n{function}\nHOSTS=(a b)\ncheck_shared "$1"', "-", str(target)],
        env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "7"},
        capture_output=True,
        text=True,
    )
    assert checked.returncode == code, checked.stderr
    if code:
        assert checked.stderr == f"slurm-ray.sbatch: RESULTS_DIR={target}{message}\n"
    assert target.is_dir() == (folder == "shared")
    if target.is_dir():
        assert list(target.iterdir()) == []  # the probe is removed, whatever the outcome


def test_slurm_script_makes_a_private_token_and_refuses_ray_without_auth(tmp_path: Path) -> None:
    script = (RECIPES / "slurm-ray.sbatch").read_text()
    maker = script[
        script.index("make_token() {") : script.index("}", script.index("make_token() {")) + 1
    ]
    token_file = tmp_path / "ray" / "job.token"
    subprocess.run(["bash", "-c", f'{maker}\nmake_token "$1"', "-", str(token_file)], check=True)
    token = token_file.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 bits as hex, as Ray's own tokens
    assert token_file.stat().st_mode & 0o777 == 0o600
    refused = subprocess.run(
        ["bash", str(RECIPES / "slurm-ray.sbatch"), "suites/quickstart.yaml"],
        env={"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "NODES": "a", "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "ray start" not in refused.stdout
    assert "needs token authentication" in refused.stderr


def test_submit_dry_run_builds_a_ray_job_submit_that_ray_accepts() -> None:
    from ray.dashboard.modules.job.cli import submit as ray_job_submit

    root = project_root()
    outcome = CliRunner().invoke(
        app,
        [
            "submit",
            str(root / "suites" / "quickstart.yaml"),
            "--address",
            "http://head:8265",
            "--tracking-uri",
            "http://mlflow:5000",
            "--dry-run",
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    job = json.loads(outcome.stdout)
    assert job["address"] == "http://head:8265"
    assert job["runtime_env"]["working_dir"] == str(root)
    assert "results" in job["runtime_env"]["excludes"] and job["runtime_env"]["py_modules"]
    entry = shlex.split(job["entrypoint"])
    assert entry[:5] == ["python", "-m", "mtlbench.harness.cli", "run", "suites/quickstart.yaml"]
    assert _used_flags(entry[4:]) <= RUN_FLAGS
    assert entry[entry.index("--executor") + 1] == "ray"
    assert entry[entry.index("--tracking-uri") + 1] == "http://mlflow:5000"
    assert (
        entry[entry.index("--results-dir") + 1] == "$HOME/mtlbench-results"
    )  # expanded on the head

    command = shlex.split(job["ray_job_submit"])
    assert command[:3] == ["ray", "job", "submit"]
    separator = command.index("--")
    assert _used_flags(command[3:separator]) <= _flags(ray_job_submit)
    assert command[separator + 1 : separator + 3] == ["bash", "-c"]
    assert shlex.split(command[separator + 3]) == entry
    runtime_env = json.loads(command[command.index("--runtime-env-json") + 1])
    assert runtime_env["excludes"] == job["runtime_env"]["excludes"]


def test_submit_refuses_a_suite_outside_the_working_dir(tmp_path: Path) -> None:
    suite = tmp_path / "elsewhere.yaml"
    suite.write_text((project_root() / "suites" / "quickstart.yaml").read_text())
    outcome = CliRunner().invoke(app, ["submit", str(suite), "--dry-run"])
    assert outcome.exit_code == 2
    assert "is not inside the working directory" in outcome.output


def test_shipped_code_imports_ahead_of_the_installed_copy(tmp_path: Path) -> None:
    """What ``py_modules`` puts on a worker's path is the ``mtlbench`` that gets imported."""
    package = package_code(tmp_path)
    probe = (
        "import mtlbench.harness.cli, mtlbench.cluster.sharded, mtlbench.methods.ew as m; "
        "print(m.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(out).is_relative_to(package)


def test_wait_for_nodes_times_out_with_one_line(capsys) -> None:
    """No head at that address: exit 1 and one line naming the address (a live cluster is
    covered in tests/test_ray_executor.py)."""
    assert wait_main(["--address", "127.0.0.1:1", "--nodes", "1", "--timeout", "0"]) == 1
    assert (
        capsys.readouterr().err.strip()
        == "wait_for_nodes: no Ray head answered at 127.0.0.1:1 within 0 s"
    )
