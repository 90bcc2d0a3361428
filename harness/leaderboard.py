"""The leaderboard: Markdown and HTML pages built from the Parquet tables alone.

Per protocol (``leaderboard_protocols.py``: dataset and its parameters, budget, training
settings, scoring, device; runs of different protocols are never averaged together, and each
heading names the settings that differ from the dataset's other protocols), with one row per
method label, parameters and engine:

- a ranking of the methods by mean test hypervolume over seeds (equal budget) with 95%
  intervals, paired comparisons against ``ew`` (ties where the seeds cannot tell), the test Δm%
  and per-task test metrics of each run's *selected* solution (chosen on validation numbers,
  ``selection.py``); the baseline (``Method.is_baseline``: ``single_task``) is an unranked
  reference row;
- the fronts (first seed, first two tasks) with the baseline's ideal point;
- the anytime view from the evaluation table: test hypervolume against the budget spent (mean
  and band over seeds) and a ranking at 25%, 50% and 100% of the budget;
- for datasets whose Pareto front is known (``true_front``), HV / true HV and the distance of
  the solutions to the front (``leaderboard_truth.py``), the front drawn behind the fronts' plot.

With several datasets, an average-rank table across the protocols' tables (Friedman / Nemenyi).
The numbers come from ``leaderboard_tables.py`` and the figures from ``leaderboard_plots.py``.
Each table and figure is built on its own: one that fails leaves a one-line note naming it and
the error, and the rest of the page is written; building never raises for bad records.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from mtlbench.harness.leaderboard_protocols import ProtocolGroup, split_by_protocol
from mtlbench.harness.leaderboard_tables import (
    MethodSummary,
    Table,
    anytime_curves,
    anytime_table,
    average_rank_table,
    fmt,
    method_summaries,
    ranking_table,
)
from mtlbench.harness.selection import with_selection
from mtlbench.harness.store import ResultStore

Row = dict[str, Any]
STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:0.5em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}p.error{color:#a00}"
)


class Page:
    """The page being built, as Markdown lines and HTML pieces side by side."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.markdown: list[str] = ["# mtlbench leaderboard", ""]
        self.html: list[str] = ["<h1>mtlbench leaderboard</h1>"]

    def heading(self, text: str, level: int = 2) -> None:
        self.markdown += [f"{'#' * level} {text}", ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, css: str = "") -> None:
        self.markdown += [text, ""]
        attribute = f" class='{css}'" if css else ""
        self.html.append(f"<p{attribute}>{html.escape(text)}</p>")

    def table(self, table: Table) -> None:
        if table.title:
            self.heading(table.title, 3)
        if table.rows:
            self.markdown += [
                "| " + " | ".join(table.header) + " |",
                "|" + "---|" * len(table.header),
            ]
            self.markdown += ["| " + " | ".join(row) + " |" for row in table.rows]
            self.markdown.append("")
            cells = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
            self.html.append(f"<table><tr>{cells}</tr>")
            self.html += [
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in table.rows
            ]
            self.html.append("</table>")
        if table.note:
            self.paragraph(table.note)

    def image(self, path: Path, alt: str) -> None:
        data = path.read_bytes()
        if not data:
            raise ValueError(f"{path.name} is empty")
        self.markdown += [f"![{alt}]({path.name})", ""]
        encoded = base64.b64encode(data).decode()
        self.html.append(
            f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{encoded}'></p>"
        )

    def guarded(self, name: str, build: Callable[[], None]) -> None:
        """Run ``build``; if it fails, say so in one line naming ``name`` and the error."""
        try:
            build()
        except Exception as error:  # one broken table must not lose the page
            message = str(error).splitlines()[0] if str(error) else ""
            self.paragraph(
                f"Table '{name}' could not be built: {type(error).__name__}: {message}", "error"
            )

    def render_html(self) -> str:
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>mtlbench leaderboard"
            f"</title><style>{STYLE}</style></head><body>{''.join(self.html)}</body></html>"
        )


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _methods_section(recorded: set[str]) -> tuple[list[str], list[str]]:
    """The table of the methods with recorded runs: paper, what a step consumes, its cost
    (Markdown lines, HTML pieces); from the method catalog, so it matches ``mtlbench info``."""
    from mtlbench.harness.catalog import method_catalog

    entries = [e for e in method_catalog() if e.name in recorded]
    if not entries:
        return [], []
    header = ["method", "family", "paper", "consumes", "per-step cost"]
    rows = [[e.name, e.family, e.paper, e.consumes, e.cost] for e in entries]
    markdown = ["## Methods", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    markdown += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    page = ["<h2>Methods</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
    page += [
        "<tr>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in r) + "</tr>"
        for r in rows
    ]
    page.append("</table>")
    return markdown, page


def _estimator_note(group: list[Row]) -> str:
    """The hypervolume estimator(s) behind a group's numbers, with their error bounds."""
    estimators = set()
    for row in group:
        if row["status"] != "completed" or not row.get("hv_method"):
            continue
        bounds = [
            f"{name}={row[f'hv_{name}']:.3g}"
            for name in ("epsilon", "delta")
            if row.get(f"hv_{name}") not in (None, 0.0)
        ]
        estimators.add(row["hv_method"] + (f" ({', '.join(bounds)})" if bounds else ""))
    return ", ".join(sorted(estimators)) or "none recorded"


def _group_section(
    page: Page, group: ProtocolGroup, evaluations: list[Row], summaries_out: dict
) -> None:
    """One protocol's section: its ranking (its summaries go to ``summaries_out[heading]``),
    the comparison with the true front, the fronts' plot and the anytime view, each guarded."""
    heading, rows = group.heading, group.rows
    page.heading(heading)
    page.paragraph(f"Protocol: {group.protocol.description()}.")
    known_front = _true_front(page, group)
    # a minimised objective is a regression MAE on learning datasets, the objective itself on
    # analytic problems (those that know their front)
    objective_names = _objective_names(rows[0], "MAE" if known_front is None else "objective")
    summaries: list[MethodSummary] = []  # filled by the ranking, reused by the tables after it

    def ranking() -> None:
        summaries.extend(method_summaries(rows))
        page.table(ranking_table(summaries, "Ranking at the end of the budget"))
        summaries_out[heading] = summaries
        page.paragraph(_ranking_note(rows, objective_names))

    page.guarded(f"ranking, {heading}", ranking)
    if known_front is not None:
        page.guarded(
            f"against the true front, {heading}", lambda: _truth(page, rows, summaries, known_front)
        )
    page.guarded(
        f"fronts plot, {heading}",
        lambda: _fronts(page, group, summaries, objective_names, known_front),
    )
    points = group.evaluations(evaluations)
    page.guarded(f"anytime, {heading}", lambda: _anytime(page, group, points))


def _true_front(page: Page, group: ProtocolGroup) -> np.ndarray | None:
    """The dataset's true Pareto front (points, objectives), if it declares one."""
    from mtlbench.harness.leaderboard_truth import true_front

    known_front: list[np.ndarray] = []

    def lookup() -> None:
        front = true_front(group.rows[0])
        if front is not None:
            known_front.append(front)

    page.guarded(f"true front, {group.heading}", lookup)
    return known_front[0] if known_front else None


def _objective_names(row: Row, minimised: str) -> list[str]:
    """``<task> test error`` for a task whose metric is higher-is-better (the error is what is
    minimised), ``<task> test <minimised>`` for the others."""
    return [
        f"{name} test {('error' if higher else minimised)}"
        # a damaged record may lack the tasks' directions (None): name the tasks that have one
        for name, higher in zip(
            row["task_names"] or [], row["higher_is_better"] or [], strict=False
        )
    ]


def _ranking_note(rows: list[Row], objective_names: list[str]) -> str:
    """What the ranking's numbers are: objectives, reference point, estimator, scored
    checkpoint, selection rule and the baseline runs of Δm%."""
    references = ", ".join(fmt(v) for v in rows[0]["hv_reference"] or [])
    baselines = sorted({h for r in rows for h in (r["delta_m_baseline_runs"] or [])})
    rules = sorted({r["selection_rule"] for r in rows if r.get("selection_rule")})
    return (
        f"Hypervolume of test objectives ({', '.join(objective_names)}), reference point "
        f"({references}); estimator: {_estimator_note(rows)}; scored checkpoint: "
        f"{rows[0]['scoring']}. Selected solution: {'; '.join(rules) or '—'}. Δm% against "
        f"baseline runs {', '.join(baselines) if baselines else '(none recorded)'}."
    )


def _truth(
    page: Page, rows: list[Row], summaries: list[MethodSummary], known_front: np.ndarray
) -> None:
    """HV / true HV and the distances of the solutions to the dataset's known front."""
    from mtlbench.harness.leaderboard_truth import truth_table

    table = truth_table(
        summaries or method_summaries(rows),
        known_front,
        list(rows[0]["hv_reference"] or []),
        "Against the true Pareto front",
    )
    page.table(table)


def _fronts(
    page: Page,
    group: ProtocolGroup,
    summaries: list[MethodSummary],
    objective_names: list[str],
    known_front: np.ndarray | None,
) -> None:
    """The fronts' plot (first seed, first two tasks), the true front behind them if known."""
    from mtlbench.harness.leaderboard_plots import plot_fronts

    image = page.folder / f"{group.stem}.png"
    plot_fronts(
        summaries or method_summaries(group.rows),
        group.heading,
        image,
        objective_names,
        known_front,
    )
    page.image(image, "fronts")


def _anytime(page: Page, group: ProtocolGroup, points: list[Row]) -> None:
    """The ranking at 25%, 50% and 100% of the budget and the plot of HV against budget."""
    from mtlbench.harness.leaderboard_plots import plot_anytime

    page.table(anytime_table(points, "Anytime: test hypervolume at 25%, 50%, 100% of the budget"))
    curves = anytime_curves(points)
    if curves:
        image = page.folder / f"{group.stem}_anytime.png"
        plot_anytime(curves, f"{group.heading}: test HV against budget", image)
        page.image(image, "hypervolume against budget")


def build_leaderboard(results_dir: Path) -> Path:
    """Write ``results_dir/leaderboard/index.md`` and ``index.html``; return the HTML path.

    Never raises for what the records hold: a table that cannot be built is named on the page
    with its error, and every other table is written."""
    out = Path(results_dir) / "leaderboard"
    out.mkdir(parents=True, exist_ok=True)
    page = Page(out)
    rows: list[Row] = []
    evaluations: list[Row] = []

    def read() -> None:
        store = ResultStore(results_dir)
        rows.extend(with_selection(store.rows()))
        evaluations.extend(store.evaluation_rows())

    page.guarded("run table", read)
    groups: list[ProtocolGroup] = []
    page.guarded("protocols", lambda: groups.extend(split_by_protocol(rows)))
    if not rows:
        page.paragraph("No runs recorded yet.")
    summaries: dict[str, list[MethodSummary]] = {}
    for group in groups:
        _group_section(page, group, evaluations, summaries)
    if len({group.protocol.dataset for group in groups}) > 1:
        page.guarded(
            "average rank across datasets", lambda: page.table(average_rank_table(summaries))
        )

    def methods() -> None:
        methods_md, methods_html = _methods_section({row["method"] for row in rows})
        page.markdown += methods_md
        page.html += methods_html

    page.guarded("methods", methods)
    _atomic_write(out / "index.md", "\n".join(page.markdown) + "\n")
    _atomic_write(out / "index.html", page.render_html())
    return out / "index.html"
