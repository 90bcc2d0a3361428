"""The leaderboard's split of the records into protocols: runs are only averaged within one.

A *protocol* is everything that decides a run's numbers besides the method and the seed: the
dataset and its parameters, the budget (kind and limit), the training settings, the scoring rule
and the device (the columns that ``selection.BASELINE_KEYS`` matches baselines on). Each protocol
is its own table: a run with ``training.lr = 1e6`` never enters the means, intervals, ranks, Δm%,
anytime curves or plots of the runs with the default learning rate.

Settings are compared after filling in their defaults (the registered ``Params`` class of the
dataset, :class:`~mtlbench.harness.method.TrainingConfig`), so a run recorded before a setting
existed, or one that spelled out a default, shares the table of the runs that left it implicit.
Settings that only say where or how often files are written (``LOCATION_SETTINGS``) are not part
of the protocol.

Within a protocol a table row is a (method label, method parameters, engine): one label recorded
with two parameter sets or engines becomes two rows whose names carry the setting that differs,
``cagrad (c = 0.2)`` and ``cagrad (c = 0.4)``. A baseline's ``task`` parameter is not part of its
row (``single_task`` is one run per task by design, see ``selection.py``).

A table's heading names the dataset, the budget and only the settings that differ between the
tables of that dataset: ``multidigits · 2e9 FLOPs · training.lr = 1e6``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from mtlbench.harness.selection import is_baseline_row

Row = dict[str, Any]
SEPARATOR = " · "
# settings that change where or how often files are written, never a number
LOCATION_SETTINGS = {
    "dataset": frozenset({"data_root"}),
    "training": frozenset({"checkpoint_every"}),
}
# method parameters that a baseline's suite entry expands into one run each (selection.py reads
# a baseline run's task the same way): the runs of all tasks form one row
BASELINE_EXPANDED_PARAMS = frozenset({"task"})
BUDGET_UNITS = {"flops": "FLOPs", "seconds": "s"}
UNSET = "(unset)"


def compact_number(value: float) -> str:
    """``2000000000.0`` → ``2e9``, ``0.001`` → ``0.001``, ``1e-05`` → ``1e-5`` (4 digits)."""
    text = f"{value:.4g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def setting_text(value: Any) -> str:
    """A setting's value as a reader writes it: numbers compact, strings bare, lists bracketed."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return compact_number(float(value)) if isinstance(value, float) else str(value)
    if isinstance(value, list):
        return "[" + ", ".join(setting_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {setting_text(v)}" for k, v in sorted(value.items())) + "}"
    return str(value)


def budget_text(kind: str, limit: float) -> str:
    """``2e9 FLOPs`` or ``600 s``."""
    return f"{compact_number(float(limit))} {BUDGET_UNITS.get(kind, kind)}"


@lru_cache(maxsize=1024)
def _with_defaults(kind: str, name: str, recorded: str) -> str:
    """The JSON ``recorded`` (a dict) completed with the defaults of its ``Params`` class and
    stripped of location settings; as recorded when the class is gone or rejects it."""
    from mtlbench.harness.method import TrainingConfig
    from mtlbench.harness.registry import DATASETS, METHODS

    values = json.loads(recorded or "{}")
    # an old record (a setting since removed) or an unregistered name is compared as written
    with contextlib.suppress(Exception):
        if kind == "training":
            model: Any = TrainingConfig
        else:
            model = (DATASETS if kind == "dataset" else METHODS).get(name).Params
        values = model.model_validate(values).model_dump(mode="json")
    for key in LOCATION_SETTINGS.get(kind, ()):
        values.pop(key, None)
    return json.dumps(values, sort_keys=True)


@dataclass(frozen=True)
class Protocol:
    """The settings that runs must share to be averaged together.

    dataset: its registered name; budget_kind, budget_limit: ``flops`` | ``seconds`` and the
    limit in that unit; settings: (name, value as JSON) sorted by name, one per dataset
    parameter (``dataset.<name>``), training setting (``training.<name>``), ``scoring`` and
    ``device``.
    """

    dataset: str
    budget_kind: str
    budget_limit: float
    settings: tuple[tuple[str, str], ...]

    @property
    def digest(self) -> str:
        """8 hex digits that tell protocols apart in file names."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:8]

    def setting(self, name: str) -> str:
        """The value of setting ``name`` as text, ``(unset)`` when the runs did not record it."""
        values = dict(self.settings)
        return setting_text(json.loads(values[name])) if name in values else UNSET

    def description(self) -> str:
        """Every setting, for the line under a table's heading."""
        parts = [budget_text(self.budget_kind, self.budget_limit)]
        parts += [f"{name} = {setting_text(json.loads(value))}" for name, value in self.settings]
        return "; ".join(parts)


def protocol_of(row: Row) -> Protocol:
    """The protocol a record was run under."""
    settings: list[tuple[str, str]] = []
    for kind, column in (("dataset", "dataset_params"), ("training", "training")):
        values = json.loads(_with_defaults(kind, row["dataset"], row.get(column) or "{}"))
        settings += [(f"{kind}.{k}", json.dumps(v, sort_keys=True)) for k, v in values.items()]
    settings += [(name, json.dumps(row.get(name) or "")) for name in ("scoring", "device")]
    return Protocol(
        row["dataset"], row["budget_kind"], float(row["budget_limit"]), tuple(sorted(settings))
    )


def _differing(settings: list[dict[str, str]]) -> list[str]:
    """The names whose value is not the same in every one of ``settings`` (missing counts)."""
    names = sorted({name for values in settings for name in values})
    return [n for n in names if len({values.get(n, UNSET) for values in settings}) > 1]


def _variant(row: Row) -> dict[str, str]:
    """What tells two rows of one method label apart: its engine and parameters (as JSON)."""
    params = json.loads(_with_defaults("method", row["method"], row.get("method_params") or "{}"))
    if is_baseline_row(row):
        params = {k: v for k, v in params.items() if k not in BASELINE_EXPANDED_PARAMS}
    variant = {name: json.dumps(value, sort_keys=True) for name, value in params.items()}
    variant["engine"] = json.dumps(row.get("engine") or "")
    return variant


def _row_names(rows: list[Row]) -> dict[str, str]:
    """run hash → the name of its table row: the method label, followed by the settings that
    differ between the parameter sets and engines recorded under that label, if several are."""
    variants: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)  # label → run → variant
    for row in rows:
        variants[row["method_label"]].setdefault(row["run_hash"], _variant(row))
    names: dict[str, str] = {}
    for label, by_run in variants.items():
        differing = _differing(list(by_run.values()))
        for run_hash, variant in by_run.items():
            if not differing:
                names[run_hash] = label
                continue
            shown = [
                f"{n} = {setting_text(json.loads(variant[n])) if n in variant else UNSET}"
                for n in differing
            ]
            names[run_hash] = f"{label} ({', '.join(shown)})"
    return names


@dataclass
class ProtocolGroup:
    """The records of one protocol, ready for the tables.

    heading: dataset, budget and the settings that differ from the dataset's other protocols;
    stem: a file name stem for its figures, unique on the page; rows: the run rows, copied, with
    ``method_label`` replaced by the row name (label plus differing method settings);
    row_names: run hash → that row name.
    """

    protocol: Protocol
    heading: str
    stem: str
    rows: list[Row]
    row_names: dict[str, str]

    def evaluations(self, evaluation_rows: list[Row]) -> list[Row]:
        """The anytime points of this protocol's runs, copied, labelled with their row names."""
        return [
            {**point, "method_label": self.row_names[point["run_hash"]]}
            for point in evaluation_rows
            if point["run_hash"] in self.row_names
        ]


def split_by_protocol(rows: list[Row]) -> list[ProtocolGroup]:
    """One group per protocol, ordered by dataset, budget and heading."""
    by_protocol: dict[Protocol, list[Row]] = defaultdict(list)
    for row in rows:
        by_protocol[protocol_of(row)].append(row)
    per_dataset: dict[str, list[Protocol]] = defaultdict(list)
    for protocol in by_protocol:
        per_dataset[protocol.dataset].append(protocol)
    budgets: dict[tuple[str, str, float], int] = defaultdict(int)
    for protocol in by_protocol:
        budgets[(protocol.dataset, protocol.budget_kind, protocol.budget_limit)] += 1
    groups = []
    for protocol, protocol_rows in by_protocol.items():
        siblings = per_dataset[protocol.dataset]
        differing = _differing([dict(p.settings) for p in siblings])
        heading = SEPARATOR.join(
            [protocol.dataset, budget_text(protocol.budget_kind, protocol.budget_limit)]
            + [f"{name} = {protocol.setting(name)}" for name in differing]
        )
        stem = f"{protocol.dataset}_{protocol.budget_kind}_{compact_number(protocol.budget_limit)}"
        if budgets[(protocol.dataset, protocol.budget_kind, protocol.budget_limit)] > 1:
            stem += f"_{protocol.digest}"
        row_names = _row_names(protocol_rows)
        relabelled = [{**row, "method_label": row_names[row["run_hash"]]} for row in protocol_rows]
        groups.append(ProtocolGroup(protocol, heading, stem, relabelled, row_names))
    return sorted(
        groups,
        key=lambda g: (
            g.protocol.dataset,
            g.protocol.budget_kind,
            g.protocol.budget_limit,
            g.heading,
        ),
    )
