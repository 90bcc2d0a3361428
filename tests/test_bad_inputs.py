"""Bad input, as a new user makes it, against a results folder that already holds a finished run.

For each case: exit code 2, exactly one line on stderr (``mtlbench: error: ...``) naming the
field, file or option, no traceback, nothing on stdout, and every file of the results folder
byte-identical afterwards. The suite is checked whole before any run starts (issue 21).

The cases are built from one valid suite (a tiny ``synthetic`` problem, one ``ew`` run, finished
once per module) with one thing wrong. The CLI is called in-process (typer's CliRunner); a few
cases go through a real subprocess to prove the process's exit code. Cases whose check belongs
to the damaged-results work (a corrupt ``mlflow.db``, a tracking server where nothing listens)
are marked as depending on it.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from mtlbench.harness.cli import app
from typer.testing import CliRunner

# One training step of this model on a batch of 16 costs 16 x 1,088 FLOPs: forward 2(8*16 + 2*16*3)
# = 448 per sample; backward 448 for the weight gradients plus 448 - 2*8*16 = 192 for the input
# gradients (none for the first layer's input). 4e5 FLOPs pays for about 23 steps.
VALID: dict[str, Any] = {
    "name": "tiny",
    "datasets": [
        {
            "name": "synthetic",
            "params": {
                "num_tasks": 2,
                "input_features": 8,
                "width": 16,
                "depth": 1,
                "classes": 3,
                "train_samples": 64,
                "val_samples": 32,
                "test_samples": 32,
            },
        }
    ],
    "methods": [{"name": "ew"}],
    "seeds": [0],
    "budget": {"flops": 4.0e5},
    "training": {"batch_size": 16, "log_every": 5},
}
STEP_FLOPS = 16 * 1088


@dataclass
class Case:
    """args(folder, results) -> the command line after ``mtlbench``; ``expected``: a piece of the
    one error line (the field, file or option it names)."""

    args: Callable[[Path, Path], list[str]]
    expected: str
    marks: list[Any] = field(default_factory=list)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A results folder holding one finished run of VALID."""
    folder = tmp_path_factory.mktemp("finished")
    suite = folder / "valid.yaml"
    suite.write_text(yaml.safe_dump(VALID))
    target = folder / "results"
    outcome = CliRunner().invoke(
        app, ["run", str(suite), "--results-dir", str(target), "--no-progress", "--no-leaderboard"]
    )
    assert outcome.exit_code == 0, outcome.output
    assert (target / "mlflow.db").is_file() and any((target / "runs").rglob("*.parquet"))
    return target


def suite_file(folder: Path, results: Path, text: str | bytes) -> list[str]:
    path = folder / "suite.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["run", str(path), "--results-dir", str(results), "--no-progress"]


def changed(change: Callable[[dict[str, Any]], None]) -> Callable[[Path, Path], list[str]]:
    """A suite: VALID with ``change`` applied to a deep copy."""

    def args(folder: Path, results: Path) -> list[str]:
        data = copy.deepcopy(VALID)
        change(data)
        return suite_file(folder, results, yaml.safe_dump(data))

    return args


def setting(path: str, value: Any) -> Callable[[Path, Path], list[str]]:
    """VALID with the field at dotted ``path`` (``methods.0.engine``) set to ``value``."""

    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[int(last) if isinstance(node, list) else last] = value

    return changed(change)


def without(name: str) -> Callable[[Path, Path], list[str]]:
    return changed(lambda data: data.pop(name))


def text(content: str | bytes) -> Callable[[Path, Path], list[str]]:
    return lambda folder, results: suite_file(folder, results, content)


def valid_with_options(*options: str) -> Callable[[Path, Path], list[str]]:
    def args(folder: Path, results: Path) -> list[str]:
        return [*suite_file(folder, results, yaml.safe_dump(VALID)), *options]

    return args


def results_is_a_file(folder: Path, results: Path) -> list[str]:
    (folder / "a-file").write_text("not a folder")
    return [
        *suite_file(folder, results, yaml.safe_dump(VALID))[:2],
        "--results-dir",
        str(folder / "a-file"),
    ]


def unreadable(folder: Path, results: Path) -> list[str]:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    args = suite_file(folder, results, yaml.safe_dump(VALID))
    Path(args[1]).chmod(0)
    return args


def raising_plugin(folder: Path, results: Path) -> list[str]:
    """A suite whose plugin, in the suite's folder, raises when imported (a unique module name:
    a failed import is not cached, but the folder stays on sys.path)."""
    name = f"broken_plugin_{folder.name.replace('-', '_')}"
    (folder / f"{name}.py").write_text("raise RuntimeError('the lab server is down')\n")
    return suite_file(folder, results, yaml.safe_dump({**VALID, "plugins": [name]}))


def colliding_plugin(folder: Path, results: Path) -> list[str]:
    """A suite whose plugin registers another method under the built-in name ``ew``."""
    name = f"colliding_plugin_{folder.name.replace('-', '_')}"
    source = (
        "from mtlbench.harness.registry import register_method\n"
        "from mtlbench.methods.ew import EqualWeighting\n\n\n"
        "@register_method('ew')\nclass Mine(EqualWeighting):\n    pass\n"
    )
    (folder / f"{name}.py").write_text(source)
    return suite_file(folder, results, yaml.safe_dump({**VALID, "plugins": [name]}))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def new_seed_to(tracking: Callable[[Path], str]) -> Callable[[Path, Path], list[str]]:
    """A run not yet recorded (seed 1), tracked at ``tracking(folder)``: it reaches the tracker."""

    def args(folder: Path, results: Path) -> list[str]:
        data = {**copy.deepcopy(VALID), "seeds": [1]}
        return [
            *suite_file(folder, results, yaml.safe_dump(data)),
            "--tracking-uri",
            tracking(folder),
        ]

    return args


def corrupt_store(folder: Path, results: Path) -> list[str]:
    """A copy of the finished results whose mlflow.db is garbage (checked: the copy unchanged)."""
    data = {**copy.deepcopy(VALID), "seeds": [1]}
    return suite_file(folder, results, yaml.safe_dump(data))


CASES: dict[str, Case] = {
    # the file itself
    "missing file": Case(lambda f, r: ["run", str(f / "absent.yaml")], "no such suite file"),
    "a folder": Case(lambda f, r: ["run", str(f)], "is a folder, not a suite file"),
    "empty file": Case(text(""), "the suite file is empty"),
    "only comments": Case(text("# nothing yet\n"), "the suite file is empty"),
    "not a mapping": Case(text("- ew\n- mgda\n"), "the suite must be a YAML mapping, got list"),
    "a scalar": Case(text("quickstart\n"), "the suite must be a YAML mapping, got str"),
    "not UTF-8": Case(text("name: caf\xe9\n".encode("latin-1")), "not UTF-8 text (byte 0xe9"),
    "malformed YAML": Case(text("name: x\nmethods: [ew\n"), "malformed YAML at line"),
    "duplicate key": Case(
        text(yaml.safe_dump(VALID) + "seeds: [3]\n"), "key 'seeds' is given twice (first at line"
    ),
    "duplicate nested key": Case(
        text(yaml.safe_dump(VALID).replace("flops: 400000.0", "flops: 4.0e+5\n  flops: 1.0e+9")),
        "key 'flops' is given twice",
    ),
    "unreadable file": Case(unreadable, "cannot read the suite file"),
    # top level
    "unknown field": Case(setting("colour", "red"), "colour: unknown field"),
    "empty name": Case(setting("name", ""), "name: String should have at least 1 character"),
    "name not a string": Case(setting("name", ["a"]), "name: Input should be a valid string"),
    "no methods": Case(without("methods"), "methods: Field required"),
    "empty methods": Case(setting("methods", []), "methods: List should have at least 1 item"),
    "methods not a list": Case(setting("methods", "ew"), "methods: Input should be a valid list"),
    "empty datasets": Case(setting("datasets", []), "datasets: List should have at least 1 item"),
    "scoring": Case(setting("scoring", "best"), "scoring: Input should be 'final' or 'best_val'"),
    "device value": Case(
        setting("device", "tpu"), "device: Input should be 'cpu', 'cuda' or 'auto'"
    ),
    "cuda without CUDA": Case(setting("device", "cuda"), "device: 'cuda', but this machine has no"),
    # methods
    "unknown method": Case(
        setting("methods.0.name", "nope"), "methods[0].name: unknown method 'nope'"
    ),
    "method entry field": Case(setting("methods.0.weight", 2), "methods[0].weight: unknown field"),
    "method param unknown": Case(
        setting("methods.0.params", {"gamma": 1}), "methods[0].params.gamma: unknown field"
    ),
    "method param type": Case(
        changed(lambda d: d["methods"].__setitem__(0, {"name": "cagrad", "params": {"c": "half"}})),
        "methods[0].params.c: Input should be a valid number",
    ),
    "method param range": Case(
        changed(lambda d: d["methods"].__setitem__(0, {"name": "cagrad", "params": {"c": -1}})),
        "methods[0].params.c: Input should be greater than or equal to 0",
    ),
    "label twice": Case(
        setting("methods", [{"name": "ew"}, {"name": "ew"}]), "methods[1].label: 'ew' is used twice"
    ),
    "unknown engine": Case(
        setting("methods.0.engine", "warp"), "methods[0].engine: unknown engine 'warp'"
    ),
    "engine option typo": Case(
        changed(
            lambda d: d["methods"][0].update(engine="batched", engine_options={"chunksize": 4})
        ),
        "methods[0].engine_options.chunksize: unknown option of engine 'batched' "
        "(known: chunk_size)",
    ),
    "engine option type": Case(
        changed(
            lambda d: d["methods"][0].update(engine="batched", engine_options={"chunk_size": "4"})
        ),
        "methods[0].engine_options.chunk_size: Input should be a valid integer",
    ),
    "option of the loop engine": Case(
        changed(lambda d: d["methods"][0].update(engine="loop", engine_options={"chunk_size": 4})),
        "methods[0].engine_options.chunk_size: engine 'loop' takes no options",
    ),
    "ray_sharded option typo": Case(
        changed(
            lambda d: d["methods"][0].update(engine="ray_sharded", engine_options={"actor": 2})
        ),
        "methods[0].engine_options.actor: unknown option of engine 'ray_sharded' (known: actors,",
    ),
    "engine option chunk": Case(
        changed(lambda d: d["methods"][0].update(engine="batched", engine_options={"chunk": 2})),
        "methods[0].engine_options.chunk: unknown option of engine 'batched' (known: chunk_size)",
    ),
    "engine option range": Case(
        changed(
            lambda d: d["methods"][0].update(engine="batched", engine_options={"chunk_size": 0})
        ),
        "methods[0].engine_options.chunk_size: Input should be greater than or equal to 1",
    ),
    "deepspeed option value": Case(
        changed(
            lambda d: d["methods"][0].update(engine="deepspeed", engine_options={"zero_stage": 5})
        ),
        "methods[0].engine_options.zero_stage: Input should be 0, 1, 2 or 3",
    ),
    # datasets
    "unknown dataset": Case(
        setting("datasets.0.name", "nope"), "datasets[0].name: unknown dataset 'nope'"
    ),
    "dataset param unknown": Case(
        setting("datasets.0.params.tasks", 2), "datasets[0].params.tasks: unknown field"
    ),
    "dataset param range": Case(
        setting("datasets.0.params.num_tasks", 0),
        "datasets[0].params.num_tasks: Input should be greater than or equal to 1",
    ),
    # seeds
    "seed twice": Case(setting("seeds", [0, 0]), "seeds: seed 0 is listed twice"),
    "negative seed": Case(
        setting("seeds", [-1]), "seeds[0]: Input should be greater than or equal to 0"
    ),
    "seed 2^64": Case(setting("seeds", [2**64]), "seeds[0]: Input should be less than 4294967296"),
    "seed 2^32": Case(setting("seeds", [2**32]), "seeds[0]: Input should be less than 4294967296"),
    "seed a string": Case(setting("seeds", ["zero"]), "seeds[0]: Input should be a valid integer"),
    "seed a fraction": Case(setting("seeds", [1.5]), "seeds[0]: Input should be a valid integer"),
    "no seeds": Case(setting("seeds", []), "seeds: List should have at least 1 item"),
    # budget
    "no budget": Case(without("budget"), "budget: Field required"),
    "flops zero": Case(setting("budget.flops", 0), "budget.flops: Input should be greater than 0"),
    "flops negative": Case(
        setting("budget.flops", -5.0), "budget.flops: Input should be greater than 0"
    ),
    "flops infinite": Case(
        setting("budget.flops", float("inf")), "budget.flops: Input should be a finite number"
    ),
    "flops NaN": Case(
        setting("budget.flops", float("nan")), "budget.flops: Input should be a finite number"
    ),
    "flops a word": Case(
        setting("budget.flops", "lots"), "budget.flops: Input should be a valid number"
    ),
    "seconds infinite": Case(
        setting("budget", {"seconds": float("inf")}),
        "budget.seconds: Input should be a finite number",
    ),
    "flops and seconds": Case(
        setting("budget.seconds", 10), "budget: give exactly one of 'flops' or 'seconds'"
    ),
    "budget field": Case(setting("budget.minutes", 3), "budget.minutes: unknown field"),
    "budget below one step": Case(
        setting("budget.flops", STEP_FLOPS - 1),
        "budget.flops: 1.741e+04 does not pay for one training step of datasets[0] ('synthetic'): "
        "1.741e+04 FLOPs (forward and backward of its default model on a batch of 16)",
    ),
    # training, executor, output
    "batch size zero": Case(
        setting("training.batch_size", 0), "training.batch_size: Input should be greater than 0"
    ),
    "training field": Case(setting("training.epochs", 3), "training.epochs: unknown field"),
    "executor kind": Case(
        setting("executor.kind", "slurm"),
        "executor.kind: unknown executor 'slurm' (known: local, ray)",
    ),
    "executor cpus": Case(
        setting("executor.cpus_per_run", 0), "executor.cpus_per_run: Input should be greater than 0"
    ),
    "output field": Case(setting("output.folder", "x"), "output.folder: unknown field"),
    # plugins
    "unknown plugin": Case(
        setting("plugins", ["no_such_plugin_module"]),
        "plugins[0]: no module named 'no_such_plugin_module' (looked in the suite's folder",
    ),
    "plugin not a module name": Case(
        setting("plugins", ["my-methods.py"]), "plugins[0]: 'my-methods.py' is not a module name"
    ),
    "plugin that raises": Case(raising_plugin, "plugins[0]: module 'broken_plugin_"),
    "plugin taking a built-in's name": Case(
        colliding_plugin, "failed to import: DuplicateName: method 'ew' is registered twice"
    ),
    "plugins not a list": Case(setting("plugins", "mine"), "plugins: Input should be a valid list"),
    "plugin option": Case(
        valid_with_options("--plugin", "no_such_plugin_module"),
        "--plugin: no module named 'no_such_plugin_module'",
    ),
    # command-line options
    "results dir a file": Case(results_is_a_file, "output.results_dir: cannot write to"),
    "executor option": Case(
        valid_with_options("--executor", "slurm"), "--executor: unknown executor 'slurm'"
    ),
    "report every zero": Case(
        valid_with_options("--report-every", "0"), "--report-every: expected a positive"
    ),
    "report every word": Case(
        valid_with_options("--report-every", "often"), "Invalid value for '--report-every'"
    ),
    "unknown option": Case(valid_with_options("--colour", "red"), "No such option: --colour"),
    "unknown command": Case(lambda f, r: ["rn", "suite.yaml"], "No such command 'rn'"),
    "no suite argument": Case(lambda f, r: ["run"], "Missing argument 'SUITE'"),
    # the tracking store (engineer S)
    "tracking server not listening": Case(
        new_seed_to(lambda folder: f"http://127.0.0.1:{closed_port()}"),
        "127.0.0.1",
    ),
}


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, id=name, marks=case.marks) for name, case in CASES.items()],
)
def test_bad_input_is_one_line_exit_2_and_results_untouched(
    case: Case, results: Path, tmp_path: Path
) -> None:
    before = snapshot(results)
    outcome = CliRunner().invoke(app, case.args(tmp_path, results))
    lines = outcome.stderr.splitlines()
    assert outcome.exit_code == 2, outcome.output
    assert len(lines) == 1 and lines[0].startswith("mtlbench: error: "), outcome.stderr
    assert case.expected in lines[0]
    assert "Traceback" not in outcome.output and outcome.stdout == ""
    assert outcome.exception is None or isinstance(outcome.exception, SystemExit)
    assert snapshot(results) == before


def test_corrupt_mlflow_db_is_one_line(results: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(results, damaged)
    (damaged / "mlflow.db").write_bytes(b"this is not a SQLite database\n" * 20)
    before = snapshot(damaged)
    outcome = CliRunner().invoke(app, corrupt_store(tmp_path, damaged))
    assert outcome.exit_code == 2, outcome.output
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and "mlflow.db" in lines[0] and "Traceback" not in outcome.output
    assert snapshot(damaged) == before


@pytest.mark.parametrize("name", ["seed 2^64", "cuda without CUDA", "not UTF-8"])
def test_the_process_exit_code_is_2(name: str, results: Path, tmp_path: Path) -> None:
    """The real ``mtlbench`` entry point, in its own process: exit code 2 and one line."""
    before = snapshot(results)
    args = CASES[name].args(tmp_path, results)
    code = "from mtlbench.harness.cli import main; main()"
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [out.stderr.strip()] and CASES[name].expected in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert snapshot(results) == before


def test_enough_cases() -> None:
    assert len(CASES) >= 40


def test_the_pre_flight_boundary_is_the_analytic_step_cost() -> None:
    """Exactly one step (VALID's comment: counted by hand) is accepted; one FLOP less is not."""
    from mtlbench.harness.config import ConfigError, parse_suite
    from mtlbench.harness.preflight import check_budget

    exact = parse_suite({**VALID, "budget": {"flops": float(STEP_FLOPS)}})
    (cost,) = check_budget(exact)
    assert cost.flops == STEP_FLOPS and cost.batch_size == 16
    short = parse_suite({**VALID, "budget": {"flops": STEP_FLOPS - 1.0}})
    with pytest.raises(ConfigError, match=r"^budget\.flops: .* datasets\[0\] \('synthetic'\)"):
        check_budget(short)
    assert check_budget(parse_suite({**VALID, "budget": {"seconds": 1.0}})) == []


def test_ctrl_c_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """SIGINT to a real ``mtlbench run`` once its plan is printed: exit code 130 (128 + SIGINT)."""
    suite = tmp_path / "long.yaml"
    suite.write_text(yaml.safe_dump({**VALID, "budget": {"flops": 1.0e12}}))
    code = "from mtlbench.harness.cli import main; main()"
    command = [sys.executable, "-c", code, "run", str(suite), "--results-dir", str(tmp_path / "r")]
    driver = subprocess.Popen(
        [*command, "--no-progress", "--no-leaderboard"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert driver.stderr is not None
    first = driver.stderr.readline()  # "suite tiny: 1 runs, 0 already recorded, 1 to run"
    assert "1 to run" in first, first
    driver.send_signal(signal.SIGINT)
    _, rest = driver.communicate(timeout=120)
    assert driver.returncode == 130, first + rest
    assert "Traceback" not in rest
