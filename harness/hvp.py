"""Full-parameter gradients and Hessian-vector products, charged to a gradient engine's budget.

Second-order methods (the Pareto expansion of Ma, Du & Matusik, ICML 2020) treat *all* the
model's parameters ``x`` (shared encoder and heads, in ``model.parameters()`` order) as one
vector of N entries. This module gives them, on one batch:

- :func:`task_losses_at` -- the T losses, forward only;
- :func:`full_jacobian` -- per-task gradients ``J: (T, N)`` through the engine (so the engine's
  per-task machinery and its charges apply);
- :func:`hessian_operator` -- ``v -> (sum_t w_t H_t) v: (N,) -> (N,)`` without forming a Hessian,
  in one of three equivalent ways (:data:`HVP_VARIANTS`):

  * ``double_backward``: one ``create_graph`` backward kept, then each product is a backward of
    that gradient (reverse-over-reverse, graph reused across products);
  * ``vjp_grad``: ``torch.func.vjp`` of ``torch.func.grad`` (reverse-over-reverse, functional);
  * ``jvp_grad``: ``torch.func.jvp`` of ``torch.func.grad`` (forward-over-reverse; recomputes the
    forward and backward for every product, so costs about 3 gradients per product).

:func:`choose_hvp_variant` times them side by side on the model at hand and caches the choice per
model architecture. Every pass is charged: a product at its FLOPs measured once with
``FlopCounterMode`` (kind ``"hvp"``; the graph it reuses is kind ``"hvp_setup"``).

Everything here runs the model as it is (train or eval mode); callers that need a deterministic
objective (no dropout draws) put the model in eval mode first.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from mtlbench.harness.gradients import Batch, GradientEngine
from mtlbench.harness.tasks import TaskSet
from torch import Tensor, nn

HvpVariant = Literal["double_backward", "vjp_grad", "jvp_grad"]
HVP_VARIANTS: tuple[HvpVariant, ...] = ("double_backward", "vjp_grad", "jvp_grad")
HVP_KIND = "hvp"
HVP_SETUP_KIND = "hvp_setup"
CALIBRATION_SAMPLES = 8

# Variant chosen per model architecture (class, parameter shapes, device, dtype), per process.
_VARIANT_CACHE: dict[tuple, HvpVariant] = {}
# The variant whose costs an engine's "hvp"/"hvp_setup" entries were measured for.
_MEASURED_VARIANT: weakref.WeakKeyDictionary[GradientEngine, HvpVariant] = (
    weakref.WeakKeyDictionary()
)


# ---- parameter vectors -------------------------------------------------------------------------
def full_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All trainable parameters in ``model.parameters()`` order (encoder, then heads)."""
    return [p for p in model.parameters() if p.requires_grad]


def full_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def parameter_vector(model: nn.Module) -> Tensor:
    """The trainable parameters as one detached vector (N,), a copy."""
    return torch.cat([p.detach().reshape(-1) for p in full_parameters(model)]).clone()


@torch.no_grad()
def load_parameter_vector(model: nn.Module, vector: Tensor) -> None:
    """Copy ``vector`` (N,) into the trainable parameters, in place.

    Written instead of ``torch.nn.utils.vector_to_parameters``, which makes each parameter's
    ``.data`` a view of ``vector``: later in-place updates of the model would then change the
    stored vector.
    """
    params = full_parameters(model)
    count = sum(p.numel() for p in params)
    if vector.shape != (count,):
        raise ValueError(f"vector has shape {tuple(vector.shape)}, the model {count} parameters")
    offset = 0
    for p in params:
        p.copy_(vector[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def _flatten(pieces: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(pieces, params, strict=True)
        ]
    )


def _unflatten(vector: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    pieces, offset = [], 0
    for p in params:
        pieces.append(vector[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return pieces


def _weighted_loss(model: nn.Module, taskset: TaskSet, batch: Batch, weights: Tensor) -> Tensor:
    inputs, targets = batch
    task_losses = taskset.losses(model(inputs), targets)
    return (weights.to(task_losses) * task_losses).sum()


# ---- losses and Jacobian through the engine ------------------------------------------------------
def task_losses_at(engine: GradientEngine, batch: Batch) -> Tensor:
    """The task losses (T,) of the model's current parameters on ``batch``; forward charged."""
    size = int(batch[0].shape[0])
    engine.charge("encoder_forward", size)
    engine.charge("heads_forward", size)
    with torch.no_grad():
        outputs = engine.model(batch[0])
        return engine.taskset.losses(outputs, batch[1])


def full_jacobian(engine: GradientEngine, batch: Batch) -> tuple[Tensor, Tensor]:
    """Task losses (T,) and per-task gradients of all parameters ``J: (T, N)`` on ``batch``.

    The shared block comes from ``engine.shared_jacobian`` (charged by the engine); each task's
    head block is one heads backward (charged as ``heads_backward_params`` per task). Columns
    follow :func:`full_parameters`; the model must be a ``MultiTaskModel`` whose parameters are
    its encoder's followed by its heads'.
    """
    model = engine.model
    shared, heads = model.shared_parameters(), model.task_parameters()
    if len(shared) + len(heads) != len(full_parameters(model)):
        raise ValueError("full_jacobian needs every trainable parameter in the encoder or heads")
    state = engine.forward(batch)
    shared_jacobian = engine.shared_jacobian(state)
    if heads:
        engine.charge("heads_backward_params", state.batch_size, passes=engine.num_tasks)
        jacobian = torch.cat([shared_jacobian, _heads_jacobian(state.task_losses, heads)], dim=1)
    else:
        jacobian = shared_jacobian
    return state.task_losses.detach(), jacobian.detach()


def _heads_jacobian(task_losses: Tensor, heads: Sequence[Tensor]) -> Tensor:
    """Per-task gradients (T, H) of the task losses (T,) w.r.t. the heads' parameters.

    One batched backward (``is_grads_batched``: the T unit cotangents through vmap) instead of T
    backwards, which at 40 tasks dominated an expansion step; T backwards where vmap has no rule
    for an op of the heads. Each row is charged as one heads backward either way.
    """
    cotangents = torch.eye(len(task_losses), dtype=task_losses.dtype, device=task_losses.device)
    try:
        grads = torch.autograd.grad(
            task_losses,
            heads,
            cotangents,
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
        return torch.cat(
            [
                (g if g is not None else torch.zeros((len(task_losses), *p.shape)).to(p)).reshape(
                    len(task_losses), -1
                )
                for g, p in zip(grads, heads, strict=True)
            ],
            dim=1,
        )
    except RuntimeError:  # an op without a batching rule: one backward per task
        rows = [
            _flatten(torch.autograd.grad(loss, heads, retain_graph=True, allow_unused=True), heads)
            for loss in task_losses
        ]
        return torch.stack(rows)


# ---- Hessian-vector products ---------------------------------------------------------------------
class HessianOperator:
    """``v -> (sum_t w_t H_t) v`` at the model's current parameters on one batch.

    H_t is the Hessian of task t's mean loss w.r.t. all trainable parameters (N). Built once per
    (parameters, batch, weights); each call charges one ``"hvp"`` pass. ``applications`` counts
    the calls. The parameters must not change while the operator is in use.
    """

    def __init__(self, apply: Callable[[Tensor], Tensor], charge: Callable[[], None]):
        self._apply = apply
        self._charge = charge
        self.applications = 0

    def __call__(self, vector: Tensor) -> Tensor:
        self._charge()
        self.applications += 1
        return self._apply(vector)


def build_hvp(
    model: nn.Module, taskset: TaskSet, batch: Batch, weights: Tensor, variant: HvpVariant
) -> Callable[[Tensor], Tensor]:
    """An uncharged product ``v -> (sum_t w_t H_t) v`` (N,) -> (N,) by ``variant``.

    For ``double_backward`` and ``vjp_grad`` the gradient's graph is built here (one forward and
    one backward) and reused by every product; ``jvp_grad`` builds nothing and recomputes it.
    """
    params = full_parameters(model)
    if variant == "double_backward":
        with torch.enable_grad():
            loss = _weighted_loss(model, taskset, batch, weights)
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]

        def double_backward(vector: Tensor) -> Tensor:
            if not live:  # the gradient does not depend on the parameters: H = 0
                return torch.zeros_like(vector)
            pieces = _unflatten(vector, params)
            products = torch.autograd.grad(
                [grads[i] for i in live],
                params,
                [pieces[i] for i in live],
                retain_graph=True,
                allow_unused=True,
            )
            return _flatten(products, params)

        return double_backward

    from torch.func import functional_call, grad, jvp, vjp

    names = full_parameter_names(model)
    primals = {name: p.detach() for name, p in zip(names, params, strict=True)}
    fixed = dict(model.named_buffers())
    fixed.update({n: p.detach() for n, p in model.named_parameters() if not p.requires_grad})

    def loss_of(trainable: dict[str, Tensor]) -> Tensor:
        outputs = functional_call(model, {**fixed, **trainable}, (batch[0],))
        task_losses = taskset.losses(outputs, batch[1])
        return (weights.to(task_losses) * task_losses).sum()

    gradient_of = grad(loss_of)

    def as_dict(vector: Tensor) -> dict[str, Tensor]:
        return dict(zip(names, _unflatten(vector, params), strict=True))

    def as_vector(pieces: dict[str, Tensor]) -> Tensor:
        return torch.cat([pieces[name].reshape(-1) for name in names])

    if variant == "vjp_grad":
        with torch.enable_grad():
            # vjp's return type is a union over has_aux (no overload): index, not unpack
            pullback = vjp(gradient_of, primals)[1]
        return lambda vector: as_vector(pullback(as_dict(vector))[0])
    if variant == "jvp_grad":
        return lambda vector: as_vector(jvp(gradient_of, (primals,), (as_dict(vector),))[1])
    raise ValueError(f"hvp variant must be one of {HVP_VARIANTS}, got {variant!r}")


def _rng_devices(batch: Batch) -> list[torch.device]:
    return [batch[0].device] if batch[0].is_cuda else []


def _random_vector(model: nn.Module) -> Tensor:
    """A random (N,) vector with the parameters' dtype and device."""
    params = full_parameters(model)
    return torch.randn(
        sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device
    )


def _calibrate_hvp(engine: GradientEngine, batch: Batch, variant: HvpVariant) -> None:
    """Measure the FLOPs per sample of an HVP set-up and of one product, once per engine.

    Run on a few samples under a forked RNG; not charged (like the engine's own calibration).
    """
    from mtlbench.harness.costs import count_flops

    size = min(int(batch[0].shape[0]), CALIBRATION_SAMPLES)
    small = (batch[0][:size], batch[1][:size])
    weights = torch.full((engine.num_tasks,), 1.0 / engine.num_tasks, device=batch[0].device)
    holder: dict[str, Callable[[Tensor], Tensor]] = {}
    with torch.random.fork_rng(devices=_rng_devices(batch)):

        def setup() -> None:
            holder["apply"] = build_hvp(engine.model, engine.taskset, small, weights, variant)

        setup_flops = count_flops(setup)
        vector = _random_vector(engine.model)
        apply_flops = count_flops(lambda: holder["apply"](vector))
    engine.costs.per_sample[HVP_SETUP_KIND] = setup_flops / size
    engine.costs.per_sample[HVP_KIND] = apply_flops / size
    _MEASURED_VARIANT[engine] = variant


def hessian_operator(
    engine: GradientEngine, batch: Batch, weights: Tensor, variant: HvpVariant = "double_backward"
) -> HessianOperator:
    """The charged operator ``v -> (sum_t w_t H_t) v`` on ``batch`` at the current parameters.

    weights: (T,) task weights (the min-norm alpha in the Pareto expansion). The first call on
    an engine measures the variant's costs; building charges ``"hvp_setup"`` once and every
    product charges ``"hvp"``. Raises ``BudgetExhausted`` before any pass it cannot pay for.
    """
    if _MEASURED_VARIANT.get(engine) != variant or HVP_KIND not in engine.costs:
        _calibrate_hvp(engine, batch, variant)
    size = int(batch[0].shape[0])
    engine.charge(HVP_SETUP_KIND, size)
    apply = build_hvp(engine.model, engine.taskset, batch, weights, variant)
    return HessianOperator(apply, lambda: engine.charge(HVP_KIND, size))


def _architecture_key(model: nn.Module) -> tuple:
    params = full_parameters(model)
    return (
        type(model).__qualname__,
        tuple(tuple(p.shape) for p in params),
        params[0].device.type if params else "cpu",
        params[0].dtype if params else torch.float32,
    )


def time_hvp_variants(
    model: nn.Module,
    taskset: TaskSet,
    batch: Batch,
    weights: Tensor,
    variants: Sequence[HvpVariant] = HVP_VARIANTS,
    repeats: int = 5,
) -> dict[str, float]:
    """Median wall seconds of one product for each variant (set-up excluded).

    Variants are timed one after the other, each operator freed before the next is built, so at
    most one gradient graph is held at a time (large models).
    """
    device = batch[0].device
    vector = _random_vector(model)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    medians: dict[str, float] = {}
    for variant in variants:
        apply = build_hvp(model, taskset, batch, weights, variant)
        apply(vector)  # warm-up
        seconds = []
        for _ in range(repeats):
            sync()
            started = time.perf_counter()
            apply(vector)
            sync()
            seconds.append(time.perf_counter() - started)
        medians[variant] = sorted(seconds)[len(seconds) // 2]
        del apply
    return medians


def choose_hvp_variant(
    model: nn.Module,
    taskset: TaskSet,
    batch: Batch,
    weights: Tensor,
    margin: float = 1.2,
    repeats: int = 5,
) -> HvpVariant:
    """The fastest HVP variant for this model, measured once per architecture and cached.

    ``double_backward`` is kept unless another variant is faster by more than ``margin`` (a
    ratio), so near-ties resolve the same way on every run. Timing runs are not charged: like
    cost calibration, they are set-up, not training. Forks the RNG so the run is unaffected.
    """
    key = _architecture_key(model)
    if key not in _VARIANT_CACHE:
        with torch.random.fork_rng(devices=_rng_devices(batch)):
            seconds = time_hvp_variants(model, taskset, batch, weights, repeats=repeats)
        best: HvpVariant = "double_backward"
        for variant in HVP_VARIANTS:
            if seconds[variant] * margin < seconds[best]:
                best = variant
        _VARIANT_CACHE[key] = best
    return _VARIANT_CACHE[key]
