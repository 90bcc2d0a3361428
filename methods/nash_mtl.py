"""``nash_mtl``: task weights from the Nash bargaining solution.

Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022, Alg. 1: the update
d = Jᵀα maximises sum_t log⟨g_t, d⟩ over a ball, which holds when α_t ⟨g_t, d⟩ = 1 for every
task, i.e. G α = 1/α element-wise (Sec. 3, the Nash bargaining solution; G = J Jᵀ).
Solved exactly (``_power_balance``, p = 1: Newton on the strictly convex min ½αᵀGα − sum log α,
to rounding) where the reference code runs at most 20 convex-concave steps (cvxpy/ECOS).

Scale: the equation's own, α(sG) = s^(-1/2) α(G), so ||d||² = αᵀGα = T whatever the gradients'
scale. The reference code solves on G / ||G||_F for conditioning but keeps ||G||_F in its
constraint (α_t (G α)_t >= 1 for the raw G), so its α also solves the raw equation (checked
once: TorchJD's port of that CCP, run with CLARABEL for ECOS, gives α_t (G α)_t = 1 at gradient
scales 1 and 100); we solve on G / ||G||_F and rescale by ||G||_F^(-1/2), the same thing.
``max_norm`` then rescales α so that ||d|| = sqrt(αᵀGα) <= max_norm (the reference clips the
shared parameters' gradient norm after the backward; the default 1.0 clips whenever T >= 2 and
G has no null vector z >= 0, since then ||d|| = sqrt(T)). Heads: the reference backpropagates
sum_t α_t L_t through the heads and clips only the shared gradient, so ``head_weights`` returns
the unclipped α. Degenerate Grams (ridge ``reg_eps``, zero gradients: the largest weight of the
other tasks): see ``_power_balance``.

Defaults (reference code, LibMTL and TorchJD agree): max_norm 1.0, update_weights_every 1.
Between updates the previous α is reused (and clipped with the current Gram); α and the step
counter are part of ``weighting_state`` (the reference keeps them outside any state dict).
"""

from __future__ import annotations

from typing import Any

from mtlbench.harness.method import MethodParams, TrainingConfig
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.registry import register_method
from mtlbench.harness.tasks import TaskSet
from mtlbench.harness.weighting import GramWeighting
from mtlbench.methods._power_balance import power_balance_weights
from pydantic import Field
from torch import Tensor


class NashMTLParams(MethodParams):
    """Parameters of ``nash_mtl``.

    max_norm: the largest norm of the shared update sqrt(αᵀGα) (α is scaled down to it);
        0 disables the clip.
    update_weights_every: solve for α every this many steps; reuse the last α in between.
    reg_eps: ridge added to G / ||G||_F (and the squared-norm threshold, relative to ||G||_F,
        below which a task's gradient counts as zero); see ``_power_balance``.
    """

    max_norm: float = Field(1.0, ge=0)
    update_weights_every: int = Field(1, ge=1)
    reg_eps: float = Field(1e-8, gt=0, le=1e-3)


@register_method("nash_mtl")
class NashMTL(GramWeighting[NashMTLParams]):
    """Nash-MTL weights α (T,) > 0 from the Gram (T, T). Logs ``weights`` (clipped α) and
    ``direction_norm``."""

    Params = NashMTLParams
    default_engine = "loop"
    weights_on_simplex = False
    paper = "Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022 (Alg. 1)"
    cost = "T encoder backward passes (the shared Jacobian)"

    def __init__(
        self,
        params: NashMTLParams,
        model: MultiTaskModel,
        taskset: TaskSet,
        training: TrainingConfig,
    ) -> None:
        super().__init__(params, model, taskset, training)
        self._alpha: Tensor | None = None  # the last solution (unclipped), (T,)
        self._step = 0

    def weights(self, gram: Tensor, task_losses: Tensor) -> Tensor:
        if self._alpha is None or self._step % self.params.update_weights_every == 0:
            self._alpha = power_balance_weights(gram, 1.0, self.params.reg_eps)
        self._step += 1
        alpha = self._alpha.to(gram)
        if self.params.max_norm > 0:
            norm = float((alpha @ gram.to(alpha) @ alpha).clamp_min(0).sqrt())
            if norm > self.params.max_norm:
                alpha = alpha * (self.params.max_norm / norm)
        return alpha

    def head_weights(self, weights: Tensor) -> Tensor:
        """The unclipped α (the reference clips the shared gradient only)."""
        return weights if self._alpha is None else self._alpha.to(weights)

    def weighting_state(self) -> dict[str, Any]:
        return {"alpha": self._alpha, "step": self._step}

    def load_weighting_state(self, state: dict[str, Any]) -> None:
        self._alpha = state.get("alpha")
        self._step = int(state.get("step", 0))
