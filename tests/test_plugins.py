"""A user's own method and dataset, from a folder outside the package, run in a suite.

The plugin (written to a temporary folder per test) holds a Gram weighting, ``mean of the Gram``
(weights 1/T from the Gram's size, heads updated with the same weights), and a tiny in-memory
regression dataset. The oracle: that weighting's update is Σ_t g_t / T, exactly ``ew``'s, so over
the same steps from the same seed its recorded test losses equal the built-in ``ew``'s run in
the same suite (to float rounding: EW backpropagates Σ w_t L_t once, the weighting combines T
per-task gradients). Plugged in through a suite's ``plugins:``, through ``--plugin`` (the CLI,
local and Ray executors), and through a real entry point (a dist-info on ``sys.path``).
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mtlbench.harness.cli import app
from mtlbench.harness.config import load_suite
from mtlbench.harness.registry import DATASETS, METHODS
from mtlbench.harness.runner import run_suite
from rich.console import Console
from typer.testing import CliRunner

PLUGIN_SOURCE = '''
"""A lab's own method and dataset, registered with mtlbench's decorators."""

import torch
from mtlbench.harness.dataset import MultiTaskDataset, Splits
from mtlbench.harness.method import MethodParams
from mtlbench.harness.model import MultiTaskModel, StackedMLPHeads
from mtlbench.harness.registry import {register_method}, {register_dataset}
from mtlbench.harness.tasks import TaskSet, TaskSpec
from mtlbench.harness.weighting import GramWeighting
from torch import nn
from torch.utils.data import TensorDataset


{method_decorator}
class GramMean(GramWeighting[MethodParams]):
    """Weights 1/T (the Gram's size), heads updated with the same weights: EW's update."""

    paper = "none (a plugin)"

    def weights(self, gram, task_losses):
        return torch.full_like(task_losses, 1.0 / gram.shape[0])

    def head_weights(self, weights):
        return weights


{dataset_decorator}
class Lines(MultiTaskDataset):
    """Two regression tasks y_t = x . w_t + noise, 4 input features, in memory."""

    @classmethod
    def taskset(cls, params):
        return TaskSet([TaskSpec(f"line{{t}}", "regression", 1, hv_reference=10.0)
                        for t in range(2)])

    @classmethod
    def input_shape(cls, params):
        return (4,)

    def load(self):
        generator = torch.Generator().manual_seed(0)
        slopes = torch.randn(4, 2, generator=generator)

        def split(count):
            inputs = torch.randn(count, 4, generator=generator)
            targets = inputs @ slopes + 0.1 * torch.randn(count, 2, generator=generator)
            return TensorDataset(inputs, targets)

        return Splits(split(64), split(32), split(32))

    def build_model(self):
        encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        return MultiTaskModel(encoder, StackedMLPHeads(2, 8, 1, hidden=None), 2)
'''


class Plugin:
    """One plugin module in its own folder, with registry names unique to the test."""

    def __init__(self, folder: Path, decorated: bool = True):
        tag = uuid.uuid4().hex[:8]
        self.folder, self.module = folder, f"lab_plugin_{tag}"
        self.method, self.dataset = f"test_gram_mean_{tag}", f"test_lines_{tag}"
        folder.mkdir(parents=True, exist_ok=True)
        decorators = {
            "register_method": "register_method",
            "register_dataset": "register_dataset",
            "method_decorator": f'@register_method("{self.method}")' if decorated else "",
            "dataset_decorator": f'@register_dataset("{self.dataset}")' if decorated else "",
        }
        (folder / f"{self.module}.py").write_text(PLUGIN_SOURCE.format(**decorators))

    def suite(self, name: str, **extra: object) -> dict[str, object]:
        """A suite: ``ew`` and the plugin's weighting on the plugin's dataset, 6 steps each."""
        return {
            "name": name,
            "datasets": [{"name": self.dataset}],
            "methods": [{"name": "ew"}, {"name": self.method}],
            "seeds": [3],
            "budget": {"flops": 1.0e9},
            "training": {"batch_size": 16, "max_steps": 6, "log_every": 3, "lr": 0.05},
            **extra,
        }

    def forget(self) -> None:
        """Undo what importing the plugin did to this process."""
        METHODS.unregister(self.method)
        DATASETS.unregister(self.dataset)
        sys.modules.pop(self.module, None)
        while str(self.folder.resolve()) in sys.path:
            sys.path.remove(str(self.folder.resolve()))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One results folder for the module (a new MLflow store costs seconds of migrations); the
    tests' datasets have unique names, so their rows are told apart by dataset."""
    return tmp_path_factory.mktemp("plugins") / "results"


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Plugin]:
    made = Plugin(tmp_path / "lab")
    yield made
    made.forget()


def check_records(results: Path, plugin: Plugin) -> None:
    """Both runs completed on the plugin's dataset, and the plugin weighting's test losses equal
    ``ew``'s (the same update; see the module notes)."""
    rows = pd.read_parquet(results / "runs")
    rows = rows[rows["dataset"] == plugin.dataset]
    assert set(rows["status"]) == {"completed"}
    by_method = {row["method"]: row for _, row in rows.iterrows()}
    assert set(by_method) == {"ew", plugin.method}
    assert list(by_method[plugin.method]["task_names"]) == ["line0", "line1"]
    assert by_method["ew"]["steps"] == by_method[plugin.method]["steps"] == 6
    ew_losses = np.asarray(by_method["ew"]["test_losses"], dtype=float)
    plugin_losses = np.asarray(by_method[plugin.method]["test_losses"], dtype=float)
    assert np.all(np.isfinite(ew_losses))
    np.testing.assert_allclose(plugin_losses, ew_losses, rtol=1e-5, atol=1e-6)


def test_a_suite_names_its_plugins(plugin: Plugin, results: Path) -> None:
    """``plugins: [module]`` in the suite, found in the suite's folder; run in this process."""
    suite_path = plugin.folder / "suite.yaml"
    suite_path.write_text(yaml.safe_dump(plugin.suite("lab", plugins=[plugin.module])))
    suite = load_suite(suite_path)
    assert suite.plugins == [plugin.module]
    summary = run_suite(suite, results, console=Console(quiet=True), show_progress=False)
    assert summary.counts == {"completed": 2}
    check_records(results, plugin)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_plugin_option_of_the_cli(
    plugin: Plugin, results: Path, tmp_path: Path, executor: str
) -> None:
    """``mtlbench run SUITE --plugin MODULE`` with a suite that names no plugin. Locally the
    module is found in the working directory (the suite lies elsewhere); on Ray in the suite's
    folder (the working directory elsewhere, so no worker finds it through Ray's own copy of
    the driver's working directory): each worker imports it from where the driver found it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    suite_folder, working_dir = (
        (elsewhere, plugin.folder) if executor == "local" else (plugin.folder, elsewhere)
    )
    suite_path = suite_folder / "suite.yaml"
    executor_config = {"kind": executor, "cpus_per_run": 1, "max_concurrent_runs": 1}
    suite_path.write_text(yaml.safe_dump(plugin.suite("lab", executor=executor_config)))
    command = ["run", str(suite_path), "--plugin", plugin.module, "--results-dir", str(results)]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(working_dir)
        outcome = CliRunner().invoke(app, [*command, "--no-progress", "--no-leaderboard"])
    assert outcome.exit_code == 0, outcome.output
    check_records(results, plugin)


def test_an_entry_point_registers_a_method_and_a_dataset(results: Path, tmp_path: Path) -> None:
    """A distribution on ``sys.path`` whose ``entry_points.txt`` declares the plugin's classes
    (no decorators in its module) in the ``mtlbench.methods`` / ``mtlbench.datasets`` groups:
    known by name, imported on first use, and run by a suite that names no plugin."""
    made = Plugin(tmp_path / "site", decorated=False)
    dist_info = made.folder / f"{made.module}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {made.module}\n")
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(f"""\
            [mtlbench.methods]
            {made.method} = {made.module}:GramMean

            [mtlbench.datasets]
            {made.dataset} = {made.module}:Lines
        """)
    )
    sys.path.insert(0, str(made.folder.resolve()))
    try:
        METHODS.refresh()
        assert made.method in METHODS.names() and made.module not in sys.modules
        assert METHODS.target(made.method) == f"{made.module}:GramMean"
        suite_path = tmp_path / "suite.yaml"
        suite_path.write_text(yaml.safe_dump(made.suite("entry")))
        suite = load_suite(suite_path)
        assert made.module in sys.modules and METHODS.get(made.method).registry_name == made.method
        run_suite(suite, results, console=Console(quiet=True), show_progress=False)
        check_records(results, made)
    finally:
        made.forget()
