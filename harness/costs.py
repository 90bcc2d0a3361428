"""FLOP costs of the passes a gradient engine makes, measured once per model.

Each pass kind (encoder forward, heads backward, an HVP, ...) is run once on a calibration
batch under ``torch.utils.flop_counter.FlopCounterMode`` and stored as FLOPs *per sample*; the
engines then charge ``per_sample[kind] * batch_size`` for every pass they make. Convolutions,
matrix products and their gradients are linear in the batch size, so this is exact for them;
element-wise work is not counted (FlopCounterMode does not count it either).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs counted by FlopCounterMode while ``fn()`` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


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
