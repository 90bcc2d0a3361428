"""Suites on the real datasets: the shipped YAML files load and their budgets are the arithmetic
their comments state; a run on each dataset goes end to end on fixture files (tiny budget)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _dataset_fixtures import write_celeba, write_census, write_idx_dataset, write_utkface
from mtlbench.harness.budget import Budget
from mtlbench.harness.config import load_suite, parse_suite
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.registry import DATASETS
from mtlbench.harness.suite import expand_suite
from mtlbench.harness.trainer import train_run

SUITES = Path(__file__).resolve().parent.parent / "suites"
# suite -> (epochs, training-set size of the published files, input shape of one sample)
PROTOCOLS = {
    "multimnist": (10, 54_000, (1, 28, 28)),
    "utkface": (100, 16_593, (3, 64, 64)),
    "celeba": (100, 162_770, (3, 64, 64)),
    "census": (10, 179_571, (492,)),
}


def ew_step_flops_per_sample(
    name: str, params: dict, shape: tuple[int, ...], loaded: bool = False
) -> float:
    """FLOPs per sample of one EW step (encoder and heads, forward and backward), measured by
    the gradient engine's calibration, as the trainer charges them. loaded: build the model
    after ``load()`` (census: the input width is the files')."""
    cls = DATASETS.get(name)
    dataset_params = cls.Params.model_validate(params)
    taskset = cls.taskset(dataset_params)
    dataset = cls(dataset_params)
    if loaded:
        dataset.load()
    torch.manual_seed(0)
    model = dataset.build_model()
    batch = (torch.randn(2, *shape), torch.zeros(2, len(taskset)))
    costs = get_engine("loop")(model, taskset, Budget("flops", 1e30), batch).costs
    kinds = ("encoder_forward", "heads_forward", "heads_backward", "encoder_backward")
    return sum(costs.per_sample[kind] for kind in kinds)


@pytest.mark.parametrize("suite_name", sorted(PROTOCOLS))
def test_shipped_suite_budget_is_epochs_times_samples_times_step_cost(suite_name) -> None:
    suite = load_suite(SUITES / f"{suite_name}.yaml")
    epochs, train_size, shape = PROTOCOLS[suite_name]
    (dataset,) = suite.datasets
    per_sample = ew_step_flops_per_sample(dataset.name, dataset.params, shape)
    assert suite.budget.flops == pytest.approx(epochs * train_size * per_sample, rel=1e-5)
    assert suite.training.batch_size == 256


def tiny_suite(dataset: str, root: Path, params: dict, batch_size: int = 8) -> dict:
    return {
        "name": f"tiny-{dataset}",
        "datasets": [{"name": dataset, "params": {"data_root": str(root), **params}}],
        "methods": [{"name": "ew"}],
        "budget": {"flops": 1.0},  # replaced below by a few steps' worth
        "training": {"batch_size": batch_size, "log_every": 1, "eval_every": 2},
    }


def build_fixture(dataset: str, root: Path) -> dict:
    """Write the dataset's fixture files; return the dataset params that keep the run tiny."""
    if dataset == "multimnist":
        write_idx_dataset(root / "mnist", train=40, test=12)
        return {"val_fraction": 0.2}
    if dataset == "utkface":
        write_utkface(root, count=30)
        return {"image_size": 16, "width": 4}
    if dataset == "celeba":
        write_celeba(root, [0] * 16 + [1] * 4 + [2] * 4)
        return {"image_size": 16, "width": 4}
    write_census(root, "kdd", train=120, test=30)
    return {"tasks": ["age", "education", "never_married"], "hidden": [32, 16]}


@pytest.mark.parametrize("dataset", ["multimnist", "utkface", "celeba", "census"])
def test_suite_runs_end_to_end_on_fixture_files(tmp_path, dataset) -> None:
    params = build_fixture(dataset, tmp_path)
    data = tiny_suite(dataset, tmp_path, params)
    shape = {"multimnist": (1, 28, 28), "utkface": (3, 16, 16), "celeba": (3, 16, 16)}
    cls = DATASETS.get(dataset)
    loaded = cls(cls.Params.model_validate(data["datasets"][0]["params"]))
    if dataset == "census":
        loaded.load()
        shape["census"] = (loaded.input_features,)
    per_sample = ew_step_flops_per_sample(dataset, loaded.params.model_dump(), shape[dataset], True)
    data["budget"] = {"flops": 4.5 * 8 * per_sample}  # four EW steps of batch 8, not five
    (spec,) = expand_suite(parse_suite(data, "tiny"))
    result = train_run(spec)
    assert result.status == "completed", result.error
    assert result.stop_reason == "budget" and result.steps == 4
    assert result.budget["budget_spent_flops"] <= data["budget"]["flops"]
    (solution,) = result.solutions
    assert len(solution.test_objectives) == len(cls.taskset(loaded.params))
    assert all(torch.isfinite(torch.tensor(solution.test_losses)))


def test_cli_run_without_the_files_ends_with_one_line_naming_the_file(tmp_path) -> None:
    import yaml
    from mtlbench.harness.cli import app
    from typer.testing import CliRunner

    data = tiny_suite("multimnist", tmp_path, {})
    data["budget"] = {"flops": 1e9}
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(data))
    results = tmp_path / "results"
    outcome = CliRunner().invoke(
        app, ["run", str(suite), "--results-dir", str(results), "--no-progress", "--no-leaderboard"]
    )
    assert outcome.exit_code == 2
    last = outcome.output.strip().splitlines()[-1]
    assert last == (
        "mtlbench: error: MNIST: train-images-idx3-ubyte (or train-images-idx3-ubyte.gz) "
        f"not found in {tmp_path / 'mnist'} or {tmp_path / 'MNIST' / 'raw'}"
    )
