"""The leaderboard: Markdown and HTML pages built from the Parquet table alone.

Per (dataset, budget): methods ranked by mean test hypervolume over seeds (equal budget), with
its spread, Δm% against the single-task baseline (the best solution of each run; the baseline
runs are listed in the table), per-task test metrics of that solution, wall time, steps and
how many runs diverged or failed. ``single_task`` appears as the reference: its front is the
union of its per-task runs and its metrics are each task's own run. A plot shows each method's
front (first seed, first two tasks); methods whose solutions carry coordinates (continuous
fronts: PML, Pareto expansion) are drawn as curves.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections import defaultdict
from pathlib import Path
from statistics import mean, pstdev
from typing import Any

import numpy as np
from mtlbench.harness.metrics import hypervolume
from mtlbench.harness.store import ResultStore

Row = dict[str, Any]


def _fmt(value: float, digits: int = 4) -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}g}"
    )


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return mean(values), (pstdev(values) if len(values) > 1 else 0.0)


def _runs(rows: list[Row]) -> dict[str, list[Row]]:
    runs: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        runs[row["run_hash"]].append(row)
    return runs


def _best_solution(run_rows: list[Row]) -> Row:
    """The solution with the best Δm% (or the lowest mean objective when Δm% is unknown)."""
    scored = [r for r in run_rows if r["solution_index"] >= 0]
    if not scored:
        return run_rows[0]

    def key(row: Row) -> tuple[float, float]:
        delta = row["delta_m_pct"]
        return (
            math.inf if delta is None or math.isnan(delta) else delta,
            float(np.mean(row["test_objectives"])),
        )

    return min(scored, key=key)


def _method_entries(group: list[Row]) -> list[dict[str, Any]]:
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in group:
        by_label[row["method_label"]].append(row)
    entries = []
    for label, rows in by_label.items():
        runs = _runs(rows)
        first = rows[0]
        task_names = first["task_names"]
        statuses = defaultdict(int)
        for run_rows in runs.values():
            statuses[run_rows[0]["status"]] += 1
        if first["method"] == "single_task":
            entry = _single_task_entry(runs, task_names, first["hv_reference"])
        else:
            completed = [r for r in runs.values() if r[0]["status"] == "completed"]
            best = [_best_solution(r) for r in completed]
            entry = {
                "hv": _mean_std([r[0]["hypervolume"] for r in completed]),
                "delta_m": _mean_std([r[0]["run_delta_m_pct"] for r in completed]),
                "metrics": [
                    mean(b["test_metrics"][t] for b in best) if best else math.nan
                    for t in range(len(task_names))
                ],
                "baseline_runs": sorted(
                    {h for r in completed for h in (r[0]["delta_m_baseline_runs"] or [])}
                ),
                "fronts": {r[0]["seed"]: r for r in completed},
            }
        all_runs = list(runs.values())
        entry.update(
            label=label,
            method=first["method"],
            task_names=task_names,
            wall=_mean_std([r[0]["wall_seconds"] for r in all_runs]),
            steps=_mean_std([float(r[0]["steps"]) for r in all_runs]),
            spent=_mean_std([r[0]["budget_spent"] / r[0]["budget_limit"] for r in all_runs]),
            seeds=len({r[0]["seed"] for r in all_runs}),
            statuses=dict(statuses),
        )
        entries.append(entry)
    entries.sort(key=lambda e: -e["hv"][0] if not math.isnan(e["hv"][0]) else math.inf)
    return entries


def _single_task_entry(
    runs: dict[str, list[Row]], task_names: list[str], reference: list[float]
) -> dict[str, Any]:
    import json

    by_seed: dict[int, list[list[Row]]] = defaultdict(list)
    for run_rows in runs.values():
        if run_rows[0]["status"] == "completed":
            by_seed[run_rows[0]["seed"]].append(run_rows)
    hvs, metrics, fronts = [], defaultdict(list), {}
    for seed, seed_runs in by_seed.items():
        union = [row for run_rows in seed_runs for row in run_rows]
        hvs.append(hypervolume(np.array([r["test_objectives"] for r in union]), reference).value)
        fronts[seed] = union
        for run_rows in seed_runs:
            task = json.loads(run_rows[0]["method_params"])["task"]
            metrics[task].append(run_rows[0]["test_metrics"][task])
    return {
        "hv": _mean_std(hvs),
        "delta_m": (0.0, 0.0) if hvs else (math.nan, math.nan),
        "metrics": [mean(metrics[t]) if metrics[t] else math.nan for t in range(len(task_names))],
        "baseline_runs": [],
        "fronts": fronts,
    }


def _plot(
    entries: list[dict[str, Any]], title: str, path: Path, objective_names: list[str]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 5))
    for index, entry in enumerate(entries):
        if not entry["fronts"]:
            continue
        seed = min(entry["fronts"])
        rows = [r for r in entry["fronts"][seed] if r["solution_index"] >= 0]
        points = np.array([r["test_objectives"][:2] for r in rows])
        color = f"C{index % 10}"
        # a front parameterised by a 1-D family (2 tasks) is drawn as a curve along its
        # coordinate; with 3+ tasks a grid on the simplex has no order, so it is scattered
        curve = all(r["coordinates"] and len(r["coordinates"]) == 2 for r in rows)
        if len(rows) > 2 and curve and entry["method"] != "single_task":
            order = np.argsort([r["coordinates"][0] for r in rows])
            axes.plot(
                points[order, 0], points[order, 1], "-o", ms=3, color=color, label=entry["label"]
            )
        else:
            marker = "s" if entry["method"] == "single_task" else "o"
            axes.scatter(
                points[:, 0], points[:, 1], marker=marker, color=color, label=entry["label"]
            )
    axes.set_xlabel(objective_names[0])
    axes.set_ylabel(objective_names[1] if len(objective_names) > 1 else "")
    axes.set_title(title)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


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


def build_leaderboard(results_dir: Path) -> Path:
    """Write ``results_dir/leaderboard/index.md`` and ``index.html``; return the HTML path."""
    rows = ResultStore(results_dir).rows()
    out = Path(results_dir) / "leaderboard"
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["budget_kind"], row["budget_limit"])].append(row)
    markdown = ["# mtlbench leaderboard", ""]
    body = ["<h1>mtlbench leaderboard</h1>"]
    if not groups:
        markdown.append("No runs recorded yet.")
        body.append("<p>No runs recorded yet.</p>")
    for (dataset, budget_kind, budget_limit), group in sorted(groups.items()):
        entries = _method_entries(group)
        task_names = entries[0]["task_names"]
        heading = f"{dataset} — budget {budget_limit:.3g} {budget_kind}"
        image = out / f"{dataset}_{budget_kind}_{budget_limit:.3g}.png".replace("+", "")
        objective_names = [
            f"{n} test {('error' if h else 'MAE')}"
            for n, h in zip(task_names, group[0]["higher_is_better"])
        ]
        _plot(entries, heading, image, objective_names)
        header = [
            "rank",
            "method",
            "HV (mean ± sd)",
            "Δm% ",
            *[f"{n} metric" for n in task_names],
            "wall s",
            "steps",
            "budget used",
            "seeds",
            "runs",
        ]
        table = []
        for rank, e in enumerate(entries, 1):
            statuses = ", ".join(f"{k} {v}" for k, v in sorted(e["statuses"].items()))
            table.append(
                [
                    str(rank),
                    e["label"],
                    f"{_fmt(e['hv'][0])} ± {_fmt(e['hv'][1], 2)}",
                    _fmt(e["delta_m"][0], 3),
                    *[_fmt(m) for m in e["metrics"]],
                    _fmt(e["wall"][0], 3),
                    _fmt(e["steps"][0], 5),
                    f"{_fmt(100 * e['spent'][0], 3)}%",
                    str(e["seeds"]),
                    statuses,
                ]
            )
        references = ", ".join(_fmt(v) for v in group[0]["hv_reference"])
        baselines = sorted({h for e in entries for h in e["baseline_runs"]})
        notes = (
            f"Hypervolume of test objectives ({', '.join(objective_names)}), reference point ({references}); "
            f"scored checkpoint: {group[0]['scoring']}. Δm% against single-task runs "
            f"{', '.join(baselines) if baselines else '(none recorded)'}; metrics are those of each run's best-Δm% solution."
        )
        markdown += [
            f"## {heading}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        markdown += ["| " + " | ".join(r) + " |" for r in table]
        markdown += ["", notes, "", f"![fronts]({image.name})", ""]
        encoded = base64.b64encode(image.read_bytes()).decode()
        body.append(
            f"<h2>{html.escape(heading)}</h2><table><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in header)
            + "</tr>"
        )
        body += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table]
        body.append(
            f"</table><p>{html.escape(notes)}</p><img alt='fronts' src='data:image/png;base64,{encoded}'>"
        )
    methods_md, methods_html = _methods_section({row["method"] for row in rows})
    markdown += methods_md
    body += methods_html
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>mtlbench leaderboard</title><style>{style}</style></head><body>{''.join(body)}</body></html>"
    _atomic_write(out / "index.md", "\n".join(markdown) + "\n")
    _atomic_write(out / "index.html", page)
    return out / "index.html"
