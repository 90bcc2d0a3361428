"""``deepspeed`` gradient engine: the model wrapped by ``deepspeed.initialize`` (ZeRO 0–3).

Methods see the same interface as every engine (``forward``, ``backward``, per-task
``representation_gradients`` / ``shared_jacobian`` / ``shared_gradient``,
``apply_shared_direction``); every pass is charged to the budget as in the local engines. What
changes is who owns the gradients: DeepSpeed's ZeRO optimizer keeps them in its own (partitioned)
buffers, filled by its hooks during ``engine.backward``. So:

- **Weighted-sum backward** goes through ``deepspeed_engine.backward`` on one surrogate scalar per
  call whose gradient is exactly the requested one. EW-like calls (equal head and shared weights,
  nothing cached) back-propagate ``sum_t w_t L_t`` itself: the heads read a view of ``z`` inside
  the graph (not a leaf), so heads and encoder run in one pass. Otherwise the engine computes what
  the local engines compute (the heads' gradient by ``autograd.grad``, the ``z``-gradient
  ``sum_t w_t dL_t/dz`` from the cache or one heads input backward) and hands it to DeepSpeed as
  ``<z, z_grad> + <theta_heads, g_heads>`` (the gradient of ``<theta, g>`` is ``g``, exactly).
- **A precomputed direction** (``apply_shared_direction``) is handed over the same way,
  ``<theta_shared, direction> + <theta_heads, g_heads>``: no encoder backward runs.
- Charges are the ``loop`` engine's, pass for pass (``tests/test_deepspeed.py`` checks it).
- **Per-task gradients** of the shared parameters: one batched ``torch.autograd.grad(...,
  is_grads_batched=True)`` on the wrapped module's own parameters (``BatchedEngine``), read
  before DeepSpeed sees anything. The forward goes through ``engine.module``'s submodules, never
  ``engine(x)`` (DEPENDENCIES.md: at stage 0 only that path gives correct batched gradients).
- **The update**: DeepSpeed runs with ``managed_gradient_accumulation: false``, so any number of
  ``backward`` calls in one step accumulate (PML makes several) and ``step()`` is the boundary.
  :meth:`wrap_optimizer` hands the method a :class:`DeepSpeedOptimizer` whose ``step()`` is
  ``deepspeed_engine.step()``; methods keep calling ``self.optimizer.step()``.

Stages (measured with DeepSpeed 0.19.8, one rank, CPU, fp32; ``tests/test_deepspeed.py``):
stages 0, 1, 2 support every operation and match plain PyTorch (per-task Jacobians exactly,
parameters after steps to float rounding). Stage 3 supports forward + weighted backward (EW,
single-task, any method without per-task requests): its per-module hooks gather a module's
parameters for only *one* backward pass per forward, so the batched per-task pass is correct but
the step's backward after it finds the parameters released (``size of tensor a (0)``); per-task
requests at stage 3 raise :class:`NotImplementedError` instead.

One rank: the engine sets ``RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1`` and a free
``MASTER_PORT`` when they are unset, and ``DS_ACCELERATOR=cpu`` for a CPU model (before DeepSpeed
is imported). Under a multi-rank launcher (``deepspeed``/``torchrun``) those variables come from
the launcher, but per-task quantities are then those of the local batch (not all-reduced).

Options (suite ``engine_options``): ``zero_stage`` (0–3), ``precision`` (``fp32`` | ``bf16``),
``chunk_size`` (tasks per batched VJP), ``config`` (extra DeepSpeed config keys, merged last;
e.g. ``{"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}``).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, ClassVar, Literal, cast

import torch
from mtlbench.harness.budget import Budget
from mtlbench.harness.gradients import Batch, BatchedEngine, StepState, flatten_gradients
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.tasks import TaskSet
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor, nn

NO_PRINT_STEPS = 10**12
DEFAULT_BUCKET_ELEMENTS = 500_000_000
MIN_BUCKET_ELEMENTS = 100_000
BUCKET_ALIGNMENT = 4096


class DeepSpeedOptions(BaseModel):
    """The ``engine_options`` of the ``deepspeed`` engine (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zero_stage: Literal[0, 1, 2, 3] = Field(
        0,
        description="ZeRO stage: 0 none, 1 optimizer states, 2 and gradients, 3 and parameters "
        "partitioned (stage 3 serves no per-task gradient request)",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="training precision of DeepSpeed's engine"
    )
    chunk_size: int = Field(
        64, ge=1, description="tasks per batched vector-Jacobian product (as engine 'batched')"
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="extra DeepSpeed config keys, merged last over the harness's own (e.g. "
        '{"zero_optimization": {"offload_optimizer": {"device": "cpu"}}})',
    )


def prepare_environment(device: torch.device) -> None:
    """Set the one-rank ``torch.distributed`` variables DeepSpeed needs, unless already set.

    Must run before ``import deepspeed`` (the accelerator is chosen at import).
    """
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for name, value in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
    ):
        os.environ.setdefault(name, value)
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])


def deepspeed_config(
    options: DeepSpeedOptions, micro_batch_size: int, num_parameters: int
) -> dict[str, Any]:
    """The DeepSpeed config for one rank: the harness's protocol, then ``options.config``.

    No gradient clipping (DeepSpeed's default clips at 1.0; the suites' protocol does not clip),
    unmanaged gradient accumulation (``step()`` is the boundary), the method's own torch
    optimizer (``zero_allow_untested_optimizer``). ZeRO buckets are sized to the model (at most
    DeepSpeed's default of 5e8 elements): ZeRO-2 allocates its reduce bucket on every backward,
    and 5e8 fp32 elements cost ~0.7 s a step on CPU for a 30k-parameter LeNet.
    """
    wanted = min(DEFAULT_BUCKET_ELEMENTS, max(num_parameters, MIN_BUCKET_ELEMENTS))
    bucket = -(-int(wanted) // BUCKET_ALIGNMENT) * BUCKET_ALIGNMENT  # ZeRO asserts alignment
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": 0.0,
        "zero_optimization": {
            "stage": options.zero_stage,
            "reduce_bucket_size": bucket,
            "allgather_bucket_size": bucket,
            # ZeRO-3 would otherwise replace torch.nn.functional.linear process-wide (and leave it
            # so): later runs in the same process then lose forward-mode AD (jvp-based HVPs)
            "memory_efficient_linear": False,
        },
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": options.precision == "bf16"},
        "steps_per_print": NO_PRINT_STEPS,
        "wall_clock_breakdown": False,
    }
    return _merge(config, options.config)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class DeepSpeedOptimizer:
    """What a method steps when its engine is DeepSpeed: ``step()`` is ``deepspeed_engine.step()``.

    ``zero_grad`` clears DeepSpeed's gradients (its step clears them too); ``state_dict`` /
    ``load_state_dict`` are those of DeepSpeed's optimizer (the ZeRO optimizer at stages 1–3).
    """

    def __init__(self, deepspeed_engine: Any):
        self.deepspeed_engine = deepspeed_engine

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.deepspeed_engine.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.deepspeed_engine.zero_optimization():
            self.deepspeed_engine.optimizer.zero_grad(set_to_none=set_to_none)
        else:
            self.deepspeed_engine.zero_grad()

    def step(self) -> None:
        self.deepspeed_engine.step()

    def state_dict(self) -> dict[str, Any]:
        return self.deepspeed_engine.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.deepspeed_engine.optimizer.load_state_dict(state)


def _mark_parameter_list_owners(model: nn.Module) -> None:
    """ZeRO-3 gathers a module's own parameters when its ``forward`` runs; a module holding a
    ParameterList/Dict (``StackedMLPHeads``) uses parameters owned by children whose forward never
    runs, so it is marked a ZeRO-3 leaf (all its parameters gathered at its forward)."""
    from deepspeed.utils import set_z3_leaf_module

    for module in model.modules():
        if any(
            isinstance(child, (nn.ParameterList, nn.ParameterDict)) for child in module.children()
        ):
            set_z3_leaf_module(module, True)


class DeepSpeedEngine(BatchedEngine):
    """The ``deepspeed`` engine. DeepSpeed is initialised by :meth:`wrap_optimizer` (it needs the
    method's optimizer); FLOP costs are calibrated before, on the plain fp32 model."""

    name: ClassVar[str] = "deepspeed"
    options_model: ClassVar[type[BaseModel] | None] = DeepSpeedOptions  # checked at suite load

    def __init__(
        self,
        model: MultiTaskModel,
        taskset: TaskSet,
        budget: Budget,
        calibration: Batch,
        **options: Any,
    ):
        try:
            self.options = DeepSpeedOptions.model_validate(options)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"engine_options.{where}: {first['msg']}") from None
        super().__init__(model, taskset, budget, calibration, chunk_size=self.options.chunk_size)
        self.micro_batch_size = int(calibration[0].shape[0])
        self.deepspeed_engine: Any = None
        self.dtype = torch.bfloat16 if self.options.precision == "bf16" else torch.float32

    @property
    def zero_stage(self) -> int:
        return self.options.zero_stage

    @property
    def num_shared(self) -> int:
        return sum(int(getattr(p, "ds_numel", p.numel())) for p in self.shared_parameters)

    # ---- DeepSpeed set-up -------------------------------------------------------------------
    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Wrap the model and ``optimizer`` with ``deepspeed.initialize``; return the facade, a
        :class:`DeepSpeedOptimizer`."""
        if self.deepspeed_engine is not None:
            raise RuntimeError("deepspeed engine: wrap_optimizer was already called")
        device = next(self.model.parameters()).device
        prepare_environment(device)
        import deepspeed

        deepspeed.utils.logger.setLevel(logging.WARNING)
        if self.zero_stage == 3:
            _mark_parameter_list_owners(self.model)
        num_parameters = sum(p.numel() for p in self.model.parameters())
        config = deepspeed_config(self.options, self.micro_batch_size, num_parameters)
        linear = torch.nn.functional.linear
        self.deepspeed_engine, _, _, _ = deepspeed.initialize(
            model=self.model, optimizer=optimizer, config=config
        )
        if not config["zero_optimization"]["memory_efficient_linear"]:
            torch.nn.functional.linear = (
                linear  # whatever DeepSpeed patched, other runs see torch's
            )
        if self.options.precision == "bf16":
            self._install_precision_casts()
        # The facade is not a torch Optimizer (it has no parameters of its own to hold) but has
        # every call a method and the trainer make on one (zero_grad, step, param_groups,
        # state_dict, load_state_dict); typed as the base class's return for them.
        return cast(torch.optim.Optimizer, DeepSpeedOptimizer(self.deepspeed_engine))

    def _install_precision_casts(self) -> None:
        """bf16 parameters: floating inputs enter the encoder as bf16, head outputs leave as fp32
        (losses and metrics in fp32). Hooks, so evaluation through ``model(x)`` works too."""
        dtype = self.dtype

        def to_low(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(
                a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args
            )

        def to_float(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if isinstance(output, Tensor):
                return output.float()
            return type(output)(o.float() for o in output)

        self.model.encoder.register_forward_pre_hook(to_low)
        self.model.heads.register_forward_hook(to_float)

    def _module(self) -> MultiTaskModel:
        if self.deepspeed_engine is None:
            raise RuntimeError(
                "deepspeed engine: call engine.wrap_optimizer(method.optimizer) before the first "
                "step (the trainer does)"
            )
        return self.deepspeed_engine.module

    def _forward_model(self) -> MultiTaskModel:
        return self._module()

    def _no_per_task_at_stage_3(self, request: str) -> None:
        if self.zero_stage == 3:
            raise NotImplementedError(
                f"deepspeed engine: {request} is not supported at ZeRO stage 3 (its hooks gather a "
                "module's parameters for one backward pass per forward); use zero_stage <= 2"
            )

    # ---- the interface methods use ----------------------------------------------------------
    def forward(self, batch: Batch) -> StepState:
        """Encoder and heads forward through the wrapped module's submodules.

        ``detached`` is a view of z inside the graph (not a leaf as in the local engines), so the
        plain weighted backward runs heads and encoder in one DeepSpeed pass; per-task requests
        differentiate with respect to it and stop there.
        """
        module = self._module()
        inputs, targets = batch
        size = int(inputs.shape[0])
        self.charge("encoder_forward", size)
        self.charge("heads_forward", size)
        representation = module.encoder(inputs)
        through = representation.view_as(representation)
        outputs = module.heads(through)
        task_losses = self.taskset.losses(outputs, targets)
        return StepState(inputs, targets, representation, through, outputs, task_losses)

    def backward(
        self, state: StepState, weights: Tensor, head_weights: Tensor | None = None
    ) -> None:
        """Gradient of sum_t w_t L_t (shared) and sum_t h_t L_t (heads), into DeepSpeed's buffers.

        Equal weights and no cached z-gradients: one DeepSpeed backward of ``sum_t w_t L_t``
        (heads backward + encoder backward). Otherwise, as the local engines do: the heads'
        gradient by ``autograd.grad`` and the z-gradient from the cache (or one heads input
        backward), then one DeepSpeed backward of ``<z, z_grad> + sum <theta_heads, g_heads>``
        (encoder backward only). Same charges as ``loop``.
        """
        weights = weights.to(state.task_losses)
        same = head_weights is None or torch.equal(head_weights.to(weights), weights)
        if same and state.representation_grads is None:
            self.charge("heads_backward", state.batch_size)
            self.charge("encoder_backward", state.batch_size)
            self._deepspeed_backward((weights * state.task_losses).sum())
            return
        self._no_per_task_at_stage_3(
            "backward with head_weights != weights or after per-task requests"
        )
        head_weights = weights if head_weights is None else head_weights.to(weights)
        heads_term = self._heads_term(state, head_weights)
        z_grad = self._representation_gradient(state, weights)
        self.charge("encoder_backward", state.batch_size)
        self._deepspeed_backward((state.representation * z_grad.detach()).sum() + heads_term)

    def apply_shared_direction(
        self, state: StepState, direction: Tensor, head_weights: Tensor
    ) -> None:
        """Shared gradient := ``direction`` (P,), heads get ``sum_t h_t dL_t/dtheta_h``; no
        encoder backward runs. One DeepSpeed backward of the linear terms
        ``<theta_shared, direction> + <theta_heads, g_heads>``. Charges one heads backward
        (parameters only), as ``loop``."""
        self._no_per_task_at_stage_3("apply_shared_direction")
        heads_term = self._heads_term(state, head_weights.to(state.task_losses))
        self._deepspeed_backward(
            _linear_term(self.shared_parameters, direction.reshape(-1)) + heads_term
        )

    def representation_gradients(self, state: StepState) -> Tensor:
        self._no_per_task_at_stage_3("representation_gradients")
        return super().representation_gradients(state)

    def shared_jacobian(self, state: StepState) -> Tensor:
        self._no_per_task_at_stage_3("shared_jacobian")
        return super().shared_jacobian(state)

    def shared_gradient(self, state: StepState, weights: Tensor) -> Tensor:
        self._no_per_task_at_stage_3("shared_gradient")
        return super().shared_gradient(state, weights)

    # ---- helpers ----------------------------------------------------------------------------
    def _deepspeed_backward(self, surrogate: Tensor) -> None:
        # scale_wrt_gas=False: the harness's losses are already means over the batch
        self.deepspeed_engine.backward(surrogate, scale_wrt_gas=False)

    def _heads_term(self, state: StepState, head_weights: Tensor) -> Tensor:
        """sum <theta_heads, g_heads> with g_heads = d(sum_t h_t L_t)/d theta_heads (charged)."""
        heads = self.task_parameters
        if not heads:  # parameter-free heads (analytic problems): no pass, nothing charged
            return state.task_losses.new_zeros((), dtype=torch.float32)
        self.charge("heads_backward_params", state.batch_size)
        grads = torch.autograd.grad(
            (head_weights * state.task_losses).sum(), heads, retain_graph=True, allow_unused=True
        )
        return _linear_term(heads, flatten_gradients(grads, heads))

    def _shared_jacobian(
        self, state: StepState, z_grads: Tensor, out: Tensor | None = None
    ) -> Tensor:
        jacobian = super()._shared_jacobian(state, z_grads, out)
        return jacobian.float() if self.dtype != torch.float32 else jacobian


def _linear_term(parameters: list[nn.Parameter], gradient: Tensor) -> Tensor:
    """sum_p <p, g_p>: a scalar whose gradient with respect to each parameter is exactly its
    slice of ``gradient`` (P,), so DeepSpeed's backward delivers a gradient computed elsewhere."""
    gradient = gradient.detach()
    total = gradient.new_zeros((), dtype=torch.float32)
    offset = 0
    for parameter in parameters:
        piece = gradient[offset : offset + parameter.numel()].view_as(parameter).to(parameter.dtype)
        total = total + (parameter * piece).sum()
        offset += parameter.numel()
    return total
