"""The leaderboard's figures (PNG, matplotlib's Agg backend).

- :func:`plot_fronts`: each competing method's front (first seed, first two tasks); methods whose
  solutions carry 2-D coordinates (continuous fronts: PML, Pareto expansion) are drawn as
  curves. The baseline is one marker, its ideal point (each task's single-task test objective,
  mean over seeds); the axes fit the methods' fronts and that point, not the baseline runs'
  off-task objectives. Where the dataset's Pareto front is known (``true_front``), its sample is
  drawn behind the methods' fronts (a grey line for two tasks, grey dots projected on the first
  two tasks beyond) and the axes fit it too.
- :func:`plot_anytime`: test hypervolume against the fraction of the budget spent, per method
  the mean over seeds with a 95% interval band (where two or more seeds have a value).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
from mtlbench.harness.leaderboard_tables import MethodSummary, ideal_point, ranked
from mtlbench.harness.ranks import anytime_value
from mtlbench.harness.statistics import mean_ci


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fronts(
    summaries: list[MethodSummary],
    title: str,
    path: Path,
    objective_names: list[str],
    true_front: np.ndarray | None = None,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Draw the fronts into ``path``, the known front's sample ``true_front`` (N, T) behind
    them if given; return the axes' (x, y) limits."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 5))
    shown: list[np.ndarray] = []
    if true_front is not None and len(true_front):
        truth = np.asarray(true_front, dtype=float)[:, :2]
        shown.append(truth)
        if true_front.shape[1] == 2:
            truth = truth[np.argsort(truth[:, 0])]
            axes.plot(*truth.T, "-", color="0.6", lw=2, zorder=0, label="true front")
        else:
            axes.scatter(*truth.T, s=2, color="0.75", zorder=0, label="true front (projected)")
    for index, summary in enumerate(ranked(summaries)):
        if not summary.by_seed:
            continue
        rows = [r for r in summary.by_seed[min(summary.by_seed)] if r["solution_index"] >= 0]
        points = np.array([r["test_objectives"][:2] for r in rows], dtype=float).reshape(-1, 2)
        shown.append(points)
        color = f"C{index % 10}"
        # a front parameterised by a 1-D family (2 tasks) is drawn as a curve along its
        # coordinate; with 3+ tasks a grid on the simplex has no order, so it is scattered
        curve = all(r["coordinates"] and len(r["coordinates"]) == 2 for r in rows)
        if len(rows) > 2 and curve:
            order = np.argsort([r["coordinates"][0] for r in rows])
            axes.plot(*points[order].T, "-o", ms=3, color=color, label=summary.label)
        else:
            axes.scatter(*points.T, marker="o", color=color, label=summary.label)
    for summary in (s for s in summaries if s.is_baseline):
        ideal = ideal_point(summary)
        if ideal is not None:
            point = np.array([ideal[:2]], dtype=float)
            shown.append(point)
            axes.scatter(*point.T, marker="*", s=160, color="black", label=f"{summary.label} ideal")
    finite = np.concatenate(shown) if shown else np.zeros((0, 2))
    finite = finite[np.isfinite(finite).all(axis=1)]
    if len(finite):
        low, high = finite.min(axis=0), finite.max(axis=0)
        margin = np.maximum(0.08 * (high - low), 1e-3)
        axes.set_xlim(low[0] - margin[0], high[0] + margin[0])
        axes.set_ylim(low[1] - margin[1], high[1] + margin[1])
    axes.set_xlabel(objective_names[0])
    axes.set_ylabel(objective_names[1] if len(objective_names) > 1 else "")
    axes.set_title(title)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    limits = (tuple(axes.get_xlim()), tuple(axes.get_ylim()))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return limits


def plot_anytime(
    curves: dict[str, list[list[tuple[float, float]]]], title: str, path: Path
) -> None:
    """``curves``: method label → one (budget_fraction, test HV) curve per seed."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for index, (label, seed_curves) in enumerate(sorted(curves.items())):
        grid = sorted({fraction for curve in seed_curves for fraction, _ in curve})
        summaries = [mean_ci([anytime_value(c, f) for c in seed_curves]) for f in grid]
        means = np.array([s.mean for s in summaries])
        lows = np.array([s.low for s in summaries])
        highs = np.array([s.high for s in summaries])
        color = f"C{index % 10}"
        axes.step(grid, means, where="post", color=color, label=f"{label} (n={len(seed_curves)})")
        # a hypervolume is never negative: a few seeds' t interval can reach below 0, so the
        # band is drawn within [0, ∞) (the tables keep the interval as computed)
        lows = np.maximum(lows, 0.0)
        banded = np.isfinite(lows) & np.isfinite(highs)
        if banded.any():
            axes.fill_between(
                np.array(grid)[banded], lows[banded], highs[banded], step="post",
                color=color, alpha=0.2, linewidth=0,
            )  # fmt: skip
    axes.set_xlabel("fraction of the budget spent")
    axes.set_ylabel("test hypervolume")
    axes.set_xlim(0, 1.02)
    axes.set_title(title)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
