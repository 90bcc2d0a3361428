"""Suite expansion: methods × datasets × seeds into RunSpecs, each keyed by a content hash.

The hash covers everything that determines a run's numbers (method, its parameters, engine,
dataset and its parameters, seed, budget, training protocol, scoring, device) and nothing else
(not the suite's name, not the output location), so a rerun finds its finished runs and skips them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from mtlbench.harness.config import SuiteConfig
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.registry import DATASETS, METHODS


@dataclass(frozen=True)
class RunSpec:
    """One (method, dataset, seed) run under the suite's budget; plain data, picklable."""

    suite: str
    method: str
    method_label: str
    method_params: dict[str, Any]
    engine: str
    engine_options: dict[str, Any]
    dataset: str
    dataset_params: dict[str, Any]
    seed: int
    budget_kind: str
    budget_limit: float
    training: dict[str, Any]
    scoring: str
    device: str

    @property
    def run_hash(self) -> str:
        identity = {k: v for k, v in asdict(self).items() if k != "suite"}
        identity["training"] = _hashed_training(self.training)
        text = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def title(self) -> str:
        return f"{self.method_label}/{self.dataset}/seed={self.seed}"


def _hashed_training(training: dict[str, Any]) -> dict[str, Any]:
    """The training settings as hashed: a setting added after runs were recorded (the divergence
    rule) is left out while it has its default, so those runs keep their hash and are not redone."""
    hashed = dict(training)
    if hashed.get("divergence") == _DEFAULT_DIVERGENCE:
        del hashed["divergence"]
    return hashed


_DEFAULT_DIVERGENCE = TrainingConfig().model_dump(mode="json")["divergence"]


def expand_suite(suite: SuiteConfig) -> list[RunSpec]:
    """All runs of a suite; baseline runs (``Method.is_baseline``) first, so Δm% can be computed
    as runs finish."""
    specs: list[RunSpec] = []
    for dataset_entry in suite.datasets:
        dataset_cls = DATASETS.get(dataset_entry.name)
        dataset_params = dataset_cls.Params.model_validate(dataset_entry.params)
        taskset = dataset_cls.taskset(dataset_params)
        for method_entry in suite.methods:
            method_cls = METHODS.get(method_entry.name)
            params = method_cls.Params.model_validate(method_entry.params)
            for run_params in method_cls.expand(params, taskset):
                label = method_entry.label or method_entry.name
                for seed in suite.seeds:
                    specs.append(
                        RunSpec(
                            suite=suite.name,
                            method=method_entry.name,
                            method_label=label,
                            method_params=run_params.model_dump(mode="json"),
                            engine=method_entry.engine or method_cls.default_engine,
                            engine_options=dict(method_entry.engine_options),
                            dataset=dataset_entry.name,
                            dataset_params=dataset_params.model_dump(mode="json"),
                            seed=seed,
                            budget_kind=suite.budget.kind,
                            budget_limit=suite.budget.limit,
                            training=suite.training.model_dump(mode="json"),
                            scoring=suite.scoring,
                            device=suite.device,
                        )
                    )
    specs.sort(key=lambda spec: not METHODS.get(spec.method).is_baseline)
    return specs
