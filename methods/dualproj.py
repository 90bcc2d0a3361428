"""``dualproj``: the mean gradient projected onto the dual cone of the task gradients.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization" (2024), the DualProj
aggregator (the projection of Lopez-Paz & Ranzato's GEM, NeurIPS 2017, Eq. 11), computed from
the Gram by their Prop. 1 (a QP in the weights): d = π_J(Jᵀ𝟙/T) = Jᵀa with

    a = argmin_v vᵀ G̃ v  subject to  v >= 𝟙 / T,

G̃ = G / tr(G) + reg_eps·I (``_dual_cone``). d is the closest direction to the mean gradient that
conflicts with no task, up to the ridge: ⟨g_s, d⟩ >= −reg_eps·tr(G)·a_s (the QP's optimality
conditions; as TorchJD's).

Scale: a mean of task gradients (TorchJD's default preference 1/T): a = 𝟙/T when the mean
gradient conflicts with no task, a_t >= 1/T otherwise (so not on the simplex). The weights do
not depend on the gradients' scale as long as tr(G) >= ``norm_eps``; below it, and for all-zero
gradients, they are 1/T (TorchJD's rule, see ``_dual_cone``). Defaults: TorchJD 0.18's
``QuadprogProjector`` (norm_eps = reg_eps = 1e-4). Heads follow their own task's gradient.

Cost: the Jacobian (T, P) of the shared parameters plus one QP of size T on the host.
"""

from __future__ import annotations

import numpy as np
import torch
from mtlbench.harness.registry import register_method
from mtlbench.harness.weighting import GramWeighting
from mtlbench.methods._dual_cone import DualConeParams, dual_cone_weights
from torch import Tensor


@register_method("dualproj")
class DualProj(GramWeighting[DualConeParams]):
    """DualProj weights a (T,) from the Gram (T, T): the dual-cone projection of the mean
    gradient's weights. Logs ``weights`` and ``direction_norm``."""

    Params = DualConeParams
    default_engine = "loop"
    weights_on_simplex = False
    paper = "Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024 (DualProj)"
    cost = "T encoder backward passes (the shared Jacobian)"

    def weights(self, gram: Tensor, task_losses: Tensor) -> Tensor:
        num_tasks = gram.shape[0]
        preference = np.full((1, num_tasks), 1.0 / num_tasks)
        projection = dual_cone_weights(gram, preference, self.params.norm_eps, self.params.reg_eps)[
            0
        ]
        return torch.as_tensor(projection, dtype=gram.dtype, device=gram.device)
