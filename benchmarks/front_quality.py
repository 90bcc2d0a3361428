"""Front quality at equal compute: one PML run against EW runs sharing the same total budget.

PML evaluates N points of the simplex (11 for the two multidigits tasks). The comparison trains
N EW runs, one per point of that same grid used as the preference vector, each with 1/N of the
budget, and takes the union of their solutions as EW's front. Both fronts are scored on the
test split by the harness (hypervolume of the non-dominated set, the dataset's reference point).
Budget and training protocol come from a suite (default: the quickstart's); every run goes
through ``harness.trainer.train_run``, as in a suite.

Run: ``python benchmarks/front_quality.py [--suite suites/quickstart.yaml] [--seeds 0 1]``.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(ROOT / "suites" / "quickstart.yaml"))
    parser.add_argument("--dataset", default="multidigits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--budget-scale", type=float, default=1.0, help="multiply the suite's budget"
    )
    args = parser.parse_args()

    suite = load_suite(args.suite)
    dataset_cls = DATASETS.get(args.dataset)
    dataset_params = dataset_cls.Params()
    taskset = dataset_cls.taskset(dataset_params)
    pml_cls = METHODS.get("pml")
    pml_params = pml_cls.Params()
    budget = suite.budget.limit * args.budget_scale
    base = RunSpec(
        suite="front_quality",
        method="pml",
        method_label="pml",
        method_params=pml_params.model_dump(mode="json"),
        engine="loop",
        engine_options={},
        dataset=args.dataset,
        dataset_params=dataset_params.model_dump(mode="json"),
        seed=0,
        budget_kind=suite.budget.kind,
        budget_limit=budget,
        training=suite.training.model_dump(mode="json"),
        scoring="final",
        device="cpu",
    )
    print(
        f"dataset {args.dataset}, budget {budget:.3g} {suite.budget.kind}, training {suite.training.model_dump()}"
    )
    rows = []
    for seed in args.seeds:
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
            f"seed {seed}: PML hypervolume {pml_hv:.4f} ({pml.steps} steps × W, {pml.wall_seconds:.0f} s, "
            f"{len(points)} points) | EW × {len(points)} hypervolume {ew_hv:.4f} "
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
            f"mean over {len(rows)} seeds: PML {pml_mean:.4f} | EW × N {ew_mean:.4f} | ratio {pml_mean / ew_mean:.3f}"
        )


if __name__ == "__main__":
    main()
