"""Every registered method on every engine it declares: the same training as on ``loop``.

For each method (default parameters, T = 3, the tiny MLP problem, Adam lr 1e-2 built by
``Method.bind``), three steps on ``loop`` are the reference; the same three steps on
``batched``, ``ray_sharded`` (2 actors beside the driver's share, CPU, shared memory) and
``deepspeed`` (ZeRO 0, 1 and 2, one CPU rank) must end at the same parameters within 1e-5.

Budget honesty: on the local engines the FLOPs charged equal a ``FlopCounterMode`` tally of what
actually ran (within 2%: the charges are per-sample calibrations of the same counter; solver
arithmetic on T×T matrices is not charged). ``ray_sharded`` runs part of the work in actors the
counter cannot see: there every pass kind is charged as on ``loop``, plus the actors' replayed
forward passes, which are charged too (one encoder forward per actor and step that exchanges
rows) — what the README's engine table says sharding costs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from _problems import tiny_batches, tiny_model, tiny_taskset
from mtlbench.harness.budget import Budget
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.method import Method, TrainingConfig
from mtlbench.harness.registry import METHODS
from mtlbench.harness.weighting import GramWeighting
from torch.utils.flop_counter import FlopCounterMode

os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", str(Path(tempfile.gettempdir()) / "mtlbench-torch-extensions")
)

NUM_TASKS = 3
STEPS = 3
ACTORS = 2
ENGINES = {
    "batched": ("batched", {}),
    "ray_sharded": ("ray_sharded", {"actors": ACTORS, "transport": "shared_memory"}),
    "deepspeed-zero0": ("deepspeed", {"zero_stage": 0}),
    "deepspeed-zero1": ("deepspeed", {"zero_stage": 1}),
    "deepspeed-zero2": ("deepspeed", {"zero_stage": 2}),
}


def _methods() -> list[str]:
    return [name for name in METHODS.names() if not name.startswith(("test_", "_"))]


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name in _methods():
        supported = METHODS.get(name).engines
        for label, (engine_name, _) in ENGINES.items():
            if supported is None or engine_name in supported:
                cases.append((name, label))
    return cases


def _train(name: str, engine_name: str, options: dict, count_flops: bool):
    """Three steps of method ``name``; (method, budget, engine, FlopCounterMode total or None)."""
    method_cls = METHODS.get(name)
    taskset = tiny_taskset(NUM_TASKS)
    batches = tiny_batches(NUM_TASKS, seed=0, count=STEPS)
    params = method_cls.expand(method_cls.Params(), taskset)[0]
    torch.manual_seed(0)
    method: Method = method_cls(
        params, tiny_model(NUM_TASKS, seed=0), taskset, TrainingConfig(batch_size=32, lr=1e-2)
    )
    budget = Budget("flops", 1e30)
    engine = get_engine(engine_name)(method.model, taskset, budget, batches[0], **options)
    method.bind(engine, steps_per_epoch=2)
    counted = None
    try:
        if count_flops:
            with FlopCounterMode(display=False) as counter:
                for batch in batches:
                    method.step(batch, engine)
            counted = counter.get_total_flops()
        else:
            for batch in batches:
                method.step(batch, engine)
    finally:
        engine.close()
    return method, budget, engine, counted


def _parameters(method: Method) -> list[torch.Tensor]:
    return [p.detach().clone().float() for p in method.model.parameters()]


_REFERENCES: dict[str, tuple[list[torch.Tensor], Budget]] = {}


def _reference(name: str) -> tuple[list[torch.Tensor], Budget]:
    if name not in _REFERENCES:
        method, budget, _, counted = _train(name, "loop", {}, count_flops=True)
        assert counted and abs(budget.spent_flops - counted) / counted < 0.02, (
            f"{name} on loop: charged {budget.spent_flops:.4g}, counted {counted:.4g}"
        )
        _REFERENCES[name] = (_parameters(method), budget)
    return _REFERENCES[name]


@pytest.fixture(scope="module")
def local_ray():
    import ray
    from mtlbench.cluster._ray_setup import start_local

    start_local(num_cpus=2)
    yield
    ray.shutdown()


@pytest.mark.parametrize("name, engine_label", _cases())
def test_method_on_engine_matches_loop(name: str, engine_label: str, request) -> None:
    engine_name, options = ENGINES[engine_label]
    if engine_name == "ray_sharded":
        request.getfixturevalue("local_ray")
    if engine_name == "deepspeed":
        pytest.importorskip("deepspeed")
    reference, loop_budget = _reference(name)
    local = engine_name != "ray_sharded"
    method, budget, engine, counted = _train(name, engine_name, options, count_flops=local)
    for index, (got, want) in enumerate(zip(_parameters(method), reference, strict=True)):
        torch.testing.assert_close(
            got, want, rtol=1e-5, atol=1e-5, msg=lambda m, i=index: f"parameter {i}: {m}"
        )
    if local:
        assert counted and abs(budget.spent_flops - counted) / counted < 0.02, (
            f"charged {budget.spent_flops:.4g}, counted {counted:.4g}"
        )
        return
    # ray_sharded: every kind as on loop, plus one replayed encoder forward per actor per
    # exchanging step (and the workers' heads passes, which replace the driver's own)
    exchanges = STEPS if issubclass(METHODS.get(name), GramWeighting) and name != "mgda_ub" else 0
    replayed = {"encoder_forward", "heads_forward", "heads_backward_input"}
    for kind in set(budget.flops_by_pass) | set(loop_budget.flops_by_pass):
        if kind not in replayed:
            assert budget.flops_by_pass.get(kind, 0.0) == pytest.approx(
                loop_budget.flops_by_pass.get(kind, 0.0)
            ), kind
    expected_forwards = (
        loop_budget.passes_by_kind["encoder_forward"] + engine.num_actors * exchanges
    )
    assert budget.passes_by_kind["encoder_forward"] == expected_forwards


def test_every_weighting_runs_on_every_engine() -> None:
    """The weighting layer's promise: no Gram or loss weighting restricts its engines."""
    from mtlbench.harness.weighting import LossWeighting

    for name in _methods():
        method_cls = METHODS.get(name)
        if issubclass(method_cls, (GramWeighting, LossWeighting)):
            assert method_cls.engines is None, f"{name} restricts its engines"
