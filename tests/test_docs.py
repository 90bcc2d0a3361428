"""The documentation states what the code does: its worked examples run, its tables name exactly
what the code has, and its rules hold in the source.

- The "add a method" / "add a dataset" examples (``docs/examples/``) run as a user would: a suite
  that names them in ``plugins:``, through the CLI in a fresh process (so nothing they register
  stays in this one); their numbers are checked against independent computations.
- The results-schema page's MLflow metric table covers every metric a run writes, and
  ``COLUMN_DESCRIPTIONS`` every Parquet column (the page's column tables are generated from it).
- The design page's import table and "a method never calls backward()" hold in the source.
- Every registered dataset is in the datasets page; the README's example weighting is the docs'.
The site itself is built by ``mkdocs build --strict`` in CI (broken links, missing pages).
"""

from __future__ import annotations

import ast
import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from mtlbench.harness import records
from mtlbench.harness.config import parse_suite
from mtlbench.harness.registry import DATASETS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
PACKAGES = {"harness", "methods", "datasets", "cluster"}


# ---- the worked examples, run through the plugin mechanism -----------------------------------
@pytest.fixture(scope="module")
def plugin_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The results folder of ``mtlbench run docs/examples/plugin_suite.yaml`` (a fresh process)."""
    results = tmp_path_factory.mktemp("plugin_example")
    command = [
        sys.executable,
        "-m",
        "mtlbench.harness.cli",
        "run",
        str(EXAMPLES / "plugin_suite.yaml"),
        "--results-dir",
        str(results),
        "--no-progress",
        "--no-leaderboard",
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return results


def two_task_hypervolume(points: list[list[float]], reference: list[float]) -> float:
    """Area dominated by 2-d minimisation points up to ``reference``, by a sweep along the first
    objective (an oracle independent of ``harness/hypervolume.py``)."""
    inside = sorted(p for p in points if p[0] < reference[0] and p[1] < reference[1])
    area, best_second = 0.0, reference[1]
    for index, (first, second) in enumerate(inside):
        best_second = min(best_second, second)
        next_first = inside[index + 1][0] if index + 1 < len(inside) else reference[0]
        area += (next_first - first) * (reference[1] - best_second)
    return area


def test_the_plugin_examples_train_and_record_their_front(plugin_results: Path) -> None:
    table = pq.read_table(plugin_results / "runs").to_pylist()
    assert sorted(row["method"] for row in table) == ["ew", "unit_norm"]
    for row in table:
        assert row["status"] == "completed", row["error"]
        assert row["dataset"] == "side_and_radius"
        assert row["task_names"] == ["side", "radius"]
        assert row["hv_reference"] == [1.0, 2.0]
        assert row["steps"] > 10
        assert 0 < row["budget_spent_flops"] <= row["budget_limit"]
        side_error, radius_mae = row["test_objectives"]
        assert 0 <= side_error < 0.5  # better than chance after training
        assert row["test_metrics"][0] == pytest.approx(1 - side_error)
        recomputed = two_task_hypervolume([row["test_objectives"]], row["hv_reference"])
        assert row["hypervolume"] == pytest.approx(recomputed, rel=1e-9)
        assert radius_mae > 0


def test_every_mlflow_metric_a_run_writes_is_documented(plugin_results: Path) -> None:
    page = (DOCS / "results-schema.md").read_text()
    section = page[page.index("### Metrics") : page.index("### Parameters")]
    cells = re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE)
    # `<task>`, `<key>`... stand for any name (re.escape leaves < and > alone)
    patterns = [re.compile(re.sub(r"<[a-z]+>", ".+", re.escape(cell))) for cell in cells]
    assert len(patterns) > 20
    client = MlflowClient(f"sqlite:///{plugin_results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("plugin_example")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`mtlbench.kind` = 'run'")
    assert len(runs) == 2
    keys = {key for run in runs for key in run.data.metrics}
    assert {"hypervolume", "train.weights.side", "anytime.test_hypervolume"} <= keys
    undocumented = sorted(key for key in keys if not any(p.fullmatch(key) for p in patterns))
    assert undocumented == [], f"docs/results-schema.md lacks MLflow metrics {undocumented}"


@pytest.fixture
def example_dataset():
    """The example dataset module, imported in this process and unregistered afterwards."""
    spec = importlib.util.spec_from_file_location(
        "side_and_radius", EXAMPLES / "side_and_radius.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        yield DATASETS.get("side_and_radius")
    finally:
        DATASETS.unregister("side_and_radius")


def test_the_example_dataset_computes_what_its_docstring_says(example_dataset) -> None:
    params = example_dataset.Params(samples=50)
    dataset = example_dataset(params)
    splits = dataset.load()
    points, targets = splits.test.tensors
    assert points.shape == (50, *example_dataset.input_shape(params))
    torch.testing.assert_close(targets[:, 0], (points[:, 0] > 0).float())
    expected_radius = torch.tensor([math.hypot(x, y) for x, y in points.tolist()])
    torch.testing.assert_close(targets[:, 1], expected_radius)
    assert not torch.equal(splits.train.tensors[0], points)  # three different draws
    model = dataset.build_model()
    side_logits, radius = model(points)
    assert side_logits.shape == (50, 2) and radius.shape == (50, 1)
    stand_in_points, stand_in_targets = example_dataset.stand_in_batch(
        params, 8, torch.Generator().manual_seed(0)
    )
    assert stand_in_points.shape == (8, 2) and stand_in_targets.shape == (8, 2)


def test_the_readme_example_weighting_is_the_docs_example() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Add a method") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    assert match.group(1) == (EXAMPLES / "unit_norm.py").read_text()


# ---- tables that must name exactly what the code has ------------------------------------------
@pytest.mark.parametrize("record_type", [records.RunRecord, records.EvaluationRecord])
def test_every_parquet_column_has_a_description(record_type: type) -> None:
    described = records.COLUMN_DESCRIPTIONS[record_type.__name__]
    assert sorted(described) == sorted(records.schema_of(record_type).names)
    assert all(len(text) > 5 for text in described.values())


def test_every_registered_dataset_is_in_the_datasets_page() -> None:
    page = (DOCS / "datasets.md").read_text()
    missing = [name for name in DATASETS.names() if f"| `{name}` |" not in page]
    assert missing == []


def test_every_suite_shown_in_concepts_is_valid() -> None:
    page = (DOCS / "concepts.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", page, re.DOTALL) if "name:" in b]
    assert blocks
    for block in blocks:
        suite = parse_suite(yaml.safe_load(block), "docs/concepts.md")
        assert [m.name for m in suite.methods][:2] == ["single_task", "ew"]


# ---- the design page's rules hold in the source -----------------------------------------------
def _imported_packages(path: Path) -> set[str]:
    """The mtlbench packages (``harness``, ``methods``, ...) that a source file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        found |= {name.split(".")[1] for name in names if name.startswith("mtlbench.")}
    return found


def test_the_design_pages_import_rules_hold() -> None:
    page = (DOCS / "design.md").read_text()
    section = page[page.index("## Who may import whom") :]
    rules = {
        package: set(re.findall(r"`mtlbench\.(\w+)`", allowed))
        for package, allowed in re.findall(r"^\| `mtlbench\.(\w+)` \| (.*) \|$", section, re.M)
    }
    assert set(rules) == PACKAGES
    offenders = [
        f"{path.relative_to(ROOT)} imports mtlbench.{imported}"
        for package in sorted(PACKAGES)
        for path in sorted((ROOT / package).rglob("*.py"))
        for imported in sorted(_imported_packages(path) - rules[package])
    ]
    assert offenders == []


def test_a_method_never_calls_backward_itself() -> None:
    """Every ``.backward(...)`` call under methods/ is the engine's (``engine.backward``)."""
    offenders = []
    for path in sorted((ROOT / "methods").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "backward"
            ):
                receiver = ast.unparse(node.func.value)
                if receiver.split(".")[-1] != "engine":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {receiver}")
    assert offenders == []
