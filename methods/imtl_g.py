"""``imtl_g``: Impartial Multi-Task Learning, gradient balance (IMTL-G).

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning", ICLR
2021 (the gradient part, IMTL-G; its loss part IMTL-L, a learned loss scale, is not included).
The update d = Σ_t α_t g_t, Σ_t α_t = 1, has the same projection on every unit gradient
u_t = g_t / ‖g_t‖: d · u_t is equal for all t. On the Gram G (T, T) this reads G α ∝ n with
n = √diag(G) (n_t = ‖g_t‖), so α ∝ G⁻¹ n, normalised to Σ α = 1 (the paper's closed form,
which eliminates α_1 = 1 − Σ_{t>1} α_t). The weights can be negative.

Degenerate inputs:
- a singular G (linearly dependent gradients): G⁺ n with the pseudo-inverse (eigenvalues below
  T · eps · λ_max dropped, eps that of the Gram's dtype, so a float32 Gram's rounding is not
  taken for rank), the generalisation of TorchJD's ``IMTLG`` (Jacobian Descent paper); where
  n is not in the range of G no direction has equal projections, and G⁺ n is the least-squares
  one;
- a zero gradient (‖g_t‖² ≤ T · eps · max_s ‖g_s‖²) has no unit direction: its weight is 0 and
  the others are solved without it; all gradients zero gives all weights 0;
- Σ_t (G⁺ n)_t = 0 (relative to Σ_t |(G⁺ n)_t|, 1e-12) cannot be normalised: weights 0 (as
  TorchJD). The reference code of the paper is unverified.

Scale: Σ α = 1 is the paper's own constraint, i.e. already the mean scale (T equal orthogonal
gradients get 1/T each). No hyperparameters.
"""

from __future__ import annotations

import torch
from mtlbench.harness.method import MethodParams
from mtlbench.harness.registry import register_method
from mtlbench.harness.weighting import GramWeighting
from torch import Tensor

NORMALISATION_TOLERANCE = 1e-12
"""|Σ_t v_t| below this fraction of Σ_t |v_t| (v = G⁺ n) counts as 0: no normalisable α."""


class IMTLGParams(MethodParams):
    """IMTL-G has no parameters."""


def impartial_weights(gram: Tensor, eps: float = torch.finfo(torch.float64).eps) -> Tensor:
    """α (T,) with Σ α = 1 and equal (G α)_t / √G_tt on every non-zero task. gram: (T, T)
    float64; eps: the precision the Gram was formed in (its numerical rank is judged at it)."""
    num_tasks = gram.shape[0]
    squared_norms = gram.diagonal().clamp_min(0.0)
    weights = torch.zeros(num_tasks, dtype=torch.float64)
    if float(squared_norms.max()) <= 0.0:
        return weights
    active = squared_norms > num_tasks * eps * squared_norms.max()
    sub_gram = gram[active][:, active]
    eigenvalues, eigenvectors = torch.linalg.eigh(sub_gram)
    kept = eigenvalues > num_tasks * eps * eigenvalues.max()
    inverse = (eigenvectors[:, kept] / eigenvalues[kept]) @ eigenvectors[:, kept].T  # G⁺
    direction = inverse @ squared_norms[active].sqrt()
    total = direction.sum()
    if float(total.abs()) <= NORMALISATION_TOLERANCE * float(direction.abs().sum()):
        return weights
    weights[active] = direction / total
    return weights


@register_method("imtl_g")
class IMTLG(GramWeighting[IMTLGParams]):
    """IMTL-G on the shared parameters; weights (T,) sum to 1 and may be negative."""

    Params = IMTLGParams
    weights_on_simplex = False
    paper = "Liu et al., ICLR 2021 (Towards Impartial Multi-task Learning), IMTL-G"
    cost = "T encoder backward passes (the shared Jacobian)"

    def weights(self, gram: Tensor, task_losses: Tensor) -> Tensor:
        gram64 = gram.detach().to(device="cpu", dtype=torch.float64)
        weights = impartial_weights((gram64 + gram64.T) / 2, torch.finfo(gram.dtype).eps)
        return weights.to(dtype=gram.dtype, device=gram.device)
