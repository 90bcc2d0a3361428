"""Fronts held to a known truth: HV / true HV and the distance of each solution to the front.

For a dataset whose Pareto front is known (``MultiTaskDataset.true_front``: analytic problems),
the leaderboard adds, per protocol and per method row:

- **HV / true HV**: each seed's recorded test hypervolume divided by the hypervolume of the
  front's sample, computed by the same code (``metrics.hypervolume``) with the same reference
  point; mean over seeds with a 95% Student-t interval (``statistics.mean_ci``). A dense sample
  of a continuous front slightly underestimates its hypervolume (by the staircase between
  neighbouring points), so a method on the front can score a little above 1.
- **distance to the front**: each scored solution's Euclidean distance, in objective space (the
  units of ``test_objectives``), to the nearest point of the sample (``scipy.spatial.cKDTree``);
  per seed the mean over its solutions, then the mean over seeds with its interval; and the
  largest distance of any solution of any seed. The sample stands in for the front: a point on
  the front is at most half the sample's largest gap from it, which the table's note states.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from mtlbench.harness.leaderboard_tables import MethodSummary, Table, fmt, fmt_interval, ranked
from mtlbench.harness.metrics import hypervolume
from mtlbench.harness.statistics import MeanInterval, mean_ci
from scipy.spatial import cKDTree

Row = dict[str, Any]


def true_front(row: Row) -> np.ndarray | None:
    """The known front (N, T) of the dataset a record was run on, or None when it is unknown
    (learning datasets, or a dataset no longer registered). Params are only validated for
    datasets that declare a front, so old records of learning datasets never fail here."""
    from mtlbench.harness.dataset import MultiTaskDataset
    from mtlbench.harness.registry import DATASETS, UnknownName

    try:
        dataset_cls = DATASETS.get(row["dataset"])
    except UnknownName:
        return None
    declares = [c for c in dataset_cls.__mro__ if "true_front" in vars(c)]
    if not declares or declares[0] is MultiTaskDataset:  # the default: no known front
        return None
    params = dataset_cls.Params.model_validate(json.loads(row["dataset_params"] or "{}"))
    front = dataset_cls.true_front(params)
    if front is None:
        return None
    front = np.asarray(front, dtype=np.float64)
    num_tasks = len(row["task_names"] or [])
    if front.ndim != 2 or front.shape[1] != num_tasks or len(front) == 0:
        raise ValueError(
            f"{row['dataset']}.true_front returned shape {front.shape}, expected (N, {num_tasks})"
        )
    return front


def distances_to_front(objectives: np.ndarray, front: np.ndarray) -> np.ndarray:
    """Euclidean distance (S,) from each row of ``objectives`` (S, T) to its nearest row of
    ``front`` (N, T), in objective units."""
    if len(objectives) == 0:
        return np.zeros(0)
    distances, _ = cKDTree(front).query(np.asarray(objectives, dtype=np.float64))
    return np.asarray(distances, dtype=np.float64)


def sample_spacing(front: np.ndarray) -> float:
    """The largest distance from a sample point (row of ``front`` (N, T)) to its nearest other
    sample point, in objective units (0 for one point): the sample's resolution."""
    if len(front) < 2:
        return 0.0
    distances, _ = cKDTree(front).query(front, k=2)
    return float(distances[:, 1].max())


@dataclass(frozen=True)
class TruthNumbers:
    """One method row against the true front.

    hv_ratio: recorded test HV / true HV per seed, mean and interval over seeds; distance_mean:
    per seed the mean distance of its solutions to the front, mean and interval over seeds
    (objective units); distance_max: the largest distance of any solution of any seed (NaN
    without one); solutions: how many solutions were measured.
    """

    label: str
    is_baseline: bool
    hv_ratio: MeanInterval
    distance_mean: MeanInterval
    distance_max: float
    solutions: int


def truth_numbers(summary: MethodSummary, front: np.ndarray, true_hv: float) -> TruthNumbers:
    """HV / true HV and distances to ``front`` (N, T) for one method row (see module doc)."""
    ratios, seed_means, every = [], [], []
    for seed in sorted(summary.by_seed):
        ratios.append(summary.hv.get(seed, math.nan) / true_hv if true_hv > 0 else math.nan)
        objectives = np.array(
            [
                r["test_objectives"]
                for r in summary.by_seed[seed]
                if r["solution_index"] >= 0 and r["test_objectives"]
            ],
            dtype=np.float64,
        ).reshape(-1, front.shape[1])
        objectives = objectives[np.isfinite(objectives).all(axis=1)]
        distances = distances_to_front(objectives, front)
        seed_means.append(float(distances.mean()) if len(distances) else math.nan)
        every.append(distances)
    measured = np.concatenate(every) if every else np.zeros(0)
    return TruthNumbers(
        summary.label,
        summary.is_baseline,
        mean_ci(ratios),
        mean_ci(seed_means),
        float(measured.max()) if len(measured) else math.nan,
        len(measured),
    )


def truth_table(
    summaries: list[MethodSummary], front: np.ndarray, reference: list[float], title: str
) -> Table:
    """Per method row (ranked as in the ranking, baselines last): HV / true HV and the distance
    of its solutions to the known ``front`` (N, T), whose hypervolume up to ``reference`` (T,)
    is the true HV."""
    true_hv = hypervolume(front, reference)
    order = ranked(summaries) + [s for s in summaries if s.is_baseline]
    header = [
        "method",
        "HV / true HV mean [95% CI]",
        "distance to front mean [95% CI]",
        "distance max",
        "solutions",
        "seeds",
    ]
    rows = []
    for summary in order:
        numbers = truth_numbers(summary, front, true_hv.value)
        rows.append(
            [
                numbers.label + (" (reference)" if numbers.is_baseline else ""),
                fmt_interval(numbers.hv_ratio),
                fmt_interval(numbers.distance_mean),
                fmt(numbers.distance_max),
                str(numbers.solutions),
                str(numbers.hv_ratio.n),
            ]
        )
    note = (
        f"True HV {fmt(true_hv.value)} ({true_hv.method}): the hypervolume of a {len(front)}-point "
        f"sample of the known front, reference point ({', '.join(fmt(r) for r in reference)}), "
        "same code as every front's. HV / true HV: each seed's test hypervolume over it. "
        "Distance: Euclidean, in objective units, from each solution's test objectives to the "
        "nearest sample point; mean over a seed's solutions, then over seeds; max over every "
        f"solution. Sample spacing (largest nearest-neighbour distance): "
        f"{fmt(sample_spacing(front), 3)}; distances below it are within the sampling resolution."
    )
    return Table(title, header, rows, note)
