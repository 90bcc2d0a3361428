"""The ``deepspeed`` engine against plain PyTorch, per ZeRO stage (CPU, one rank, gloo).

Oracle: the same model copied before wrapping, its per-task gradients taken by one
``torch.autograd.grad`` per task, and its updates by the same torch optimizer class stepping on
``.grad`` set by hand. DeepSpeed's one-time JIT build of its shared-memory op (~30 s) is cached in
one folder for every test run (``TORCH_EXTENSIONS_DIR``).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", str(Path(tempfile.gettempdir()) / "mtlbench-torch-extensions")
)
# A build killed mid-way (an interrupted test run) leaves torch's build lock behind, and every
# later build waits on it forever; a real build takes ~30 s, so a lock 10 minutes old is stale.
STALE_LOCK_SECONDS = 600
for lock in Path(os.environ["TORCH_EXTENSIONS_DIR"]).glob("*/lock"):
    if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
        lock.unlink(missing_ok=True)
# The imports below come after the set-up above on purpose: DeepSpeed reads the extensions
# folder and its accelerator (prepare_environment) when it is imported.
from mtlbench.cluster.deepspeed_engine import DeepSpeedEngine, prepare_environment  # noqa: E402

prepare_environment(torch.device("cpu"))
deepspeed = pytest.importorskip("deepspeed")

from _problems import tiny_batches, tiny_model, tiny_taskset  # noqa: E402
from mtlbench.harness.budget import Budget  # noqa: E402
from mtlbench.harness.config import parse_suite  # noqa: E402
from mtlbench.harness.gradients import get_engine  # noqa: E402
from mtlbench.harness.suite import expand_suite  # noqa: E402
from mtlbench.harness.trainer import train_run  # noqa: E402

NUM_TASKS = 3
LR = 1e-2


def _wrapped(stage: int, precision: str = "fp32"):
    """(engine, facade optimizer, plain reference model, its optimizer, batches)."""
    reference = tiny_model(NUM_TASKS, seed=0, hidden=32)
    model = copy.deepcopy(reference)
    batches = tiny_batches(NUM_TASKS, seed=0, count=4)
    engine = DeepSpeedEngine(
        model,
        tiny_taskset(NUM_TASKS),
        Budget("flops", 1e30),
        batches[0],
        zero_stage=stage,
        precision=precision,
    )
    optimizer = engine.wrap_optimizer(torch.optim.Adam(model.parameters(), lr=LR))
    return engine, optimizer, reference, torch.optim.Adam(reference.parameters(), lr=LR), batches


def _plain_per_task(model, batch):
    """Per-task gradients of the plain model: shared Jacobian (T, P) and z-gradients (T, B, d)."""
    taskset = tiny_taskset(NUM_TASKS)
    z = model.encoder(batch[0])
    losses = taskset.losses(model.heads(z), batch[1])
    shared = model.shared_parameters()
    jacobian = torch.stack(
        [
            torch.cat(
                [g.reshape(-1) for g in torch.autograd.grad(losses[t], shared, retain_graph=True)]
            )
            for t in range(NUM_TASKS)
        ]
    )
    z_grads = torch.stack(
        [torch.autograd.grad(losses[t], z, retain_graph=True)[0] for t in range(NUM_TASKS)]
    )
    return jacobian, z_grads


def _plain_step(model, optimizer, batch, shared_weights, head_weights, extra_shared=None):
    """One reference update: shared grad = J^T w (+ extra), head grads = sum_t h_t dL_t/dheads."""
    taskset = tiny_taskset(NUM_TASKS)
    optimizer.zero_grad(set_to_none=True)
    losses = taskset.losses(model(batch[0]), batch[1])
    heads = model.task_parameters()
    head_grads = torch.autograd.grad((head_weights * losses).sum(), heads, retain_graph=True)
    for p, g in zip(heads, head_grads, strict=True):
        p.grad = g
    shared = model.shared_parameters()
    offset = 0
    shared_grads = torch.autograd.grad((shared_weights * losses).sum(), shared)
    for p, g in zip(shared, shared_grads, strict=True):
        p.grad = g
        if extra_shared is not None:
            p.grad = p.grad + extra_shared[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    optimizer.step()


def _gathered(model) -> list[torch.Tensor]:
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_per_task_gradients_equal_pytorch(stage: int) -> None:
    engine, _, reference, _, batches = _wrapped(stage)
    state = engine.forward(batches[0])
    jacobian, z_grads = _plain_per_task(reference, batches[0])
    assert engine.num_shared == jacobian.shape[1]
    torch.testing.assert_close(engine.representation_gradients(state), z_grads, rtol=0, atol=1e-7)
    torch.testing.assert_close(engine.shared_jacobian(state), jacobian, rtol=1e-6, atol=1e-7)
    weights = torch.tensor([0.2, 0.3, 0.5])
    torch.testing.assert_close(
        engine.shared_gradient(state, weights), weights @ jacobian, rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_updates_equal_pytorch(stage: int) -> None:
    """Three steps: weighted backward with unit head weights (MGDA-style), a PML-style step
    (two backward calls: a direction injected, then a plain weighted one), then EW."""
    engine, optimizer, reference, reference_optimizer, batches = _wrapped(stage)
    weights, ones = torch.tensor([0.2, 0.3, 0.5]), torch.ones(NUM_TASKS)

    optimizer.zero_grad()
    state = engine.forward(batches[0])
    engine.backward(state, weights, ones)
    optimizer.step()
    _plain_step(reference, reference_optimizer, batches[0], weights, ones)
    for got, want in zip(_gathered(engine.model), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

    optimizer.zero_grad()
    direction = torch.randn(engine.num_shared, generator=torch.Generator().manual_seed(3))
    first, second = engine.forward(batches[1]), engine.forward(batches[1])
    engine.apply_shared_direction(first, direction, weights)
    engine.backward(second, weights)
    optimizer.step()
    _plain_step(
        reference, reference_optimizer, batches[1], weights, 2 * weights, extra_shared=direction
    )
    for got, want in zip(_gathered(engine.model), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_stage_3_weighted_backward_and_refusal() -> None:
    """Also: building a ZeRO-3 engine leaves ``torch.nn.functional.linear`` as torch's (DeepSpeed
    would patch it process-wide, breaking forward-mode AD in later runs of the same process)."""
    linear = torch.nn.functional.linear
    engine, optimizer, reference, reference_optimizer, batches = _wrapped(3)
    assert torch.nn.functional.linear is linear
    weights = torch.full((NUM_TASKS,), 1 / NUM_TASKS)
    for batch in batches[:2]:
        optimizer.zero_grad()
        engine.backward(engine.forward(batch), weights)
        optimizer.step()
        _plain_step(reference, reference_optimizer, batch, weights, weights)
    for got, want in zip(_gathered(engine.model), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(NotImplementedError, match="stage 3"):
        engine.shared_jacobian(engine.forward(batches[2]))


def test_bad_option_is_one_line() -> None:
    batches = tiny_batches(NUM_TASKS, count=1)
    with pytest.raises(ValueError, match=r"engine_options\.zero_stage"):
        DeepSpeedEngine(
            tiny_model(NUM_TASKS),
            tiny_taskset(NUM_TASKS),
            Budget("flops", 1e30),
            batches[0],
            zero_stage=4,
        )


def test_ew_run_through_trainer_matches_loop_engine() -> None:
    """A short EW run on multidigits with ZeRO-2 spends the same FLOPs in the same steps as the
    ``loop`` engine and ends at the same test losses (fp32, same seed and batches)."""
    suite = {
        "name": "ds",
        "datasets": [
            {
                "name": "multidigits",
                "params": {"train_pairs": 256, "val_pairs": 64, "test_pairs": 128},
            }
        ],
        "methods": [
            {"name": "ew", "label": "ew-loop", "engine": "loop"},
            {
                "name": "ew",
                "label": "ew-ds",
                "engine": "deepspeed",
                "engine_options": {"zero_stage": 2},
            },
        ],
        "budget": {"flops": 1.0e9},
        "training": {"batch_size": 32, "log_every": 5},
    }
    loop_spec, ds_spec = expand_suite(parse_suite(suite))
    loop_run, ds_run = train_run(loop_spec), train_run(ds_spec)
    assert ds_run.status == "completed", ds_run.error
    assert ds_run.stop_reason == "budget" and ds_run.steps == loop_run.steps > 5
    assert ds_run.budget == pytest.approx(loop_run.budget)
    torch.testing.assert_close(
        torch.tensor(ds_run.solutions[0].test_losses),
        torch.tensor(loop_run.solutions[0].test_losses),
        rtol=1e-4,
        atol=1e-5,
    )


def test_bf16_gradients_within_bf16_precision() -> None:
    """bf16 parameters (ZeRO-1): the Jacobian is returned in fp32 and agrees with the fp32
    model's to bf16 precision (relative error < 4 × 2⁻⁸); evaluation outputs are fp32."""
    engine, optimizer, reference, _, batches = _wrapped(1, precision="bf16")
    state = engine.forward(batches[0])
    jacobian, _ = _plain_per_task(reference, batches[0])
    got = engine.shared_jacobian(state)
    assert got.dtype == torch.float32 and state.task_losses.dtype == torch.float32
    assert float((got - jacobian).norm() / jacobian.norm()) < 4 * 2**-8
    engine.backward(state, torch.full((NUM_TASKS,), 1 / NUM_TASKS))
    optimizer.step()
    with torch.no_grad():
        outputs = engine.model(batches[1][0])
    assert outputs.dtype == torch.float32 and torch.isfinite(outputs).all()


@pytest.mark.parametrize("name", ["mgda", "mgda_ub", "pml"])
def test_methods_train_alike_on_deepspeed_and_batched(name: str) -> None:
    """Four steps of a registered method through ZeRO-2 and through ``batched`` (same seed, same
    batches) end at the same parameters, weights and budget spend: the DeepSpeed engine is a
    drop-in engine for the methods' gradient requests."""
    from mtlbench.harness.method import TrainingConfig
    from mtlbench.harness.registry import METHODS

    if name not in METHODS.names():
        pytest.skip(f"method {name!r} is not registered")
    method_cls = METHODS.get(name)
    taskset = tiny_taskset(NUM_TASKS)
    batches = tiny_batches(NUM_TASKS, seed=0, count=4)
    finals = {}
    for engine_name, options in (("batched", {}), ("deepspeed", {"zero_stage": 2})):
        torch.manual_seed(0)
        method = method_cls(
            method_cls.Params(),
            tiny_model(NUM_TASKS, seed=0),
            taskset,
            TrainingConfig(batch_size=32, lr=LR),
        )
        budget = Budget("flops", 1e30)
        engine = get_engine(engine_name)(method.model, taskset, budget, batches[0], **options)
        method.optimizer = engine.wrap_optimizer(method.optimizer)
        logs = [method.step(batch, engine) for batch in batches]
        finals[engine_name] = (_gathered(method.model), logs, budget.spent_flops)
    (params_b, logs_b, flops_b), (params_d, logs_d, flops_d) = (
        finals["batched"],
        finals["deepspeed"],
    )
    for got, want in zip(params_d, params_b, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(logs_d, logs_b, strict=True):
        torch.testing.assert_close(got["weights"], want["weights"], rtol=1e-4, atol=1e-6)
    assert flops_d == flops_b


def test_config_protocol_and_merge() -> None:
    """No clipping (DeepSpeed clips at 1.0 by default), caller-owned accumulation, buckets sized
    to the model and aligned, and user keys merged in without dropping the harness's."""
    from mtlbench.cluster.deepspeed_engine import DeepSpeedOptions, deepspeed_config

    extra = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}
    config = deepspeed_config(DeepSpeedOptions(zero_stage=2, config=extra), 32, 1_000_003)
    assert config["gradient_clipping"] == 0.0 and config["managed_gradient_accumulation"] is False
    zero = config["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"] == {"device": "cpu"}
    assert (
        zero["reduce_bucket_size"] % 4096 == 0
        and 1_000_003 <= zero["reduce_bucket_size"] < 1_004_100
    )
