"""Front quality at equal compute: one PML run against EW runs sharing the same total budget.

PML evaluates N points of the simplex (11 for the two multidigits tasks). The comparison trains
N EW runs, one per point of that same grid used as the preference vector, each with 1/N of the
budget, and takes the union of their solutions as EW's front. Both fronts are scored on the
test split by the harness (hypervolume of the non-dominated set, the dataset's reference point).
Budget and training protocol come from a suite (default: the quickstart's); every run goes
through ``harness.trainer.train_run``, as in a suite.

Run: ``python benchmarks/front_quality.py [--suite suites/quickstart.yaml] [--seeds 0 1]``.

``--analytic PROBLEM`` (e.g. ``zdt2_ma2020``) instead scores ``pareto_expansion`` and ``pml``,
default parameters, on the ``analytic`` dataset: HV of each run's front over the HV of the
problem's known front (``true_front``), per seed, at ``--analytic-budget`` EW steps' FLOPs
(default 3,000: the budget at which ``pareto_expansion``'s test holds on ``zdt2_ma2020``).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
from mtlbench.harness.config import load_suite
from mtlbench.harness.metrics import hypervolume
from mtlbench.harness.registry import DATASETS, METHODS
from mtlbench.harness.suite import RunSpec
from mtlbench.harness.trainer import RunResult, train_run

ROOT = Path(__file__).resolve().parent.parent


def run_or_fail(spec: RunSpec) -> RunResult:
    result = train_run(spec)
    if result.status != "completed":
        raise SystemExit(f"{spec.title} {result.status}: {result.error}")
    return result


def analytic_ratios(problem: str, seeds: list[int], budget_ew_steps: float, lr: float) -> None:
    """Print HV(front) / HV(true front) per seed for pareto_expansion and pml on ``problem``."""
    dataset_cls = DATASETS.get("analytic")
    dataset_params = dataset_cls.Params.model_validate({"problem": problem})
    taskset = dataset_cls.taskset(dataset_params)
    true_front = dataset_cls.true_front(dataset_params)
    assert true_front is not None, f"analytic problem {problem} has no true front"
    true_hv = hypervolume(true_front, taskset.hv_reference).value
    training = {"batch_size": 1, "optimizer": "adam", "lr": lr}
    ew = run_or_fail(_analytic_spec("ew", dataset_params, 0, 1e30, {**training, "max_steps": 1}))
    ew_step_flops = ew.budget["budget_spent_flops"]
    print(
        f"{problem}: true HV {true_hv:.4f} at reference {taskset.hv_reference}; budget "
        f"{budget_ew_steps:g} EW steps ({ew_step_flops:.3g} FLOPs each); training {training}"
    )
    for method in ("pareto_expansion", "pml"):
        for seed in seeds:
            spec = _analytic_spec(
                method, dataset_params, seed, budget_ew_steps * ew_step_flops, training
            )
            result = train_run(spec)
            if result.status != "completed" or result.hypervolume is None:
                print(f"  {method} seed {seed}: {result.status} {result.error.splitlines()[:1]}")
                continue
            print(
                f"  {method} seed {seed}: HV / true HV {result.hypervolume.value / true_hv:.4f} "
                f"({len(result.solutions)} points, {result.steps} steps, "
                f"stop reason {result.stop_reason})"
            )


def _analytic_spec(method, dataset_params, seed: int, budget: float, training) -> RunSpec:
    return RunSpec(
        suite="front_quality",
        method=method,
        method_label=method,
        method_params={},
        engine="loop",
        engine_options={},
        dataset="analytic",
        dataset_params=dataset_params.model_dump(mode="json"),
        seed=seed,
        budget_kind="flops",
        budget_limit=budget,
        training={**training, "eval_every": 100_000},
        scoring="final",
        device="cpu",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(ROOT / "suites" / "quickstart.yaml"))
    parser.add_argument("--dataset", default="multidigits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--budget-scale", type=float, default=1.0, help="multiply the suite's budget"
    )
    parser.add_argument("--analytic", help="an analytic problem: HV / true HV per seed instead")
    parser.add_argument(
        "--analytic-budget",
        type=float,
        default=3000,
        help="in EW steps (3000: the budget at which pareto_expansion's test holds on zdt2_ma2020)",
    )
    parser.add_argument("--analytic-lr", type=float, default=0.01)
    args = parser.parse_args()
    if args.analytic:
        analytic_ratios(args.analytic, args.seeds, args.analytic_budget, args.analytic_lr)
    else:
        pml_against_ew(args.suite, args.dataset, args.seeds, args.budget_scale)


def pml_against_ew(suite_path: str, dataset: str, seeds: list[int], budget_scale: float) -> None:
    """Print PML's front HV against the union of N EW runs' (1/N of the budget each) per seed."""
    suite = load_suite(suite_path)
    dataset_cls = DATASETS.get(dataset)
    dataset_params = dataset_cls.Params()
    taskset = dataset_cls.taskset(dataset_params)
    pml_cls = METHODS.get("pml")
    pml_params = pml_cls.Params()
    budget = suite.budget.limit * budget_scale
    base = RunSpec(
        suite="front_quality",
        method="pml",
        method_label="pml",
        method_params=pml_params.model_dump(mode="json"),
        engine="loop",
        engine_options={},
        dataset=dataset,
        dataset_params=dataset_params.model_dump(mode="json"),
        seed=0,
        budget_kind=suite.budget.kind,
        budget_limit=budget,
        training=suite.training.model_dump(mode="json"),
        scoring="final",
        device="cpu",
    )
    print(
        f"dataset {dataset}, budget {budget:.3g} {suite.budget.kind}, "
        f"training {suite.training.model_dump()}"
    )
    rows = []
    for seed in seeds:
        pml = run_or_fail(replace(base, seed=seed))
        points = np.array([s.coordinates for s in pml.solutions])
        ew_fronts, ew_steps, ew_seconds = [], 0, 0.0
        for point in points:
            spec = replace(
                base,
                seed=seed,
                method="ew",
                method_label="ew",
                method_params={"preference": [float(v) for v in point]},
                budget_limit=budget / len(points),
            )
            result = run_or_fail(spec)
            ew_fronts += [s.test_objectives for s in result.solutions]
            ew_steps += result.steps
            ew_seconds += result.wall_seconds
        ew_hv = hypervolume(np.array(ew_fronts), taskset.hv_reference).value
        pml_hv = pml.hypervolume.value
        rows.append((pml_hv, ew_hv))
        print(
            f"seed {seed}: PML hypervolume {pml_hv:.4f} ({pml.steps} steps × W, "
            f"{pml.wall_seconds:.0f} s, {len(points)} points) | "
            f"EW × {len(points)} hypervolume {ew_hv:.4f} "
            f"({ew_steps} steps in all, {ew_seconds:.0f} s) | ratio PML/EW {pml_hv / ew_hv:.3f}"
        )
        vertex_errors = {tuple(s.coordinates): s.test_objectives for s in pml.solutions}
        print(
            "  PML test errors at the vertices and centre: "
            + "; ".join(
                f"α={a[0]:.1f},{a[1]:.1f}: {e[0]:.3f},{e[1]:.3f}"
                for a, e in vertex_errors.items()
                if a[0] in (0.0, 0.5, 1.0)
            )
        )
    if len(rows) > 1:
        pml_mean = statistics.mean(r[0] for r in rows)
        ew_mean = statistics.mean(r[1] for r in rows)
        print(
            f"mean over {len(rows)} seeds: PML {pml_mean:.4f} | EW × N {ew_mean:.4f} | "
            f"ratio {pml_mean / ew_mean:.3f}"
        )


if __name__ == "__main__":
    main()
