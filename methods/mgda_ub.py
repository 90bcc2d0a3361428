"""``mgda_ub``: MGDA with weights from the gradients w.r.t. the shared representation z.

Sener & Koltun, NeurIPS 2018, Sec. 3.3 ("MGDA-UB"). With z = encoder(x) the output every head
reads, the chain rule gives g_t = (dz/dθ)^T ∇_z L_t, so ||sum_t a_t g_t|| <= ||dz/dθ|| ·
||sum_t a_t ∇_z L_t||: minimising the norm of the combined *representation* gradients minimises
an upper bound of MGDA's objective. It needs no encoder backward per task: the T gradients
∇_z L_t (each of shape z.shape = (B, ...), flattened to B·D entries with the batch dimension
kept, as in the reference code) cost T heads-sized backward passes, then one backward of
sum_t a_t L_t through the encoder reuses them (z-gradient sum_t a_t ∇_z L_t, no heads rerun).

What "the representation" is for each dataset's default model (the encoder's output):
- multidigits, multimnist, multifashion, fashion_mnist (MultiLeNet): the 50-d ReLU output of the
  encoder's fully connected layer, z: (B, 50);
- celeba, utkface (CIFAR-style ResNet-18 on 64×64): the average-pooled 512×2×2 feature map,
  flattened, z: (B, 2048);
- census (MLP): the last hidden layer, z: (B, 256).

How the weights differ from ``mgda``'s: they minimise ||sum_t a_t ∇_z L_t|| instead of
||sum_t a_t g_t||. With A = dz/dθ, MGDA's Gram is R A A^T R^T and MGDA-UB's is R R^T (R: the
z-gradients as rows); the weights coincide when A A^T is a multiple of the identity on the span
of the z-gradients, and differ otherwise. So the common-descent property holds in z
(∇_z L_t · sum_s a_s ∇_z L_s >= 0 for every t), not necessarily for the parameter gradients, and
a zero ``direction_norm`` means Pareto stationarity with respect to z only. The paper reports
8.25 vs 8.33 CelebA error (UB vs exact MGDA) at 1/27 of the training time.
"""

from __future__ import annotations

from mtlbench.harness.gradients import GradientEngine, StepState
from mtlbench.harness.registry import register_method
from mtlbench.methods.mgda import MGDA
from torch import Tensor


@register_method("mgda_ub")
class MGDAUB(MGDA):
    """MGDA-UB. Same parameters and logs as ``mgda`` (``direction_norm`` is measured in z)."""

    default_engine = "representation"
    consumes = "Gram (T×T) of representation gradients ∂Lₜ/∂z"
    cost = "≈ 1 forward + 1 backward + T head VJPs"
    paper = "Sener & Koltun, NeurIPS 2018 (Sec. 3.3)"

    def task_gram(self, state: StepState, engine: GradientEngine) -> Tensor:
        """Gram (T, T) of the per-task gradients of the losses w.r.t. z (T, *z.shape)."""
        return engine.gram(engine.representation_gradients(state))

    def apply(
        self, state: StepState, engine: GradientEngine, weights: Tensor, head_weights: Tensor
    ) -> None:
        """One backward of sum_t a_t L_t through the encoder, from the cached z-gradients."""
        engine.backward(state, weights, head_weights=head_weights)
