"""``unit_norm``: the mean of the unit-norm task gradients (an example weighting)."""

from __future__ import annotations

from mtlbench.harness.method import MethodParams
from mtlbench.harness.registry import register_method
from mtlbench.harness.weighting import GramWeighting
from pydantic import Field
from torch import Tensor


class UnitNormParams(MethodParams):
    """floor: gradient norms below it count as it (a vanished gradient keeps a finite weight)."""

    floor: float = Field(1e-12, gt=0)  # typed, validated when the suite is loaded


@register_method("unit_norm")
class UnitNorm(GramWeighting[UnitNormParams]):
    """w_t = 1 / (T ||g_t||): every task moves the shared parameters by the same amount."""

    Params = UnitNormParams
    paper = "an example: gradient normalisation"
    consumes = "Gram of the shared gradients"
    cost = "T encoder backward passes (the shared Jacobian)"

    def weights(self, gram: Tensor, task_losses: Tensor) -> Tensor:
        """gram: (T, T) of the shared gradients; task_losses: (T,); returns (T,)."""
        norms = gram.diagonal().clamp_min(0).sqrt().clamp_min(self.params.floor)
        return 1.0 / (len(norms) * norms)
