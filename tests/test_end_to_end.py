"""A suite through the CLI: records in MLflow (SQLite) and Parquet, leaderboard, resume, errors."""

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient
from mtlbench.harness.cli import app
from mtlbench.harness.config import parse_suite
from mtlbench.harness.selection import RULE_VAL_DELTA_M
from mtlbench.harness.suite import expand_suite
from mtlbench.harness.trainer import train_run
from typer.testing import CliRunner

TINY = {
    "name": "tiny",
    "datasets": [
        {"name": "multidigits", "params": {"train_pairs": 512, "val_pairs": 128, "test_pairs": 256}}
    ],
    "methods": [{"name": "single_task"}, {"name": "ew"}],
    "seeds": [0, 1],
    "budget": {"flops": 3.0e9},
    "training": {"batch_size": 64, "log_every": 5, "eval_every": 10, "checkpoint_every": 20},
}


def _write_suite(folder: Path, data: dict) -> Path:
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def finished_suite(tmp_path_factory):
    folder = tmp_path_factory.mktemp("suite")
    suite = _write_suite(folder, TINY)
    results = folder / "results"
    outcome = _invoke("run", str(suite), "--results-dir", str(results), "--no-progress")
    assert outcome.exit_code == 0, outcome.output
    return suite, results


def test_records_parquet_mlflow_and_leaderboard(finished_suite) -> None:
    _, results = finished_suite
    table = pq.read_table(results / "runs").to_pylist()
    assert len(table) == 6  # 4 single-task runs + 2 EW runs, one solution each
    assert {r["status"] for r in table} == {"completed"}
    for row in table:
        assert row["budget_spent"] <= row["budget_limit"] and row["stop_reason"] == "budget"
        assert row["package_version"] and row["torch_version"] and row["scoring"] == "final"
        assert len(row["test_metrics"]) == 2 and 0 <= row["hypervolume"] <= 1
    ew = [r for r in table if r["method"] == "ew"]
    assert all(len(r["delta_m_baseline_runs"]) == 2 for r in ew)
    assert all(r["delta_m_pct"] == r["run_delta_m_pct"] for r in ew)
    # one solution per run: it is the selected one, chosen by validation Δm% for EW
    assert all(r["selected"] for r in table)
    assert {r["selection_rule"] for r in ew} == {RULE_VAL_DELTA_M}
    assert all(
        r["delta_m_reason"] == "" and r["val_delta_m_pct"] == r["val_delta_m_pct"] for r in ew
    )
    assert {r["method"] for r in table if r["is_baseline"]} == {"single_task"}
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("mtlbench.kind") == "run"]
    assert len(children) == 6 and {r.info.status for r in children} == {"FINISHED"}
    child = children[0]
    assert "hypervolume" in child.data.metrics and "env.torch" in child.data.tags
    assert client.get_metric_history(child.info.run_id, "train.budget_fraction_spent")
    assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["front.json"]
    hv_by_run = {r["mlflow_run_id"]: r["hypervolume"] for r in table}
    assert child.data.metrics["hypervolume"] == pytest.approx(hv_by_run[child.info.run_id])
    page = (results / "leaderboard" / "index.html").read_text()
    assert "multidigits" in page and "data:image/png;base64" in page
    markdown = (results / "leaderboard" / "index.md").read_text()
    assert "| 1 |" in markdown and "single_task" in markdown
    # the methods table, from the method catalog: each recorded method with paper and cost
    methods = markdown[markdown.index("## Methods") :]
    assert "| ew | loss weighting |" in methods and "1 forward + 1 backward" in methods
    assert list((results / "checkpoints").glob("*/step_*.pt"))


def test_anytime_evaluations_recorded(finished_suite) -> None:
    """Every eval_every steps and at the end: val and test HV against the budget spent, in the
    evaluation table and as MLflow metrics whose step is the FLOPs spent."""
    from mtlbench.harness.evaluation import front_hypervolume

    _, results = finished_suite
    runs = {r["run_hash"]: r for r in pq.read_table(results / "runs").to_pylist()}
    evaluations = pq.read_table(results / "evaluations").to_pylist()
    assert {e["run_hash"] for e in evaluations} == set(runs)
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    for run_hash, run in runs.items():
        points = [e for e in evaluations if e["run_hash"] == run_hash]
        steps = [e["step"] for e in points]
        assert steps == sorted(steps) and len(points) >= 2
        assert all(s % 10 == 0 for s in steps[:-1]) and steps[-1] == run["steps"]
        fractions = [e["budget_fraction"] for e in points]
        assert fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] <= 1
        final = points[-1]
        assert final["budget_spent"] == run["budget_spent"]
        assert final["budget_fraction"] == pytest.approx(run["budget_spent"] / run["budget_limit"])
        for key in ("suite", "method", "method_label", "is_baseline", "dataset", "seed"):
            assert final[key] == run[key]
        # the final point is the scored state (scoring: final): same fronts as the run's rows
        assert final["test_hypervolume"] == pytest.approx(run["hypervolume"])
        reference = run["hv_reference"]
        val_hv = front_hypervolume([run["val_objectives"]], reference).value
        assert final["val_hypervolume"] == pytest.approx(val_hv)
        history = client.get_metric_history(run["mlflow_run_id"], "anytime.test_hypervolume")
        logged = sorted((m.step, m.value) for m in history)
        assert [step for step, _ in logged] == [int(e["budget_spent_flops"]) for e in points]
        assert [value for _, value in logged] == pytest.approx(
            [e["test_hypervolume"] for e in points]
        )
        assert client.get_metric_history(run["mlflow_run_id"], "anytime.val_hypervolume")


def test_rerun_runs_nothing_and_adds_no_rows(finished_suite) -> None:
    suite, results = finished_suite
    before = {p.name: p.stat().st_mtime_ns for p in (results / "runs").iterdir()}
    outcome = _invoke("run", str(suite), "--results-dir", str(results), "--no-progress")
    assert outcome.exit_code == 0
    assert "6 skipped" in outcome.output
    after = {p.name: p.stat().st_mtime_ns for p in (results / "runs").iterdir()}
    assert before == after
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    assert len(client.search_runs([experiment.experiment_id])) == 7  # 6 runs + the suite run


def test_same_seed_gives_identical_numbers() -> None:
    spec = expand_suite(parse_suite(TINY))[-1]
    first, second = train_run(spec), train_run(spec)
    assert first.status == "completed", first.error
    assert first.steps == second.steps
    assert first.solutions[0].test_losses == second.solutions[0].test_losses
    assert first.history == second.history


def test_best_val_scoring_records_its_step(tmp_path: Path) -> None:
    data = {**TINY, "methods": [{"name": "ew"}], "seeds": [0], "scoring": "best_val"}
    spec = expand_suite(parse_suite(data))[0]
    result = train_run(spec)
    assert result.status == "completed"
    assert (
        0 < result.scored_step <= result.steps and result.scored_step % 10 == 0
    ) or result.scored_step == result.steps


def test_bad_input_exits_2_with_one_line_and_keeps_records(finished_suite, tmp_path: Path) -> None:
    _, results = finished_suite
    before = {p.name: p.stat().st_mtime_ns for p in (results / "runs").iterdir()}
    bad = _write_suite(tmp_path, {**TINY, "methods": [{"name": "nope"}]})
    outcome = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtlbench.harness.cli",
            "run",
            str(bad),
            "--results-dir",
            str(results),
        ],
        capture_output=True,
        text=True,
    )
    assert outcome.returncode == 2
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and "methods[0].name: unknown method 'nope'" in lines[0]
    assert before == {p.name: p.stat().st_mtime_ns for p in (results / "runs").iterdir()}


def test_unwritable_results_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    suite = _write_suite(tmp_path, TINY)
    outcome = _invoke("run", str(suite), "--results-dir", str(blocker / "results"))
    assert outcome.exit_code == 2
    assert "output.results_dir: cannot write to" in outcome.output


def test_info_lists_methods_and_datasets() -> None:
    outcome = _invoke("info")
    assert outcome.exit_code == 0
    assert "multidigits" in outcome.output and "single_task" in outcome.output
    assert "9,330" in outcome.output  # the LeNet encoder's parameter count


def test_delta_m_backfilled_when_baseline_arrives_later(tmp_path: Path) -> None:
    """A method run recorded before its single-task baseline gets its Δm% once the baseline
    exists."""
    from mtlbench.harness.runner import backfill_delta_m, result_rows
    from mtlbench.harness.store import ResultStore

    data = {**TINY, "seeds": [0]}
    specs = expand_suite(parse_suite(data))
    store = ResultStore(tmp_path)
    ew_spec = next(s for s in specs if s.method == "ew")
    ew_result = train_run(ew_spec)
    store.write_run(ew_spec.run_hash, result_rows(ew_result, "", store.rows()))
    assert all(r["delta_m_pct"] != r["delta_m_pct"] for r in store.rows())  # NaN: no baseline yet
    baseline_metrics = []
    for spec in [s for s in specs if s.method == "single_task"]:
        result = train_run(spec)
        task = spec.method_params["task"]
        baseline_metrics.append(result.solutions[0].test_metrics[task])
        store.write_run(spec.run_hash, result_rows(result, "", store.rows()))
    assert backfill_delta_m(store) == 1
    row = next(r for r in store.rows() if r["method"] == "ew")
    metrics = ew_result.solutions[0].test_metrics
    expected = 100 * sum(-(m - b) / b for m, b in zip(metrics, baseline_metrics, strict=True)) / 2
    assert row["delta_m_pct"] == pytest.approx(expected)
    assert len(row["delta_m_baseline_runs"]) == 2
    assert backfill_delta_m(store) == 0
