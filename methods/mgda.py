"""``mgda``: the multiple-gradient descent algorithm with exact per-task gradients.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018, Alg. 2
(after Désidéri's MGDA, 2012). Each step takes the per-task gradients g_t of the *shared*
(encoder) parameters, finds the weights a on the simplex whose combination sum_t a_t g_t has the
least norm (``min_norm.mgda_weights`` on the Gram matrix G G^T), and moves the shared parameters
along it: when that point is not 0 it is a descent direction for every task at once, and when
it is 0 the parameters are Pareto stationary. Each head is updated with its own task's gradient
(the paper's algorithm; the reference code scales head t by a_t too: ``head_gradient:
weighted``).

Cost: the Jacobian (T, P) of the shared parameters, i.e. T encoder backward passes (the default
``loop`` engine makes them one by one: it measured faster than one vmapped ``batched`` product,
CPU LeNet at T = 40 16.5 vs 22.8 × EW, H100 ResNet-18 27.4 vs 30.0 × EW, and no slower at T = 2
or 3; benchmarks/step_time.py); the update sum_t a_t g_t is formed from that Jacobian, never by
another backward pass. ``mgda_ub`` gets weights from the representation instead, at about the
cost of one backward pass.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from mtlbench.harness.gradients import Batch, GradientEngine, StepState
from mtlbench.harness.method import Method, MethodParams, StepLog
from mtlbench.harness.registry import register_method
from mtlbench.methods.min_norm import GradientNormalization, mgda_weights
from pydantic import Field
from torch import Tensor


class MGDAParams(MethodParams):
    """Parameters shared by ``mgda`` and ``mgda_ub``.

    normalization: divide each task gradient before solving by ``none`` (the paper), ``l2``
        (its norm), ``loss`` (its loss) or ``loss+`` (loss × norm; the reference code's only
        shipped config, CelebA). As in the reference code the weights are then applied to the
        raw losses, so only ``none`` keeps the common-descent guarantee; hence the default.
    tolerance: relative optimality tolerance of the min-norm solver (see
        ``min_norm.min_norm_weights``). max_iterations: solver iterations at most.
    head_gradient: ``own``: head t follows the gradient of L_t (paper, Alg. 2); ``weighted``:
        a_t times it (the reference code, which backpropagates sum_t a_t L_t through the heads).
    """

    normalization: GradientNormalization = "none"
    tolerance: float = Field(1e-5, gt=0, lt=1)
    max_iterations: int = Field(250, ge=1)
    head_gradient: Literal["own", "weighted"] = "own"


@register_method("mgda")
class MGDA(Method):
    """Exact MGDA on the shared parameters. Logs ``weights`` (T,) and ``direction_norm``
    (||sum_t a_t g_t||, which reaches 0 at a Pareto-stationary point)."""

    Params = MGDAParams
    default_engine = "loop"
    produces_weights = True

    def __init__(self, params: MGDAParams, model, taskset, training):
        super().__init__(params, model, taskset, training)
        # last step's weights: the solver's warm start (same optimum, fewer iterations)
        self._previous_weights: Tensor | None = None

    # ---- what mgda_ub changes ------------------------------------------------------------
    def task_gram(self, state: StepState, engine: GradientEngine) -> Tensor:
        """Gram (T, T) of the per-task gradients that decide the weights: the shared Jacobian's.

        Local engines form it from the Jacobian; ``ray_sharded`` from parameter shards, never
        gathering the (T, P) Jacobian.
        """
        return engine.shared_gram(state)

    def apply(
        self, state: StepState, engine: GradientEngine, weights: Tensor, head_weights: Tensor
    ) -> None:
        """Write sum_t a_t g_t (from the per-task gradients in hand) and head gradients to ``.grad``."""
        engine.apply_shared_direction(
            state, engine.shared_combination(state, weights), head_weights
        )

    # ---- the step ---------------------------------------------------------------------------
    def step(self, batch: Batch, engine: GradientEngine) -> StepLog:
        self.optimizer.zero_grad(set_to_none=True)
        state = engine.forward(batch)
        gram = self.task_gram(state, engine)
        params: MGDAParams = self.params  # type: ignore[assignment]
        weights = mgda_weights(
            gram,
            state.task_losses.detach(),
            params.normalization,
            params.tolerance,
            params.max_iterations,
            initial_weights=self._previous_weights,
        )
        self._previous_weights = weights
        head_weights = torch.ones_like(weights) if params.head_gradient == "own" else weights
        self.apply(state, engine, weights, head_weights)
        self.optimizer.step()
        direction_norm = (weights @ gram.to(weights) @ weights).clamp_min(0).sqrt()
        return {
            "task_losses": state.task_losses.detach(),
            "weights": weights,
            "direction_norm": direction_norm,
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous_weights": self._previous_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._previous_weights = state.get("previous_weights")
