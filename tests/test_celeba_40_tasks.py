"""CelebA with all 40 tasks end to end through the CLI, on fixture files: the runs complete and
each records a finite hypervolume, including a front of many solutions, whose hypervolume in 40
objectives moocore refuses (at most 31) and ``harness.hypervolume`` computes."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import torch
import yaml
from _dataset_fixtures import write_celeba
from mtlbench.harness.cli import app
from mtlbench.harness.hypervolume import (
    DEFAULT_DELTA,
    DEFAULT_EPSILON,
    EXACT_PRODUCT,
    FPRAS,
)
from typer.testing import CliRunner

METHODS = [
    {"name": "ew"},
    {"name": "mgda_ub"},
    # 40 vertices + the centre of the simplex: a front of up to 41 points in 40 objectives
    {"name": "pml", "params": {"window": 1, "random_points": 0, "bn_recalibration_batches": 0}},
]


def test_celeba_with_40_tasks_runs_and_records_its_hypervolume(tmp_path) -> None:
    write_celeba(tmp_path, [0] * 8 + [1] * 4 + [2] * 8)
    suite = {
        "name": "celeba-40",
        "datasets": [
            {"name": "celeba", "params": {"data_root": str(tmp_path), "image_size": 8, "width": 2}}
        ],
        "methods": METHODS,
        "budget": {"flops": 1e15},  # max_steps ends training
        "training": {"batch_size": 8, "max_steps": 1, "log_every": 1, "eval_every": 2},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    results = tmp_path / "results"
    arguments = ["run", str(path), "--results-dir", str(results), "--no-progress"]
    # one intra-op thread: on a busy 2-core machine torch's two threads spin and make this run
    # (41 PML solutions evaluated) several times slower; what is tested is the record
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcome = CliRunner().invoke(app, [*arguments, "--no-leaderboard"])
    finally:
        torch.set_num_threads(threads)
    assert outcome.exit_code == 0, outcome.output
    rows = pq.read_table(results / "runs").to_pylist()
    assert {row["method"] for row in rows} == {m["name"] for m in METHODS}
    assert {row["status"] for row in rows} == {"completed"}, [row["error"] for row in rows]
    for row in rows:
        assert len(row["test_objectives"]) == 40
        assert math.isfinite(row["hypervolume"]) and row["hypervolume"] >= 0
        if row["method"] in ("ew", "mgda_ub"):  # one solution: one box, exact
            assert row["hv_method"] == EXACT_PRODUCT
            assert row["hv_epsilon"] == row["hv_delta"] == 0.0
            assert row["hv_ci_low"] == row["hv_ci_high"] == row["hypervolume"]
        else:  # 41 solutions, well over 12 non-dominated ones: the FPRAS, with its guarantee
            assert row["hv_method"] == FPRAS and row["hypervolume"] > 0
            assert row["hv_epsilon"] == DEFAULT_EPSILON and row["hv_delta"] == DEFAULT_DELTA
            assert row["hv_ci_low"] < row["hypervolume"] < row["hv_ci_high"]
            assert row["hv_samples"] > 0
