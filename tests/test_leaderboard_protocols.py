"""The leaderboard never averages runs of different protocols (issue 21).

A results folder holds the hand-built runs of ``_hand_runs.py`` under two protocols that differ
only in the learning rate; each protocol must get its own table whose numbers are those computed
by hand from its own rows, under a heading that names the learning rate. Within a protocol, one
method label recorded with two parameter sets or engines gives two rows.
"""

import dataclasses
import math
import re

import pytest
from _hand_runs import baseline_rows, result, solution, spec, two_solution_run
from mtlbench.harness.leaderboard import build_leaderboard
from mtlbench.harness.leaderboard_protocols import protocol_of, split_by_protocol
from mtlbench.harness.leaderboard_tables import method_summaries
from mtlbench.harness.records import EvaluationRecord, to_row
from mtlbench.harness.runner import result_rows
from mtlbench.harness.selection import with_selection
from mtlbench.harness.store import ResultStore
from test_leaderboard import _check_html, _table

SEEDS = (0, 1, 2)
FAST = {"lr": 1e6}  # the second protocol's training settings (the default lr is 1e-3)
# Student-t quantile t_{0.975, 2} (3 seeds), from a printed table: the independent oracle of the
# 95% intervals below
T_975_2DF = 4.302652729911275
# protocol lr = 1e6: EW's accuracies per seed, and the baseline's (left 0.8, right 0.2)
FAST_EW = {0: [0.5, 0.1], 1: [0.6, 0.1], 2: [0.7, 0.1]}
FAST_BASELINE = [0.8, 0.2]


def _one_solution(method: str, seed: int, accuracies: list[float], **changes) -> object:
    run_spec = dataclasses.replace(spec(method, seed), **changes)
    return result(run_spec, [solution(0, "model", accuracies, accuracies)])


def _write(store: ResultStore, run) -> None:
    store.write_run(run.spec.run_hash, result_rows(run, "", store.rows()))
    # two anytime points: half the final hypervolume at half the budget, all of it at the end
    final = run.hypervolume.value
    points = [
        to_row(
            EvaluationRecord(
                run_hash=run.spec.run_hash,
                suite="hand",
                method=run.spec.method,
                method_label=run.spec.method_label,
                is_baseline=False,
                dataset=run.spec.dataset,
                seed=run.spec.seed,
                budget_kind="flops",
                budget_limit=1e9,
                step=step,
                budget_spent=1e9 * fraction,
                budget_spent_flops=1e9 * fraction,
                budget_fraction=fraction,
                val_hypervolume=final * fraction,
                test_hypervolume=final * fraction,
                hv_method="exact",
                num_solutions=1,
            )
        )
        for step, fraction in ((5, 0.5), (10, 1.0))
    ]
    store.write_evaluations(run.spec.run_hash, points)


def _two_protocols(tmp_path) -> ResultStore:
    """Default protocol: baselines (0.9, 0.3), EW (0.9, 0.3), MGDA (solutions A, B) on 3 seeds;
    lr = 1e6: baselines (0.8, 0.2) and EW with FAST_EW, on the same 3 seeds."""
    store = ResultStore(tmp_path)
    for seed in SEEDS:
        for row in baseline_rows(seed):
            store.write_run(row["run_hash"], [row])
        for task in range(2):
            own = [FAST_BASELINE[t] if t == task else 0.02 for t in range(2)]
            run_spec = dataclasses.replace(spec("single_task", seed, {"task": task}), training=FAST)
            baseline = result(run_spec, [solution(0, "model", own, own)])
            store.write_run(baseline.spec.run_hash, result_rows(baseline, "", []))
    for seed in SEEDS:
        _write(store, _one_solution("ew", seed, [0.9, 0.3]))
        _write(store, two_solution_run(seed, "mgda"))
        _write(store, _one_solution("ew", seed, FAST_EW[seed], training=FAST))
    return store


def _sections(markdown: str) -> dict[str, str]:
    """Level-2 heading → its section's text."""
    parts = re.split(r"^## ", markdown, flags=re.MULTILINE)[1:]
    return {part.splitlines()[0]: part for part in parts}


def _interval(values: list[float], digits: int = 3) -> tuple[float, str, str]:
    """Mean and the two bounds (formatted to ``digits``) of the 95% t interval over 3 seeds."""
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = T_975_2DF * sd / math.sqrt(len(values))
    return mean, f"{mean - half:.{digits}g}", f"{mean + half:.{digits}g}"


def test_two_protocols_give_two_tables_with_their_own_numbers(tmp_path) -> None:
    _two_protocols(tmp_path)
    page = build_leaderboard(tmp_path).read_text()
    markdown = (tmp_path / "leaderboard" / "index.md").read_text()
    sections = _sections(markdown)
    slow_heading = "multidigits · 1e9 FLOPs · training.lr = 0.001"
    fast_heading = "multidigits · 1e9 FLOPs · training.lr = 1e6"
    assert {slow_heading, fast_heading} <= set(sections)
    assert f"<h2>{slow_heading}</h2>" in page and f"<h2>{fast_heading}</h2>" in page
    assert "could not be built" not in markdown

    # default protocol: exactly the numbers of test_leaderboard's store (no lr = 1e6 run in them)
    slow = {row[1]: row for row in _table(sections[slow_heading], "Ranking at the end")}
    assert [row[:2] for row in slow.values()] == [
        ["1", "mgda"],
        ["2", "ew"],
        ["reference", "single_task"],
    ]
    assert slow["ew"][2] == "0.27 [0.27, 0.27]"  # errors (0.1, 0.7): 0.9 · 0.3
    assert slow["ew"][4] == "0 [0, 0]" and slow["ew"][-1] == "completed 3"
    assert slow["single_task"][6].startswith("0.9 ") and slow["single_task"][-1] == "completed 6"

    # lr = 1e6: EW's errors (1 - a, 0.9) give HV = a · 0.1; Δm% against its own baseline
    fast = {row[1]: row for row in _table(sections[fast_heading], "Ranking at the end")}
    assert list(fast) == ["ew", "single_task"]
    hv_mean, hv_low, hv_high = _interval([a * 0.1 for a, _ in FAST_EW.values()])
    assert fast["ew"][2] == f"{hv_mean:.4g} [{hv_low}, {hv_high}]"  # 0.06 [0.0352, 0.0848]
    delta_m = [
        -100 / 2 * sum((acc[t] - FAST_BASELINE[t]) / FAST_BASELINE[t] for t in range(2))
        for acc in FAST_EW.values()
    ]  # 43.75, 37.5, 31.25
    dm_mean, dm_low, dm_high = _interval(delta_m)
    assert fast["ew"][4] == f"{dm_mean:.3g} [{dm_low}, {dm_high}]"  # 37.5 [22, 53]
    left_mean, left_low, left_high = _interval([acc[0] for acc in FAST_EW.values()], 3)
    assert fast["ew"][6] == f"{left_mean:.4g} [{left_low}, {left_high}]"
    assert fast["single_task"][6].startswith("0.8 ") and fast["single_task"][7].startswith("0.2 ")
    assert fast["ew"][-1] == "completed 3" and fast["single_task"][-1] == "completed 6"

    # the anytime tables: each protocol's own curves (mixed, EW would read 0.165 at 100%)
    slow_anytime = {r[0]: r[1:] for r in _table(sections[slow_heading], "Anytime")}
    fast_anytime = {r[0]: r[1:] for r in _table(sections[fast_heading], "Anytime")}
    assert slow_anytime["ew"][1:] == ["0.135 (2; n=3)", "0.27 (2; n=3)"]
    assert fast_anytime == {"ew": ["— (—; n=0)", "0.03 (1; n=3)", "0.06 (1; n=3)"]}
    # four figures, each protocol its own files
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(images) == len(set(images)) == 4
    assert "Against the true Pareto front" not in markdown  # multidigits has no known front
    _check_html(page)


def test_headings_name_only_the_settings_that_differ() -> None:
    rows = []
    for seed in SEEDS[:1]:
        rows += result_rows(_one_solution("ew", seed, [0.9, 0.3]), "", [])
        rows += result_rows(_one_solution("ew", seed, [0.9, 0.3], training=FAST), "", [])
        rows += result_rows(_one_solution("ew", seed, [0.9, 0.3], scoring="best_val"), "", [])
        rows += result_rows(_one_solution("ew", seed, [0.9, 0.3], dataset="other"), "", [])
    headings = [group.heading for group in split_by_protocol(with_selection(rows))]
    assert headings == [
        "multidigits · 1e9 FLOPs · scoring = best_val · training.lr = 0.001",
        "multidigits · 1e9 FLOPs · scoring = final · training.lr = 0.001",
        "multidigits · 1e9 FLOPs · scoring = final · training.lr = 1e6",
        "other · 1e9 FLOPs",  # the only protocol of its dataset: nothing to tell apart
    ]


def test_defaults_and_file_locations_do_not_split_a_protocol() -> None:
    implicit = result_rows(_one_solution("ew", 0, [0.9, 0.3]), "", [])[0]
    explicit = result_rows(
        _one_solution(
            "ew",
            0,
            [0.9, 0.3],
            training={"lr": 1e-3, "checkpoint_every": 20},
            dataset_params={"data_root": "/elsewhere"},
        ),
        "",
        [],
    )[0]
    assert implicit["run_hash"] != explicit["run_hash"]
    assert protocol_of(implicit) == protocol_of(explicit)
    other_size = result_rows(
        _one_solution("ew", 0, [0.9, 0.3], dataset_params={"train_pairs": 64}), "", []
    )[0]
    assert protocol_of(other_size) != protocol_of(implicit)


def test_one_label_with_two_parameter_sets_or_engines_gives_two_rows() -> None:
    rows: list[dict] = []
    for seed in SEEDS:
        rows += baseline_rows(seed)  # single_task's runs differ in their task: one row
        for c, accuracies in ((0.2, [0.9, 0.3]), (0.4, [0.5, 0.5])):
            run = _one_solution("cagrad", seed, accuracies, method_params={"c": c})
            rows += result_rows(run, "", rows)
        for engine, accuracies in (("loop", [0.6, 0.6]), ("batched", [0.7, 0.2])):
            rows += result_rows(_one_solution("ew", seed, accuracies, engine=engine), "", rows)
    (group,) = split_by_protocol(with_selection(rows))
    hv = {s.label: s.interval(s.hv).mean for s in method_summaries(group.rows)}
    # HV of one solution with accuracies (a, b): a · b (errors 1 - a, 1 - b, reference (1, 1))
    assert hv == pytest.approx(
        {
            "cagrad (c = 0.2)": 0.27,
            "cagrad (c = 0.4)": 0.25,
            "ew (engine = batched)": 0.14,
            "ew (engine = loop)": 0.36,
            # the union of its two runs: errors (0.1, 0.98) and (0.98, 0.7), boxes overlapping
            # in [0.98, 1]²: 0.9 · 0.02 + 0.02 · 0.3 - 0.02 · 0.02
            "single_task": 0.0236,
        }
    )
