"""``gls``: geometric loss strategy.

Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream Feature Aggregation and
Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019. The loss is the geometric
mean of the task losses, GLS = (prod_t L_t)^(1/T), formed as exp(mean_t log L_t) so that it
neither overflows nor underflows (LibMTL multiplies the losses directly; TorchJD takes the same
exp-mean-log route). Its gradient is dGLS/dL_t = GLS / (T L_t): those are the weights, and one
backward of sum_t w_t L_t is exactly the gradient of GLS.

Scale: intrinsic and already a mean: equal losses give w_t = 1/T. The weights do not sum to 1
in general. The log needs L_t > 0: losses are floored at ``LOSS_FLOOR`` (1e-12) first, so a task
whose loss reaches 0 gets a weight of at most about 1e12 * GLS / T instead of infinity.
No parameters; the authors' code was not available to check against.
"""

from __future__ import annotations

import torch
from mtlbench.harness.method import MethodParams
from mtlbench.harness.registry import register_method
from mtlbench.harness.weighting import LossWeighting
from torch import Tensor

LOSS_FLOOR = 1e-12


class GLSParams(MethodParams):
    """GLS has no parameters."""


@register_method("gls")
class GeometricLossStrategy(LossWeighting[GLSParams]):
    """Weights GLS / (T L_t): the gradient of the geometric mean of the task losses."""

    Params = GLSParams
    paper = "Chennupati et al., CVPR Workshops 2019 (MultiNet++)"
    cost = "1 forward + 1 backward"

    def weights(self, task_losses: Tensor) -> Tensor:
        losses = task_losses.detach().clamp_min(LOSS_FLOOR)
        geometric_mean = torch.exp(torch.log(losses).mean())
        return geometric_mean / (losses.shape[0] * losses)
