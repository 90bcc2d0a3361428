"""FLOP costs of the passes a gradient engine makes, measured once per model.

Each pass kind (encoder forward, heads backward, an HVP, ...) is run once on a calibration
batch and stored as FLOPs *per sample*; the engines then charge ``per_sample[kind] * batch_size``
for every pass they make. The FLOPs of a pass are counted by one of two rules:

- **matrix rule** (every learning model): what ``torch.utils.flop_counter.FlopCounterMode``
  counts, i.e. matrix products, convolutions and attention with their gradients (2 FLOPs per
  multiply-add). Linear in the batch size, so per-sample costs are exact; element-wise work
  (activations, losses, normalisation) is not counted, a few percent of these models' work.
- **element-wise rule**, for a pass in which the matrix rule counts nothing (an element-wise
  model: the ``analytic`` problems, whose objectives are sines, powers and sums): one FLOP per
  output element of every ATen op tagged ``pointwise`` (add, mul, sin, pow, ...) and one per
  input element of every op tagged ``reduction`` (sum, mean, ...). Views, copies and indexing
  cost nothing. Without it such a pass measures 0 FLOPs and a FLOP budget never ends the run.

The rule is chosen per measured pass, so the costs (and the shipped suites' calibrated budgets)
of every model with matrix products are unchanged. A model whose step still measures 0 FLOPs
under both rules is refused under a FLOP budget (``harness.budget.require_counted_step``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

# TorchDispatchMode is the one hook that sees the ATen ops of both the forward and the autograd
# backward (a TorchFunctionMode sees only Python-level calls); FlopCounterMode is built on it too.
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

_COPIES = {torch.ops.aten.clone.default}  # tagged pointwise, but a copy: no arithmetic


def _tensor_elements(values: Any) -> int:
    return sum(leaf.numel() for leaf in tree_leaves(values) if isinstance(leaf, torch.Tensor))


class ElementwiseCounter(TorchDispatchMode):
    """Counts FLOPs by the element-wise rule (module docstring) while active: ``total``."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        outputs = func(*args, **kwargs)
        if func in _COPIES:
            pass
        elif torch.Tag.pointwise in func.tags:
            self.total += _tensor_elements(outputs)
        elif torch.Tag.reduction in func.tags and args:
            self.total += _tensor_elements(args[0])
        return outputs


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of ``fn()``: by the matrix rule, or by the element-wise rule when the matrix rule
    counts nothing (see the module docstring). ``fn`` runs once."""
    with FlopCounterMode(display=False) as counter, ElementwiseCounter() as elementwise:
        fn()
    matrix_flops = counter.get_total_flops()
    return float(matrix_flops if matrix_flops > 0 else elementwise.total)


@dataclass
class PassCosts:
    """FLOPs per sample for each named pass kind of one model."""

    per_sample: dict[str, float] = field(default_factory=dict)

    def measure(self, kind: str, fn: Callable[[], object], batch_size: int) -> float:
        """Measure ``fn`` (one pass over ``batch_size`` samples) and store it as ``kind``."""
        self.per_sample[kind] = count_flops(fn) / batch_size
        return self.per_sample[kind]

    def flops(self, kind: str, batch_size: int, passes: int = 1) -> float:
        """FLOPs of ``passes`` passes of ``kind`` over ``batch_size`` samples."""
        return self.per_sample[kind] * batch_size * passes

    def __contains__(self, kind: str) -> bool:
        return kind in self.per_sample
