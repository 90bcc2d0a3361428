"""Euclidean projection onto the probability simplex, batched and sort-based.

    project_simplex(v) = argmin_{w >= 0, sum w = 1} ||w - v||_2

The solution is ``w = max(v - tau, 0)`` for the threshold ``tau`` that makes ``w`` sum to one
(Held, Wolfe & Crowder 1974; Duchi, Shalev-Shwartz, Singer & Chandra, ICML 2008, Fig. 1): sort
``v`` in decreasing order as ``s``, let ``rho`` be the largest ``k`` with
``s_k - (sum_{i<=k} s_i - 1) / k > 0``, then ``tau = (sum_{i<=rho} s_i - 1) / rho``.

Written by hand (a dozen tensor ops) rather than calling a QP library: it runs on the device,
inside a training step, over any leading batch shape, with no host synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor


def project_simplex(values: Tensor) -> Tensor:
    """Project each row of ``values`` (..., T) onto the simplex {w >= 0, sum_t w_t = 1}.

    O(T log T) per row (one sort). Works in the input's dtype; returns the same shape.
    """
    if values.shape[-1] == 0:
        raise ValueError("project_simplex needs at least one coordinate")
    sorted_values = torch.sort(values, dim=-1, descending=True).values
    cumulative = sorted_values.cumsum(dim=-1) - 1.0
    ranks = torch.arange(1, values.shape[-1] + 1, dtype=values.dtype, device=values.device)
    # The condition holds for k = 1..rho and fails after: rho = number of entries where it holds.
    support = (sorted_values - cumulative / ranks) > 0
    rho = support.sum(dim=-1, keepdim=True).clamp_min(1)
    threshold = cumulative.gather(-1, rho - 1) / rho.to(values.dtype)
    return (values - threshold).clamp_min(0.0)
