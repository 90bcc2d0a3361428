"""The leaderboard's scaling page, drawn from the scaling Parquet tables alone.

For every study (``<results_dir>/scaling/<study>.parquet``) and every numeric axis it swept: one
figure with four log-log panels (step time, FLOPs per step, step memory, throughput) and the
hypervolume at the fixed budget (log x), one line per method; and a table of each method's fitted
slope of cost versus the axis value (least squares on logs,
:func:`mtlbench.harness.scaling.fit_power_law`) with the end values. The datasets axis gets a
table (one row per dataset and method) and a figure that draws its points on the synthetic
study's log-log axes (step time against the model's parameter count and against the task count);
rows measured on stand-in inputs are marked (hollow markers, "stand-in" in the table) and have
no HV. Written as ``<results_dir>/leaderboard/scaling.md`` (PNG files beside it) and
``scaling.html`` (images embedded).
"""

from __future__ import annotations

import base64
import html
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlbench.harness.scaling.points import axis_x
from mtlbench.harness.scaling.power_law import fit_power_law
from mtlbench.harness.scaling.report_plots import AXIS_TITLES, plot_axis, plot_datasets
from mtlbench.harness.scaling.table import read_table

Row = dict[str, Any]
SLOPE_COLUMNS = ("step_seconds", "flops_per_step", "step_memory_bytes")
STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}"
)
STAND_IN_NOTE = (
    "Rows marked stand-in: the dataset's files are absent here, so the costs were measured on "
    "stand-in inputs of the real shapes (same model, same tasks, random valid targets); they "
    "have no HV."
)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"


@dataclass
class Page:
    """The page being written, as Markdown lines and HTML fragments side by side."""

    out: Path
    markdown: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.markdown += [f"{'#' * level} {text}", ""]
        self.body.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str) -> None:
        self.markdown += [text, ""]
        self.body.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.markdown += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        self.markdown += ["| " + " | ".join(r) + " |" for r in rows]
        self.markdown.append("")
        cells = ["<table><tr>", *[f"<th>{html.escape(h)}</th>" for h in header], "</tr>"]
        for row in rows:
            cells += ["<tr>", *[f"<td>{html.escape(c)}</td>" for c in row], "</tr>"]
        self.body.append("".join(cells) + "</table>")

    def image(self, path: Path, alt: str) -> None:
        self.markdown += [f"![{alt}]({path.name})", ""]
        encoded = base64.b64encode(path.read_bytes()).decode()
        self.body.append(f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{encoded}'>")

    def bullets(self, title: str, items: list[str]) -> None:
        self.markdown += [title, "", *[f"- {item}" for item in items], ""]
        entries = "".join(f"<li>{html.escape(item)}</li>" for item in items)
        self.body.append(f"<p>{html.escape(title)}</p><ul>{entries}</ul>")


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


def _datasets_table(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    header = [
        "dataset",
        "method",
        "parameters",
        "tasks",
        "input",
        "step s",
        "FLOPs/step",
        "peak memory MiB",
        "HV",
        "inputs",
    ]
    table = []
    for row in sorted(rows, key=lambda r: (r["axis_value"], r["method_label"])):
        stand_in = bool(row.get("stand_in"))
        table.append(
            [
                row["dataset"],
                row["method_label"],
                f"{row['parameter_count']:,}",
                str(row["task_count"]),
                "×".join(str(n) for n in _shape(row.get("input_shape"))),
                _fmt(row["step_seconds"]),
                _fmt(row["flops_per_step"]),
                _fmt(row["peak_memory_bytes"] / 2**20, 4),
                "—" if stand_in else _fmt(row.get("hypervolume")),
                "stand-in" if stand_in else "real",
            ]
        )
    return header, table


def _shape(text: str | None) -> list[int]:
    import json

    return list(json.loads(text)) if text else []


def _stand_in_reason(row: Row) -> str:
    """The loader's error, prefixed with the dataset unless it names it already."""
    reason = row["stand_in_reason"] or "files absent"
    return reason if reason.startswith(row["dataset"]) else f"{row['dataset']}: {reason}"


def _problem_line(row: Row) -> str:
    where = f"{row['axis']}={row['axis_value']:.4g}"
    if row["axis"] == "datasets":
        where = f"datasets={row['dataset']}"
    return f"{where} {row['method_label']}: {row['status']} — {row['error']}"


def _study_section(page: Page, rows: list[Row]) -> None:
    """One study: its intro, a table and a figure per axis, what was not measured."""
    study = rows[0]["study"]
    ok = [r for r in rows if r["status"] == "ok"]
    devices = sorted({f"{r['device']} ({r['device_name']})" for r in ok})
    measures = sorted({r["memory_measure"] for r in ok if r["memory_measure"]})
    page.heading(2, study)
    page.paragraph(
        f"Device: {', '.join(devices) or '—'}; batch {rows[0]['batch_size']}; "
        f"memory: {', '.join(measures) or '—'}. Step time: median over the timed steps; slopes: "
        "least squares on (log x, log y); x on the shared-parameter axis is the actual encoder "
        "parameter count."
    )
    by_axis: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for row in ok:
        by_axis[row["axis"]][row["method_label"]].append(row)
    colours = {label: i % 10 for i, label in enumerate(sorted({r["method_label"] for r in ok}))}
    for axis, curves in by_axis.items():
        page.heading(3, AXIS_TITLES.get(axis, axis))
        image = page.out / f"scaling_{study}_{axis}.png"
        if axis == "datasets":
            axis_rows = [r for label_rows in curves.values() for r in label_rows]
            page.table(*_datasets_table(axis_rows))
            reasons = [_stand_in_reason(r) for r in axis_rows if r["stand_in"]]
            if reasons:
                page.paragraph(STAND_IN_NOTE)
                page.bullets("Why each was a stand-in:", sorted(set(reasons)))
            plot_datasets(study, ok, colours, image)
        else:
            page.table(*_slope_table(curves))
            plot_axis(study, axis, curves, image)
        page.image(image, axis)
    problems = list(dict.fromkeys(_problem_line(r) for r in rows if r["status"] != "ok"))
    if problems:
        page.bullets("Not measured:", problems)


def build_scaling_page(results_dir: Path) -> Path | None:
    """Write ``leaderboard/scaling.md`` and ``scaling.html``; None if no study was recorded."""
    from mtlbench.harness.leaderboard import _atomic_write

    folder = Path(results_dir) / "scaling"
    tables = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not tables:
        return None
    out = Path(results_dir) / "leaderboard"
    out.mkdir(parents=True, exist_ok=True)
    page = Page(out)
    page.heading(1, "mtlbench scaling studies")
    for table_file in tables:
        rows = read_table(table_file)
        if rows:
            _study_section(page, rows)
    head = f"<meta charset='utf-8'><title>mtlbench scaling</title><style>{STYLE}</style>"
    document = f"<!doctype html><html><head>{head}</head><body>{''.join(page.body)}</body></html>"
    _atomic_write(out / "scaling.md", "\n".join(page.markdown) + "\n")
    _atomic_write(out / "scaling.html", document)
    return out / "scaling.html"
