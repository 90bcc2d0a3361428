"""Scaling studies: power-law fits, the synthetic problem's size, the FLOP tally against an
analytic count, peak memory, and a small study end to end through the CLI (table, MLflow, page)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from mtlbench.datasets.synthetic import shared_parameter_count, width_for_shared_parameters
from mtlbench.harness.cli import app
from mtlbench.harness.config import ConfigError
from mtlbench.harness.scaling import (
    PeakMemory,
    WorkersConfig,
    fit_power_law,
    parse_study,
    study_points,
)
from typer.testing import CliRunner

STUDY = {
    "name": "tiny-scaling",
    "study": "scaling",
    "methods": [{"name": "ew"}, {"name": "ew", "label": "ew-batched", "engine": "batched"}],
    "axes": {"shared_parameters": [1.0e3, 1.0e4], "tasks": [2, 3], "workers": [1, 2]},
    "base": {"shared_parameters": 2.0e3, "tasks": 2},
    "problem": {
        "input_features": 16,
        "depth": 2,
        "train_samples": 256,
        "val_samples": 64,
        "test_samples": 128,
    },
    "timing": {"warmup": 1, "repeats": 2},
    "budget": {"ew_steps": 3},
    "training": {"batch_size": 32},
    "workers": {"engine": "no_such_engine"},
}


def test_power_law_slope_recovered() -> None:
    x = np.array([1e4, 3e4, 1e5, 1e6, 1e7])
    fit = fit_power_law(x, 3.0 * x**1.7)
    assert fit.slope == pytest.approx(1.7, abs=1e-9) and math.exp(fit.intercept) == pytest.approx(
        3.0
    )
    noisy = 3.0 * x**0.5 * np.exp(np.random.default_rng(0).normal(0, 0.01, len(x)))
    assert fit_power_law(x, noisy).slope == pytest.approx(0.5, abs=0.02)
    # non-positive or non-finite points are left out; fewer than two points give NaN
    assert fit_power_law([1, 2, 4, 8], [0, 2, 4, float("nan")]).slope == pytest.approx(1.0)
    assert math.isnan(fit_power_law([1, 2], [5, -1]).slope)


def test_width_solves_for_the_target_size() -> None:
    for target in (1e3, 1e4, 1e5, 1e6, 1e7):
        width = width_for_shared_parameters(target, 64, 3)
        brute = min(range(1, 5000), key=lambda w: abs(shared_parameter_count(64, w, 3) - target))
        assert width == brute
    model_count = sum(
        p.numel()
        for p in torch.nn.Sequential(torch.nn.Linear(64, 30), torch.nn.Linear(30, 30)).parameters()
    )
    assert shared_parameter_count(64, 30, 2) == model_count


def test_study_errors_are_one_line() -> None:
    cases = [
        (
            {"axes": {"tasks": [4, 2]}},
            "axes.tasks: Value error, values must be strictly increasing",
        ),
        ({"axes": {}}, "axes: give at least one of"),
        ({"methods": [{"name": "nope"}]}, "methods[0].name: unknown method 'nope'"),
        ({"budget": {"ew_steps": 3, "flops": 1.0}}, "budget: give exactly one"),
    ]
    for change, expected in cases:
        with pytest.raises(ConfigError) as caught:
            parse_study({**STUDY, **change}, "study.yaml")
        message = str(caught.value)
        assert "\n" not in message and message.startswith("study.yaml: ")
        assert expected.replace("Value error, ", "") in message, message


def test_points_sweep_one_axis_at_a_time() -> None:
    points = study_points(parse_study(STUDY))
    assert [(p.axis, p.axis_value) for p in points] == [
        ("shared_parameters", 1e3),
        ("shared_parameters", 1e4),
        ("tasks", 2),
        ("tasks", 3),
        ("workers", 1),
        ("workers", 2),
    ]
    base_width = width_for_shared_parameters(2e3, 16, 2)
    assert all(p.width == base_width for p in points if p.axis != "shared_parameters")
    assert all(p.tasks == 2 for p in points if p.axis != "tasks")


@pytest.mark.skipif(
    PeakMemory(torch.device("cpu")).measure != "rss_high_water",
    reason="needs /proc/self/clear_refs",
)
def test_peak_memory_sees_a_step_allocation() -> None:
    probe = PeakMemory(torch.device("cpu"))
    for _ in range(2):  # the second time, glibc serves the blocks from memory freed the first
        probe.reset()
        blocks = [torch.ones(4 * 2**20) for _ in range(4)]  # 4 x 16 MiB, touched
        del blocks
        peak, above = probe.read()
        assert above >= 60 * 2**20 and peak >= above
    probe.reset()
    assert probe.read()[1] < 8 * 2**20  # nothing allocated: no peak above the level at reset


def _analytic_ew_step_flops(batch: int, widths: list[int], tasks: int, classes: int) -> int:
    """Matmul FLOPs of one EW step of the synthetic MLP (2 per multiply-add): forward, weight
    gradients, input gradients (none for the first layer: the inputs need no gradient)."""
    encoder = sum(a * b for a, b in itertools.pairwise(widths))
    first = widths[0] * widths[1]
    heads = tasks * widths[-1] * classes
    return 2 * batch * (encoder + encoder + (encoder - first) + 3 * heads)


def test_small_study_end_to_end(tmp_path: Path) -> None:
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(STUDY))
    results = tmp_path / "results"
    outcome = CliRunner().invoke(app, ["scale", str(study_file), "--results-dir", str(results)])
    assert outcome.exit_code == 0, outcome.output
    rows = pq.read_table(results / "scaling" / "tiny-scaling.parquet").to_pylist()
    assert len(rows) == 12  # 6 points x 2 methods
    measured = [r for r in rows if r["axis"] != "workers"]
    assert {r["status"] for r in measured} == {"ok"}, [r["error"] for r in measured]
    assert {r["status"] for r in rows if r["axis"] == "workers"} == {"skipped"}
    for row in measured:
        widths = [16] + [row["width"]] * 2
        assert row["flops_per_step"] == pytest.approx(
            _analytic_ew_step_flops(32, widths, row["tasks"], 4), rel=1e-9
        )
        assert row["flops_per_step"] == pytest.approx(row["ew_step_flops"])
        assert row["step_seconds"] > 0 and row["samples_per_second"] == pytest.approx(
            32 / row["step_seconds"]
        )
        assert row["hv_status"] == "completed" and 0 <= row["hypervolume"] <= 1
        assert row["hv_steps"] == 3  # budget = 3 EW steps' FLOPs
    sizes = sorted(
        (r["shared_parameters"], r["flops_per_step"])
        for r in measured
        if r["axis"] == "shared_parameters" and r["method_label"] == "ew"
    )
    assert (
        0.8 < fit_power_law(*zip(*sizes, strict=True)).slope < 1.05
    )  # FLOPs grow about linearly in P

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny-scaling")
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "shared_parameters.ew.flops_per_step")
    assert sorted(m.step for m in history) == [s for s, _ in sizes]
    assert "shared_parameters.ew.slope.flops_per_step" in run.data.metrics
    assert "no_such_engine" in run.data.tags["mtlbench.notes"]

    board = results / "leaderboard"
    assert (board / "scaling.html").stat().st_size > 10_000 and "data:image/png;base64" in (
        board / "scaling.html"
    ).read_text()
    markdown = (board / "scaling.md").read_text()
    assert "| ew-batched | 2 |" in markdown and "no_such_engine" in markdown
    assert (board / "scaling_tiny-scaling_shared_parameters.png").stat().st_size > 0
    assert (board / "scaling_tiny-scaling_tasks.png").stat().st_size > 0

    again = CliRunner().invoke(
        app, ["scale", str(study_file), "--results-dir", str(results), "--axis", "tasks"]
    )
    assert again.exit_code == 0, again.output
    assert "0 points measured, 4 reused" in again.output.replace("\n", " ")


def test_workers_axis_engine_options_only_give_ray_sharded_its_driver_share_default() -> None:
    """On ``ray_sharded`` the axis's K actors are all the workers (no driver share) unless the
    study says otherwise; another engine gets only the options the study gives it."""
    assert WorkersConfig().engine_options() == {"driver_share": False}
    other = WorkersConfig(engine="deepspeed", option="world_size")
    assert other.engine_options() == {}
    given = WorkersConfig(options={"driver_share": True, "gram": "gather"})
    assert given.engine_options() == {"driver_share": True, "gram": "gather"}
