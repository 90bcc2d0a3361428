"""``fairgrad``: α-fair task weights.

Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024, Alg. 1 (Eq. 4): the
update d = Jᵀw maximises the α-fair utility sum_t (⟨g_t, d⟩)^(1-α) / (1-α) (log at α = 1) over a
ball, which holds when ⟨g_t, d⟩ = w_t^(-1/α), i.e. G w = w^(-1/α), w > 0. Solved exactly
(``_power_balance``, p = 1/α: Newton on the convex min ½wᵀGw − sum φ(w_t), φ'(w) = w^(-1/α), to
rounding) where the reference code calls scipy ``least_squares`` and does not check its result
(as TorchJD, which therefore stops far from the solution on Grams of scale 1e-8: residual ~1).
α = 1 is proportional fairness (the Nash-MTL equation); α → ∞ approaches max-min fairness.

Scale: the solution's own, w(sG) = s^(-α/(1+α)) w(G); no normalisation (as the reference).
The reference code (OptMN-Lab/fairgrad) then multiplies d by T and clips the shared gradient
norm at 1.0 (LibMTL does neither): we do neither by default (without the clip the ×T is a
learning-rate factor); ``max_norm`` > 0 clips sqrt(wᵀGw) as Nash-MTL does. Heads follow their
own task's gradient (the reference overwrites the shared gradients only). Degenerate Grams
(ridge ``reg_eps``, zero gradients: the largest weight of the other tasks): see
``_power_balance``.

Defaults: α = 1.0, the reference's ``--alpha`` default (and LibMTL's); every
``experiments/*/run.sh`` of the reference uses α = 2.0; TorchJD requires α.
"""

from __future__ import annotations

from mtlbench.harness.method import MethodParams
from mtlbench.harness.registry import register_method
from mtlbench.harness.weighting import GramWeighting
from mtlbench.methods._power_balance import power_balance_weights
from pydantic import Field
from torch import Tensor


class FairGradParams(MethodParams):
    """Parameters of ``fairgrad``.

    alpha: the fairness parameter α > 0 (1: proportional fairness; larger: fairer). Checked
        for 0.05 <= α <= 10 on every input family; above 10, on rank-deficient Grams the
        weights span ~30 orders of magnitude and the solver may stop short of 1e-13.
    max_norm: the largest norm of the shared update sqrt(wᵀGw); 0 (default) disables the clip.
    reg_eps: ridge added to G / ||G||_F (and the squared-norm threshold, relative to ||G||_F,
        below which a task's gradient counts as zero); see ``_power_balance``.
    """

    alpha: float = Field(1.0, gt=0)
    max_norm: float = Field(0.0, ge=0)
    reg_eps: float = Field(1e-8, gt=0, le=1e-3)


@register_method("fairgrad")
class FairGrad(GramWeighting[FairGradParams]):
    """FairGrad weights w (T,) > 0 from the Gram (T, T). Logs ``weights`` and
    ``direction_norm``."""

    Params = FairGradParams
    default_engine = "loop"
    weights_on_simplex = False
    paper = "Ban & Ji, Fair Resource Allocation in Multi-Task Learning, ICML 2024 (Alg. 1)"
    cost = "T encoder backward passes (the shared Jacobian)"

    def weights(self, gram: Tensor, task_losses: Tensor) -> Tensor:
        weights = power_balance_weights(gram, 1.0 / self.params.alpha, self.params.reg_eps)
        if self.params.max_norm > 0:
            norm = float((weights @ gram.to(weights) @ weights).clamp_min(0).sqrt())
            if norm > self.params.max_norm:
                weights = weights * (self.params.max_norm / norm)
        return weights
