"""The figures of the scaling page (matplotlib, Agg): per-axis log-log curves, and the datasets
axis drawn on the synthetic study's log-log axes (stand-in points hollow)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mtlbench.harness.scaling.points import axis_x

Row = dict[str, Any]
AXIS_TITLES = {
    "shared_parameters": "shared parameters",
    "tasks": "tasks T",
    "workers": "workers K",
    "datasets": "datasets",
}
PANELS = (
    ("step_seconds", "step time (s)", True),
    ("flops_per_step", "FLOPs per step", True),
    ("step_memory_bytes", "step memory above resident (bytes)", True),
    ("samples_per_second", "throughput (samples/s)", True),
    ("hypervolume", "test hypervolume at the fixed budget", False),
)
# (x column, y column, x title, y title) of the datasets figure's panels
DATASET_PANELS = (
    ("parameter_count", "step_seconds", "model parameters", "step time (s)"),
    ("task_count", "step_seconds", "tasks T", "step time (s)"),
    ("parameter_count", "flops_per_step", "model parameters", "FLOPs per step"),
    ("parameter_count", "peak_memory_bytes", "model parameters", "peak memory (bytes)"),
)
# the synthetic axis whose curve shares a datasets panel's x
SYNTHETIC_CURVE = {"parameter_count": "shared_parameters", "task_count": "tasks"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite_points(pairs: list[tuple[float, Any]], log_y: bool) -> list[tuple[float, float]]:
    return [
        (x, float(y))
        for x, y in sorted(pairs)
        if y is not None and math.isfinite(y) and (y > 0 or not log_y)
    ]


def plot_axis(study: str, axis: str, curves: dict[str, list[Row]], path: Path) -> None:
    """Five panels (:data:`PANELS`) against the axis's x, one line per method label."""
    plt = _pyplot()
    figure, grid = plt.subplots(2, 3, figsize=(13, 7.5))
    grid = grid.ravel()
    grid[-1].axis("off")
    # the sixth panel is left empty: PANELS has five
    for panel, (column, title, log_y) in zip(grid, PANELS, strict=False):
        for index, (label, rows) in enumerate(sorted(curves.items())):
            points = _finite_points([(axis_x(r), r.get(column)) for r in rows], log_y)
            if points:
                xs, ys = zip(*points, strict=True)
                panel.plot(xs, ys, "-o", ms=3, color=f"C{index % 10}", label=label)
        panel.set_xscale("log")
        if log_y:
            panel.set_yscale("log")
        panel.set_xlabel(AXIS_TITLES.get(axis, axis))
        panel.set_title(title, fontsize=9)
        panel.grid(alpha=0.3, which="both")
    grid[0].legend(fontsize=8)
    figure.suptitle(f"{study}: {AXIS_TITLES.get(axis, axis)}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def row_x(row: Row, column: str) -> float | None:
    """A row's ``parameter_count`` or ``task_count`` (rows of tables written before those
    columns existed: the shared-parameter count, or ``tasks``)."""
    value = row.get(column)
    if value is None:
        value = row.get("shared_parameters" if column == "parameter_count" else "tasks")
    return None if value is None else float(value)


def _draw_synthetic_curve(
    panel: Any, rows: list[Row], label: str, colour: int, x_column: str, y_column: str
) -> None:
    """The synthetic axis sharing ``x_column`` (:data:`SYNTHETIC_CURVE`), as a line."""
    pairs = []
    for row in rows:
        x = row_x(row, x_column)
        if row["axis"] == SYNTHETIC_CURVE[x_column] and row["method_label"] == label and x:
            pairs.append((x, row.get(y_column)))
    points = _finite_points(pairs, True)
    if points:
        xs, ys = zip(*points, strict=True)
        panel.plot(xs, ys, "-", color=f"C{colour}", alpha=0.6, label=f"{label} (synthetic)")


def _draw_dataset_markers(
    panel: Any, rows: list[Row], label: str, colour: int, x_column: str, y_column: str, named: bool
) -> None:
    """One marker per dataset row of ``label``: a filled circle on real data, a hollow square
    on stand-in inputs; each named by its dataset where ``named`` (the first method's markers),
    the first carrying the method's label."""
    legend = label
    for row in rows:
        x, y = row_x(row, x_column), row.get(y_column)
        if row["axis"] != "datasets" or row["method_label"] != label or not x:
            continue
        if y is None or not math.isfinite(y) or y <= 0:
            continue
        stand_in = bool(row.get("stand_in"))
        face = "none" if stand_in else f"C{colour}"
        marker = "s" if stand_in else "o"
        panel.plot([x], [y], marker, ms=7, color=f"C{colour}", markerfacecolor=face, label=legend)
        legend = "_"  # matplotlib leaves labels starting with "_" out of the legend
        if named:
            panel.annotate(
                row["dataset"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points"
            )


def _legend_for_markers(panel: Any) -> None:
    """Two grey entries saying what filled and hollow markers mean."""
    panel.plot([], [], "o", color="grey", label="real data")
    panel.plot([], [], "s", color="grey", markerfacecolor="none", label="stand-in inputs")


def plot_datasets(study: str, rows: list[Row], colours: dict[str, int], path: Path) -> None:
    """The datasets axis on log-log axes shared with the synthetic study (:data:`DATASET_PANELS`).

    rows: the study's ``ok`` rows; colours: colour index per method label. Synthetic curves
    (from the ``shared_parameters`` and ``tasks`` axes) are lines; each dataset's row is a marker
    named by its dataset, filled on real data, hollow on stand-in inputs.
    """
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    figure, grid = plt.subplots(2, 2, figsize=(11, 8.5))
    for panel, (x_column, y_column, x_title, y_title) in zip(
        grid.ravel(), DATASET_PANELS, strict=True
    ):
        for index, (label, colour) in enumerate(colours.items()):
            _draw_synthetic_curve(panel, rows, label, colour, x_column, y_column)
            _draw_dataset_markers(panel, rows, label, colour, x_column, y_column, index == 0)
        _legend_for_markers(panel)
        panel.set_xscale("log")
        panel.set_yscale("log")
        if x_column == "task_count":  # whole numbers, no minor labels
            panel.xaxis.set_major_formatter(ScalarFormatter())
            panel.xaxis.set_minor_formatter(NullFormatter())
        panel.set_xlabel(x_title)
        panel.set_title(f"{y_title} vs {x_title}", fontsize=9)
        panel.grid(alpha=0.3, which="both")
    grid[0][0].legend(fontsize=7)
    figure.suptitle(
        f"{study}: datasets (filled: real data; hollow squares: stand-in inputs, no HV)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
