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
from mtlbench.harness.method import MethodParams, TrainingConfig
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.registry import register_method
from mtlbench.harness.tasks import TaskSet
from mtlbench.harness.weighting import GramWeighting
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
class MGDA(GramWeighting[MGDAParams]):
    """Exact MGDA on the shared parameters. Logs ``weights`` (T,) and ``direction_norm``
    (||sum_t a_t g_t||, which reaches 0 at a Pareto-stationary point)."""

    Params = MGDAParams
    default_engine = "loop"
    weights_on_simplex = True
    paper = "Sener & Koltun, NeurIPS 2018 (Alg. 2); Désidéri 2012"
    cost = "T encoder backward passes (the shared Jacobian)"

    def __init__(
        self,
        params: MGDAParams,
        model: MultiTaskModel,
        taskset: TaskSet,
        training: TrainingConfig,
    ) -> None:
        super().__init__(params, model, taskset, training)
        # last step's weights: the solver's warm start (same optimum, fewer iterations)
        self._previous_weights: Tensor | None = None

    def weights(self, gram: Tensor, task_losses: Tensor) -> Tensor:
        weights = mgda_weights(
            gram,
            task_losses,
            self.params.normalization,
            self.params.tolerance,
            self.params.max_iterations,
            initial_weights=self._previous_weights,
        )
        self._previous_weights = weights
        return weights

    def head_weights(self, weights: Tensor) -> Tensor:
        return torch.ones_like(weights) if self.params.head_gradient == "own" else weights

    def weighting_state(self) -> dict[str, Any]:
        return {"previous_weights": self._previous_weights}

    def load_weighting_state(self, state: dict[str, Any]) -> None:
        self._previous_weights = state.get("previous_weights")
