"""``aligned_mtl``: Aligned-MTL, aligning the independent components of the task gradients.

Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task
Learning", CVPR 2023, Algorithm 1. The gradient matrix J (T, P) is replaced by the one whose
singular values are all equal (condition number 1) and whose singular vectors are J's: with
G = J Jᵀ = V Λ Vᵀ truncated to its numerical rank r (eigenvalues above T · eps · λ_max, eps of
the Gram's dtype, as TorchJD), the balance transformation is B = √λ_min · V Λ^{-1/2} Vᵀ
(T, T): with J = V Λ^{1/2} Uᵀ (SVD), B J = √λ_min · V Uᵀ has every singular value √λ_min,
and the update is (B J)ᵀ 𝟙 = Jᵀ (B 𝟙).

Scale: the paper and its reference code (SamsungLabs/MTL, LibMTL) sum the aligned gradients,
α = B 𝟙; the weights here are B 𝟙 / T, the mean (TorchJD's ``AlignedMTL`` too), so T
orthonormal gradients get 1/T each. ``scale_mode`` picks the common singular value: ``min``
(√λ_min, the paper's default and TorchJD's), ``median`` or ``rmse`` (√mean λ; TorchJD calls it
the original implementation's). The preference vector of the reference code is fixed to 𝟙
(LibMTL#57: it is unused there). An all-zero Gram (r = 0) gives equal weights 1/T (B = I, as
TorchJD). The weights can be negative; a zero gradient gets weight 0 up to rounding.
"""

from __future__ import annotations

from typing import Literal

import torch
from mtlbench.harness.method import MethodParams
from mtlbench.harness.registry import register_method
from mtlbench.harness.weighting import GramWeighting
from torch import Tensor


class AlignedMTLParams(MethodParams):
    """scale_mode: the common singular value √s of the aligned gradients, s the ``min``
    (default, paper), ``median`` or mean (``rmse``) of the retained eigenvalues of G."""

    scale_mode: Literal["min", "median", "rmse"] = "min"


def balance_weights(
    gram: Tensor, scale_mode: str = "min", eps: float = torch.finfo(torch.float64).eps
) -> Tensor:
    """B 𝟙 / T (T,) for a float64 Gram (T, T), B = √s · V Λ^{-1/2} Vᵀ on G's numerical range
    (eigenvalues above T · eps · λ_max, eps the precision the Gram was formed in)."""
    num_tasks = gram.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    largest = float(eigenvalues.max())
    kept = eigenvalues > num_tasks * eps * largest
    if largest <= 0.0 or not bool(kept.any()):
        return torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
    eigenvalues, eigenvectors = eigenvalues[kept], eigenvectors[:, kept]
    if scale_mode == "min":
        scale = eigenvalues.min()
    elif scale_mode == "median":
        scale = eigenvalues.median()  # the lower median for an even count, as torch's
    else:
        scale = eigenvalues.mean()
    balance = scale.sqrt() * (eigenvectors / eigenvalues.sqrt()) @ eigenvectors.T  # B (T, T)
    return balance.sum(dim=1) / num_tasks


@register_method("aligned_mtl")
class AlignedMTL(GramWeighting[AlignedMTLParams]):
    """Aligned-MTL on the shared parameters; weights (T,) on the mean scale (paper's B𝟙 / T)."""

    Params = AlignedMTLParams
    weights_on_simplex = False
    paper = "Senushkin et al., CVPR 2023 (Independent Component Alignment for MTL), Alg. 1"
    cost = "T encoder backward passes (the shared Jacobian)"

    def weights(self, gram: Tensor, task_losses: Tensor) -> Tensor:
        gram64 = gram.detach().to(device="cpu", dtype=torch.float64)
        eps = torch.finfo(gram.dtype).eps  # a float32 Gram's rounding is not rank
        weights = balance_weights((gram64 + gram64.T) / 2, self.params.scale_mode, eps)
        return weights.to(dtype=gram.dtype, device=gram.device)
