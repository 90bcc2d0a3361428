"""The leaderboard's numbers: per-method summaries over seeds, comparisons, ranks, anytime ranks.

Everything here is computed from Parquet rows alone and returned as a :class:`Table` (a title,
a header, string cells and a note), which ``leaderboard.py`` renders as Markdown and HTML.

- :func:`method_summaries`: per method row (label) of one protocol's group, over its seeds: the
  test hypervolume of its front and the test Δm% and per-task test metrics of its *selected*
  solution (chosen on validation, see ``selection.py``), each a mean with a 95% Student-t
  interval (``statistics.mean_ci``), and a paired comparison with ``ew`` over the same seeds
  (``statistics.paired_comparison``). Baseline methods (``is_baseline``) are summarised apart.
- :func:`ranking_table`: the ranked methods and, unranked, the baseline reference row.
- :func:`anytime_table`: test hypervolume at 25%, 50% and 100% of the budget from the evaluation
  table (``statistics.rank_at_fractions``, the last evaluation at or before each fraction).
- :func:`average_rank_table`: with several datasets, each method's average rank of mean test
  hypervolume across the protocols' tables, Friedman test and Nemenyi critical difference
  (``statistics.average_ranks``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mtlbench.harness.metrics import hypervolume
from mtlbench.harness.ranks import average_ranks, rank_at_fractions
from mtlbench.harness.selection import is_baseline_row, selected_row
from mtlbench.harness.statistics import MeanInterval, PairedComparison, mean_ci, paired_comparison

Row = dict[str, Any]
REFERENCE_METHOD = "ew"  # the paired comparisons are against equal weighting
ANYTIME_FRACTIONS = (0.25, 0.5, 1.0)


@dataclass
class Table:
    """A rendered-to-strings table: ``title``, ``header``, ``rows`` (lists of cells), ``note``."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class MethodSummary:
    """One table row (method label, with its differing settings) in one protocol's group.
    ``by_seed``: seed → the run's rows."""

    label: str
    method: str
    is_baseline: bool
    task_names: list[str]
    by_seed: dict[int, list[Row]] = field(default_factory=dict)
    all_runs: list[list[Row]] = field(default_factory=list)
    hv: dict[int, float] = field(default_factory=dict)  # seed → test hypervolume
    delta_m: dict[int, float] = field(default_factory=dict)  # seed → selected test Δm%
    metrics: dict[int, list[float]] = field(default_factory=dict)  # seed → (T,) test metrics
    delta_m_reasons: set[str] = field(default_factory=set)

    def interval(self, values: dict[int, float]) -> MeanInterval:
        return mean_ci([values[s] for s in sorted(values)])


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}g}"


def fmt_interval(interval: MeanInterval, digits: int = 4) -> str:
    """``mean [low, high]``; a mean alone (with its seed count) when there is no interval."""
    if math.isnan(interval.mean):
        return "—"
    if math.isnan(interval.low):
        return f"{fmt(interval.mean, digits)} (n={interval.n})"
    return f"{fmt(interval.mean, digits)} [{fmt(interval.low, 3)}, {fmt(interval.high, 3)}]"


def fmt_comparison(comparison: PairedComparison | None) -> str:
    if comparison is None:
        return "—"
    if comparison.n == 0:
        return "— (no common seed)"
    sign = "+" if comparison.mean_difference >= 0 else ""
    p = "" if math.isnan(comparison.p_value) else f", p={comparison.p_value:.2g}"
    return f"{comparison.verdict} ({sign}{fmt(comparison.mean_difference, 3)}{p}, n={comparison.n})"


def _runs(rows: list[Row]) -> dict[str, list[Row]]:
    runs: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        runs[row["run_hash"]].append(row)
    return runs


def method_summaries(group: list[Row]) -> list[MethodSummary]:
    """One summary per method label of one protocol's rows (already selected, and relabelled
    by ``leaderboard_protocols.split_by_protocol``)."""
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in group:
        by_label[row["method_label"]].append(row)
    summaries = []
    for label, rows in by_label.items():
        first = rows[0]
        summary = MethodSummary(label, first["method"], is_baseline_row(first), first["task_names"])
        summary.all_runs = list(_runs(rows).values())
        completed = [r for r in summary.all_runs if r[0]["status"] == "completed"]
        if summary.is_baseline:
            _baseline_numbers(summary, completed)
        else:
            for run_rows in completed:
                seed, chosen = run_rows[0]["seed"], selected_row(run_rows)
                summary.by_seed[seed] = run_rows
                summary.hv[seed] = run_rows[0]["hypervolume"]
                summary.delta_m[seed] = _number(chosen["run_delta_m_pct"])
                summary.metrics[seed] = chosen["test_metrics"] or []
                if chosen.get("delta_m_reason"):
                    summary.delta_m_reasons.add(chosen["delta_m_reason"])
        summaries.append(summary)
    return summaries


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _baseline_numbers(summary: MethodSummary, completed: list[list[Row]]) -> None:
    """A baseline's seeds: the front is the union of its per-task runs, its metric for task t
    is task t's own run (the numbers Δm% is measured against)."""
    seeds: dict[int, list[list[Row]]] = defaultdict(list)
    for run_rows in completed:
        seeds[run_rows[0]["seed"]].append(run_rows)
    reference = completed[0][0]["hv_reference"] if completed else []
    num_tasks = len(summary.task_names)
    for seed, seed_runs in seeds.items():
        union = [row for run_rows in seed_runs for row in run_rows if row["solution_index"] >= 0]
        summary.by_seed[seed] = union
        objectives = np.array([r["test_objectives"] for r in union], dtype=float)
        summary.hv[seed] = hypervolume(objectives, reference).value
        metrics = [math.nan] * num_tasks
        for run_rows in seed_runs:
            task = json.loads(run_rows[0]["method_params"])["task"]
            metrics[task] = run_rows[0]["test_metrics"][task]
        summary.metrics[seed] = metrics


def ideal_point(summary: MethodSummary) -> list[float] | None:
    """The baseline's ideal point: each task's single-task test objective, mean over seeds."""
    per_task: dict[int, list[float]] = defaultdict(list)
    for rows in summary.by_seed.values():
        for row in rows:
            task = json.loads(row["method_params"]).get("task")
            if task is not None and row["test_objectives"]:
                per_task[task].append(row["test_objectives"][task])
    if len(per_task) != len(summary.task_names):
        return None
    return [float(np.mean(per_task[t])) for t in range(len(summary.task_names))]


def _metric_means(summary: MethodSummary) -> list[MeanInterval]:
    return [
        mean_ci(
            [summary.metrics[s][t] if summary.metrics[s] else math.nan for s in summary.metrics]
        )
        for t in range(len(summary.task_names))
    ]


def _paired(
    summary: MethodSummary, reference: MethodSummary | None, column: str, higher: bool
) -> PairedComparison | None:
    if reference is None or summary is reference:
        return None
    mine, theirs = getattr(summary, column), getattr(reference, column)
    seeds = sorted(set(mine) & set(theirs))
    return paired_comparison([mine[s] for s in seeds], [theirs[s] for s in seeds], higher)


def ranked(summaries: list[MethodSummary]) -> list[MethodSummary]:
    """The competitors (baselines left out), by mean test hypervolume, best first."""
    competitors = [s for s in summaries if not s.is_baseline]

    def key(summary: MethodSummary) -> tuple[bool, float]:
        value = summary.interval(summary.hv).mean
        return (math.isnan(value), -value if not math.isnan(value) else 0.0)

    return sorted(competitors, key=key)


def ranking_table(summaries: list[MethodSummary], title: str) -> Table:
    """Methods ranked by mean test HV, with 95% intervals and paired verdicts against ``ew``;
    the baseline as an unranked reference row."""
    task_names = summaries[0].task_names
    competitors = ranked(summaries)
    # an ``ew`` recorded with two engines or parameter sets is two rows: the best ranked one is
    # the reference, and the header names it
    reference = next((s for s in competitors if s.method == REFERENCE_METHOD), None)
    against = reference.label if reference else REFERENCE_METHOD
    header = [
        "rank",
        "method",
        "test HV mean [95% CI]",
        f"HV vs {against}",
        "Δm% mean [95% CI]",
        f"Δm% vs {against}",
        *[f"{name} metric" for name in task_names],
        "wall s",
        "steps",
        "budget used",
        "seeds",
        "runs",
    ]
    rows = []
    for rank, summary in enumerate(competitors, 1):
        rows.append(
            [
                str(rank),
                summary.label,
                fmt_interval(summary.interval(summary.hv)),
                fmt_comparison(_paired(summary, reference, "hv", True)),
                fmt_interval(summary.interval(summary.delta_m), 3),
                fmt_comparison(_paired(summary, reference, "delta_m", False)),
                *[fmt_interval(m) for m in _metric_means(summary)],
                *_run_cells(summary),
            ]
        )
    for summary in (s for s in summaries if s.is_baseline):
        rows.append(
            [
                "reference",
                summary.label,
                fmt_interval(summary.interval(summary.hv)),
                "—",
                "0 (by definition)",
                "—",
                *[fmt_interval(m) for m in _metric_means(summary)],
                *_run_cells(summary),
            ]
        )
    reasons = sorted({r for s in competitors for r in s.delta_m_reasons})
    note = (
        "Ranked by mean test hypervolume over seeds; [low, high] is a 95% Student-t interval "
        f"over seeds (n=1: no interval). 'vs {against}': paired over the seeds both "
        "have, Wilcoxon signed-rank; 'tie' where the seeds cannot resolve the difference. "
        "Δm% and metrics are those of each run's selected solution (chosen on validation). "
        "The baseline row is the reference, not ranked: its metric for each task is that "
        "task's own run, its HV that of the union of its runs."
    )
    if reasons:
        note += " Δm% undefined (—) for some runs: " + "; ".join(reasons) + "."
    return Table(title, header, rows, note)


def _run_cells(summary: MethodSummary) -> list[str]:
    runs = summary.all_runs
    statuses: dict[str, int] = defaultdict(int)
    for run_rows in runs:
        statuses[run_rows[0]["status"]] += 1
    wall = mean_ci([r[0]["wall_seconds"] for r in runs]).mean
    steps = mean_ci([float(r[0]["steps"]) for r in runs]).mean
    spent = mean_ci([r[0]["budget_spent"] / r[0]["budget_limit"] for r in runs]).mean
    return [
        fmt(wall, 3),
        fmt(steps, 5),
        f"{fmt(100 * spent, 3)}%",
        str(len({r[0]["seed"] for r in runs})),
        ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())),
    ]


def anytime_curves(
    evaluations: list[Row], column: str = "test_hypervolume"
) -> dict[str, list[list[tuple[float, float]]]]:
    """method label → one (budget_fraction, value) curve per seed, baselines left out."""
    per_run: dict[str, list[Row]] = defaultdict(list)
    for row in evaluations:
        if not row.get("is_baseline"):
            per_run[row["run_hash"]].append(row)
    curves: dict[str, list[list[tuple[float, float]]]] = defaultdict(list)
    for points in per_run.values():
        points.sort(key=lambda r: r["step"])
        curve = [(float(p["budget_fraction"]), float(p[column])) for p in points]
        curves[points[0]["method_label"]].append(curve)
    return dict(curves)


def anytime_table(evaluations: list[Row], title: str) -> Table:
    """Mean test hypervolume (and rank) at 25%, 50% and 100% of the budget."""
    curves = anytime_curves(evaluations)
    if not curves:
        return Table(title, [], [], "No anytime evaluations recorded for these runs.")
    rankings = rank_at_fractions(curves, higher_is_better=True, fractions=ANYTIME_FRACTIONS)
    header = ["method"] + [f"HV at {round(100 * r.fraction)}% (rank)" for r in rankings]
    final = rankings[-1]
    order = sorted(curves, key=lambda m: (math.isnan(final.rank[m]), final.rank[m], m))
    rows = [
        [method]
        + [
            f"{fmt(r.mean[method])} ({fmt(r.rank[method], 2)}; n={r.seeds[method]})"
            for r in rankings
        ]
        for method in order
    ]
    note = (
        "Test hypervolume of each method's front at a fraction of its budget: each seed's last "
        "evaluation at or before that fraction (every eval_every steps and at the end; "
        "evaluation is not charged to the budget), mean over seeds, ranked (1 = best)."
    )
    return Table(title, header, rows, note)


def average_rank_table(groups: dict[str, list[MethodSummary]]) -> Table:
    """Average rank of mean test HV across the protocols' tables (one row per table, keyed by
    its heading)."""
    scores = {
        name: {s.label: s.interval(s.hv).mean for s in summaries if not s.is_baseline}
        for name, summaries in groups.items()
    }
    result = average_ranks(scores, higher_is_better=True)
    methods = sorted(
        result.methods, key=lambda m: (math.isnan(result.average_rank[m]), result.average_rank[m])
    )
    header = ["method", "average rank", "groups ranked", "tied with best", *result.rows]
    rows = []
    for method in methods:
        tied = result.tied_with_best.get(method)
        rows.append(
            [
                method,
                fmt(result.average_rank[method], 3),
                str(result.rows_ranked[method]),
                "—" if tied is None else ("yes" if tied else "no"),
                *[fmt(result.ranks[row].get(method), 2) for row in result.rows],
            ]
        )
    note = (
        "Rank of each method's mean test hypervolume within each table (one protocol: dataset, "
        f"budget and settings; 1 = best, ties averaged), averaged across them. {result.note}."
    )
    return Table("Average rank across datasets", header, rows, note)
