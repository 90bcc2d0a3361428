"""``upgrad``: Unconflicting Projection of Gradients (Jacobian descent).

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization" (2024): the UPGrad
aggregator, with the projection π_J of their Eq. 3 computed from the Gram by their Prop. 1 (a
QP in the weights, TorchJD's route). Each task gradient g_t is
projected onto the dual cone of all the gradients {x : ⟨g_s, x⟩ >= 0 for every s}, and the
projections are averaged: d = (1/T) sum_t π(g_t) = Jᵀa with

    a = sum_t v_t,   v_t = argmin_v vᵀ G̃ v  subject to  v >= e_t / T,

G̃ = G / tr(G) + reg_eps·I (``_dual_cone``). d conflicts with no task up to the ridge
(⟨g_s, d⟩ >= −reg_eps·tr(G)·a_s, from the QP's optimality conditions: ~1e-3 ||g_s|| ||d|| at
the default, as TorchJD's) and equals the mean gradient when the gradients do not conflict.

Scale: a mean of task gradients (the paper's and TorchJD's default preference 1/T): equal to
1/T for mutually non-conflicting gradients; a_t >= 0 but sum_t a_t >= 1, so not on the simplex.
The weights do not depend on the gradients' scale (trace normalisation, ridge relative to it)
as long as tr(G) >= ``norm_eps``; below it, and for all-zero gradients, they are 1/T (TorchJD's
rule, see ``_dual_cone``). Defaults: TorchJD 0.18's ``QuadprogProjector`` (norm_eps = reg_eps =
1e-4), the authors' library; the paper's experiments state no ridge. Heads follow their own
task's gradient (TorchJD aggregates the shared Jacobian only).

Cost: the Jacobian (T, P) of the shared parameters (T encoder backward passes) plus T QPs of
size T on the host (quadprog), negligible next to the backward passes.
"""

from __future__ import annotations

import numpy as np
import torch
from mtlbench.harness.registry import register_method
from mtlbench.harness.weighting import GramWeighting
from mtlbench.methods._dual_cone import DualConeParams, dual_cone_weights
from torch import Tensor


@register_method("upgrad")
class UPGrad(GramWeighting[DualConeParams]):
    """UPGrad weights a (T,) from the Gram (T, T): the sum of the T dual-cone projections'
    weights, each of preference e_t / T. Logs ``weights`` and ``direction_norm``."""

    Params = DualConeParams
    default_engine = "loop"
    weights_on_simplex = False
    paper = "Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024 (UPGrad)"
    cost = "T encoder backward passes (the shared Jacobian)"

    def weights(self, gram: Tensor, task_losses: Tensor) -> Tensor:
        num_tasks = gram.shape[0]
        projections = dual_cone_weights(
            gram, np.eye(num_tasks) / num_tasks, self.params.norm_eps, self.params.reg_eps
        )
        return torch.as_tensor(projections.sum(axis=0), dtype=gram.dtype, device=gram.device)
