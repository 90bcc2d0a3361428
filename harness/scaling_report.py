"""The leaderboard's scaling page, drawn from the scaling Parquet tables alone.

For every study (``<results_dir>/scaling/<study>.parquet``) and every axis it swept: one figure
with four log-log panels (step time, FLOPs per step, step memory, throughput) and the hypervolume
at the fixed budget (log x), one line per method; and a table of each method's fitted slope of
cost versus the axis value (least squares on logs, :func:`mtlbench.harness.scaling.fit_power_law`)
with the end values. Written as ``<results_dir>/leaderboard/scaling.md`` (PNG files beside it) and
``scaling.html`` (images embedded).
"""

from __future__ import annotations

import base64
import html
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from mtlbench.harness.scaling import axis_x, fit_power_law, read_table

Row = dict[str, Any]
AXIS_TITLES = {"shared_parameters": "shared parameters", "tasks": "tasks T", "workers": "workers K"}
PANELS = (
    ("step_seconds", "step time (s)", True),
    ("flops_per_step", "FLOPs per step", True),
    ("step_memory_bytes", "step memory above resident (bytes)", True),
    ("samples_per_second", "throughput (samples/s)", True),
    ("hypervolume", "test hypervolume at the fixed budget", False),
)
SLOPE_COLUMNS = ("step_seconds", "flops_per_step", "step_memory_bytes")


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"


def _plot(study: str, axis: str, curves: dict[str, list[Row]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, grid = plt.subplots(2, 3, figsize=(13, 7.5))
    grid = grid.ravel()
    grid[-1].axis("off")
    for panel, (column, title, log_y) in zip(grid, PANELS):
        for index, (label, rows) in enumerate(sorted(curves.items())):
            points = sorted((axis_x(r), r.get(column)) for r in rows)
            points = [
                (x, y)
                for x, y in points
                if y is not None and math.isfinite(y) and (y > 0 or not log_y)
            ]
            if points:
                xs, ys = zip(*points)
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


def _slope_table(curves: dict[str, list[Row]]) -> tuple[list[str], list[list[str]]]:
    header = [
        "method",
        "points",
        *[f"slope {c}" for c in SLOPE_COLUMNS],
        "step s (first → last)",
        "FLOPs/step (first → last)",
        "HV (first → last)",
    ]
    table = []
    for label, rows in sorted(curves.items()):
        rows = sorted(rows, key=axis_x)
        xs = [axis_x(r) for r in rows]
        fits = [fit_power_law(xs, [r[c] for r in rows]) for c in SLOPE_COLUMNS]
        first, last = rows[0], rows[-1]
        table.append(
            [
                label,
                str(len(rows)),
                *[_fmt(fit.slope) for fit in fits],
                f"{_fmt(first['step_seconds'])} → {_fmt(last['step_seconds'])}",
                f"{_fmt(first['flops_per_step'])} → {_fmt(last['flops_per_step'])}",
                f"{_fmt(first['hypervolume'])} → {_fmt(last['hypervolume'])}",
            ]
        )
    return header, table


def build_scaling_page(results_dir: Path) -> Path | None:
    """Write ``leaderboard/scaling.md`` and ``scaling.html``; None if no study was recorded."""
    from mtlbench.harness.leaderboard import _atomic_write

    folder = Path(results_dir) / "scaling"
    tables = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not tables:
        return None
    out = Path(results_dir) / "leaderboard"
    out.mkdir(parents=True, exist_ok=True)
    markdown = ["# mtlbench scaling studies", ""]
    body = ["<h1>mtlbench scaling studies</h1>"]
    for table_file in tables:
        rows = read_table(table_file)
        if not rows:
            continue
        study = rows[0]["study"]
        devices = sorted(
            {f"{r['device']} ({r['device_name']})" for r in rows if r["status"] == "ok"}
        )
        measures = sorted(
            {r["memory_measure"] for r in rows if r["status"] == "ok" and r["memory_measure"]}
        )
        intro = (
            f"Device: {', '.join(devices) or '—'}; batch {rows[0]['batch_size']}; memory: {', '.join(measures) or '—'}. "
            "Step time: median over the timed steps; slopes: least squares on (log x, log y); "
            "x on the shared-parameter axis is the actual encoder parameter count."
        )
        markdown += [f"## {study}", "", intro, ""]
        body += [f"<h2>{html.escape(study)}</h2><p>{html.escape(intro)}</p>"]
        by_axis: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
        problems = []
        for row in rows:
            if row["status"] == "ok":
                by_axis[row["axis"]][row["method_label"]].append(row)
            else:
                problems.append(
                    f"{row['axis']}={row['axis_value']:.4g} {row['method_label']}: {row['status']} — {row['error']}"
                )
        for axis, curves in by_axis.items():
            image = out / f"scaling_{study}_{axis}.png"
            _plot(study, axis, curves, image)
            header, table = _slope_table(curves)
            markdown += [
                f"### {AXIS_TITLES.get(axis, axis)}",
                "",
                "| " + " | ".join(header) + " |",
                "|" + "---|" * len(header),
            ]
            markdown += ["| " + " | ".join(r) + " |" for r in table]
            markdown += ["", f"![{axis}]({image.name})", ""]
            encoded = base64.b64encode(image.read_bytes()).decode()
            body.append(
                f"<h3>{html.escape(AXIS_TITLES.get(axis, axis))}</h3><table><tr>"
                + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                + "</tr>"
            )
            body += [
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table
            ]
            body.append(
                f"</table><img alt='{html.escape(axis)}' src='data:image/png;base64,{encoded}'>"
            )
        if problems:
            unique = list(dict.fromkeys(problems))
            markdown += ["Not measured:", "", *[f"- {p}" for p in unique], ""]
            body.append(
                "<p>Not measured:</p><ul>"
                + "".join(f"<li>{html.escape(p)}</li>" for p in unique)
                + "</ul>"
            )
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}"
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>mtlbench scaling</title><style>{style}</style></head><body>{''.join(body)}</body></html>"
    _atomic_write(out / "scaling.md", "\n".join(markdown) + "\n")
    _atomic_write(out / "scaling.html", page)
    return out / "scaling.html"
