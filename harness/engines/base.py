"""The reference gradient engine (``loop``): the interface every engine serves, and its charges.

See :mod:`mtlbench.harness.gradients` for what engines are and how they split the model at its
representation ``z``. Shapes: T tasks, B samples, P shared (encoder) parameters.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from mtlbench.harness.budget import Budget, require_counted_step
from mtlbench.harness.costs import PassCosts
from mtlbench.harness.engines.state import (
    Batch,
    StepState,
    accumulate_flat,
    accumulate_grads,
    flatten_gradients,
)
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet
from pydantic import BaseModel
from torch import Tensor, nn


class GradientEngine:
    """The reference engine (``loop``): per-task gradients by T separate backward passes.

    Subclasses override how the per-task quantities are computed (:meth:`_representation_grads`,
    :meth:`_shared_jacobian`); charging and caching live here.
    """

    name: ClassVar[str] = "loop"
    # the engine's ``engine_options`` (pydantic, unknown ones forbidden), validated when a suite
    # loads; None: the engine takes none
    options_model: ClassVar[type[BaseModel] | None] = None

    def __init__(
        self,
        model: MultiTaskModel,
        taskset: TaskSet,
        budget: Budget,
        calibration: Batch,
        **options: Any,
    ):
        if options:
            raise TypeError(f"engine {self.name!r} takes no options, got {sorted(options)}")
        self.model = model
        self.taskset = taskset
        self.budget = budget
        self.costs = PassCosts()
        self.num_tasks = len(taskset)
        self._calibrate(calibration)
        step_kinds = ("encoder_forward", "heads_forward", "heads_backward", "encoder_backward")
        step_flops = sum(self.costs.per_sample[kind] for kind in step_kinds)
        require_counted_step(budget, step_flops, f"model {type(model.encoder).__name__}")

    # ---- parameters -------------------------------------------------------------------------
    @property
    def shared_parameters(self) -> list[nn.Parameter]:
        return self.model.shared_parameters()

    @property
    def task_parameters(self) -> list[nn.Parameter]:
        return self.model.task_parameters()

    @property
    def num_shared(self) -> int:
        return sum(p.numel() for p in self.shared_parameters)

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer the method should step (the trainer calls this once, before step 1).

        Local engines return ``optimizer`` unchanged. An engine that owns the update (DeepSpeed:
        its ZeRO optimizer holds the gradient partitions) returns an object with the same
        ``zero_grad`` / ``step`` / ``state_dict`` calls that routes them through itself, so a
        method's ``self.optimizer.step()`` is right for every engine.
        """
        return optimizer

    def report(self) -> dict[str, float | str]:
        """What the engine measured about itself over the run, recorded with the run (numbers as
        MLflow metrics ``engine.<key>`` and strings as tags ``mtlbench.engine.<key>``; all in the
        run table's ``engine_stats`` JSON). Local engines have nothing to add."""
        return {}

    def close(self) -> None:
        """Release what the engine holds outside this process (actors, shared memory); the
        trainer calls it when the run's training ends. Local engines hold nothing."""

    # ---- cost calibration -------------------------------------------------------------------
    def _calibrate(self, batch: Batch) -> None:
        """Measure the FLOPs per sample of each pass kind on a few samples of ``batch``.

        Runs under a forked RNG with the model's buffers restored afterwards, so calibration
        leaves no trace in the run (dropout draws, BatchNorm running statistics).
        """
        inputs, targets = batch
        size = min(int(inputs.shape[0]), 8)
        inputs, targets = inputs[:size], targets[:size]
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        shared, heads = self.shared_parameters, self.task_parameters
        with torch.random.fork_rng(devices=[]):
            holder: dict[str, Tensor] = {}

            def encoder_forward() -> None:
                holder["z"] = self.model.encoder(inputs)

            self.costs.measure("encoder_forward", encoder_forward, size)
            z = holder["z"]
            detached = z.detach().requires_grad_(True)

            def heads_forward() -> None:
                holder["loss"] = self.taskset.losses(self.model.heads(detached), targets).sum()

            self.costs.measure("heads_forward", heads_forward, size)
            loss = holder["loss"]
            self.costs.measure(
                "heads_backward",
                lambda: torch.autograd.grad(loss, [*heads, detached], retain_graph=True),
                size,
            )
            if heads:
                self.costs.measure(
                    "heads_backward_params",
                    lambda: torch.autograd.grad(loss, heads, retain_graph=True),
                    size,
                )
            else:  # parameter-free heads: that pass is never made
                self.costs.per_sample["heads_backward_params"] = 0.0
            self.costs.measure(
                "heads_backward_input",
                lambda: torch.autograd.grad(loss, [detached], retain_graph=True),
                size,
            )
            upstream = torch.ones_like(z)
            self.costs.measure(
                "encoder_backward",
                lambda: torch.autograd.grad(z, shared, upstream, allow_unused=True),
                size,
            )
        with torch.no_grad():
            for name, buffer in self.model.named_buffers():
                buffer.copy_(buffers[name])

    def charge(self, kind: str, batch_size: int, passes: int = 1) -> None:
        """Charge ``passes`` passes of a calibrated kind over ``batch_size`` samples."""
        self.budget.charge(kind, self.costs.flops(kind, batch_size, passes), passes)

    # ---- the interface methods use ----------------------------------------------------------
    def forward(self, batch: Batch) -> StepState:
        """Encoder forward (graph kept) and heads forward on a leaf copy of z."""
        inputs, targets = batch
        size = int(inputs.shape[0])
        self.charge("encoder_forward", size)
        self.charge("heads_forward", size)
        representation = self.model.encoder(inputs)
        detached = representation.detach().requires_grad_(True)
        # The heads read a view, not the leaf itself: module-level autograd hooks (those of
        # FlopCounterMode, profilers) cannot watch a leaf during ``autograd.grad``.
        outputs = self.model.heads(detached.view_as(detached))
        task_losses = self.taskset.losses(outputs, targets)
        return StepState(inputs, targets, representation, detached, outputs, task_losses)

    def evaluate_losses(self, batch: Batch) -> Tensor:
        """Task losses (T,) of one more forward, without a graph (FAMO's second look at the
        batch after the update); charged as the forward it is (encoder and heads)."""
        inputs, targets = batch
        size = int(inputs.shape[0])
        self.charge("encoder_forward", size)
        self.charge("heads_forward", size)
        model = self._forward_model()
        with torch.no_grad():
            return self.taskset.losses(model.heads(model.encoder(inputs)), targets)

    def _forward_model(self) -> MultiTaskModel:
        """The module whose forward the engine runs (DeepSpeed: the wrapped one)."""
        return self.model

    def backward(
        self, state: StepState, weights: Tensor, head_weights: Tensor | None = None
    ) -> None:
        """Accumulate the gradient of sum_t w_t L_t into every parameter's ``.grad``.

        weights: (T,) task weights for the shared parameters. head_weights: (T,) weights for the
        heads (default: ``weights``); MGDA uses ones, so each head gets its own task's gradient.
        Ends the step's encoder graph.
        """
        weights = weights.to(state.task_losses)
        same = head_weights is None
        head_weights = weights if head_weights is None else head_weights.to(state.task_losses)
        heads = self.task_parameters
        if state.representation_grads is not None:
            z_grad = self.combine(weights, state.representation_grads)
            self._heads_param_backward(state, head_weights)
        elif same:
            self.charge("heads_backward", state.batch_size)
            grads = torch.autograd.grad(
                (weights * state.task_losses).sum(), [*heads, state.detached], retain_graph=True
            )
            accumulate_grads(heads, grads[:-1])
            z_grad = grads[-1]
        else:
            self._heads_param_backward(state, head_weights)
            z_grad = self._representation_gradient(state, weights)
        self.charge("encoder_backward", state.batch_size)
        shared = self.shared_parameters
        grads = torch.autograd.grad(state.representation, shared, z_grad, allow_unused=True)
        accumulate_grads(shared, grads)

    def apply_shared_direction(
        self, state: StepState, direction: Tensor, head_weights: Tensor
    ) -> None:
        """Use a precomputed shared-parameter direction (P,) instead of an encoder backward.

        When the Jacobian is already in hand (exact MGDA), sum_t a_t g_t is formed from it and
        written to the shared ``.grad``; only the cheap heads backward runs.
        """
        accumulate_flat(self.shared_parameters, direction)
        self._heads_param_backward(state, head_weights.to(state.task_losses))

    def shared_gradient(self, state: StepState, weights: Tensor) -> Tensor:
        """Gradient (P,) of sum_t w_t L_t w.r.t. the shared parameters, ``.grad`` untouched.

        Costs one heads backward (input) and one encoder backward, whatever T is.
        """
        z_grad = self._representation_gradient(state, weights.to(state.task_losses))
        self.charge("encoder_backward", state.batch_size)
        shared = self.shared_parameters
        grads = torch.autograd.grad(
            state.representation, shared, z_grad, retain_graph=True, allow_unused=True
        )
        return flatten_gradients(grads, shared)

    def representation_gradients(self, state: StepState) -> Tensor:
        """Per-task gradients of the losses w.r.t. z: (T, *z.shape). Cached on the state."""
        if state.representation_grads is None:
            state.representation_grads = self._representation_grads(state)
        return state.representation_grads

    def shared_jacobian(self, state: StepState) -> Tensor:
        """Per-task gradients of the shared parameters: (T, P). Cached on the state."""
        if state.shared_jacobian is None:
            z_grads = self.representation_gradients(state)
            self.charge("encoder_backward", state.batch_size, passes=self.num_tasks)
            state.shared_jacobian = self._shared_jacobian(state, z_grads)
        return state.shared_jacobian

    def gram(self, rows: Tensor) -> Tensor:
        """Gram matrix (T, T) of per-task rows (T, *shape), e.g. a Jacobian or z-gradients.

        Charged as what it is, one (T, N) × (N, T) product: 2 T² N FLOPs (kind ``gram``).
        """
        flat = rows.reshape(rows.shape[0], -1)
        self.budget.charge("gram", 2.0 * flat.shape[0] ** 2 * flat.shape[1])
        return flat @ flat.T

    def combine(self, weights: Tensor, rows: Tensor) -> Tensor:
        """sum_t w_t rows_t: weights (T,), rows (T, *shape) -> (*shape).

        Reuses per-task gradients already in hand (a Jacobian, z-gradients) instead of another
        backward pass. Charged 2 T N FLOPs (kind ``combine``).
        """
        flat = rows.reshape(rows.shape[0], -1)
        self.budget.charge("combine", 2.0 * flat.shape[0] * flat.shape[1])
        return (weights.to(flat)[None, :] @ flat).view(rows.shape[1:])

    def shared_gram(self, state: StepState) -> Tensor:
        """Gram matrix (T, T) of the per-task shared gradients, g_t·g_s: all a min-norm solver
        needs.

        Here ``gram(shared_jacobian)``; engines holding J in shards (Ray actors) assemble it
        without gathering J.
        """
        return self.gram(self.shared_jacobian(state))

    def shared_combination(self, state: StepState, weights: Tensor) -> Tensor:
        """sum_t w_t g_t (P,) from the per-task shared gradients this step already computed.

        Here ``combine(weights, shared_jacobian)``, no backward pass; sharded engines combine
        where the shards lie. Call after :meth:`shared_gram` or :meth:`shared_jacobian`.
        """
        return self.combine(weights, self.shared_jacobian(state))

    # ---- what subclasses change -------------------------------------------------------------
    def _representation_grads(self, state: StepState) -> Tensor:
        """T backward passes through the heads (each charged), one per task."""
        self.charge("heads_backward_input", state.batch_size, passes=self.num_tasks)
        rows = [
            torch.autograd.grad(state.task_losses[t], state.detached, retain_graph=True)[0]
            for t in range(self.num_tasks)
        ]
        return torch.stack(rows)

    def _shared_jacobian(self, state: StepState, z_grads: Tensor) -> Tensor:
        shared = self.shared_parameters
        rows = []
        for t in range(self.num_tasks):
            grads = torch.autograd.grad(
                state.representation, shared, z_grads[t], retain_graph=True, allow_unused=True
            )
            rows.append(flatten_gradients(grads, shared))
        return torch.stack(rows)

    # ---- helpers ----------------------------------------------------------------------------
    def _heads_param_backward(self, state: StepState, head_weights: Tensor) -> None:
        heads = self.task_parameters
        if not heads:  # parameter-free heads: nothing to differentiate, no pass, no charge
            return
        self.charge("heads_backward_params", state.batch_size)
        grads = torch.autograd.grad(
            (head_weights * state.task_losses).sum(), heads, retain_graph=True, allow_unused=True
        )
        accumulate_grads(heads, grads)

    def _representation_gradient(self, state: StepState, weights: Tensor) -> Tensor:
        if state.representation_grads is not None:
            return self.combine(weights, state.representation_grads)
        self.charge("heads_backward_input", state.batch_size)
        return torch.autograd.grad(
            (weights * state.task_losses).sum(), state.detached, retain_graph=True
        )[0]
