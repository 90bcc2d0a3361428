"""The model contract: a shared encoder followed by task heads.

Every dataset's default model is a :class:`MultiTaskModel`. The split at the representation
``z = encoder(x)`` is what the gradient engines use: shared parameters are the encoder's, task
parameters the heads'; MGDA-UB differentiates with respect to ``z``.

Heads may also offer ``forward_per_task(z_tasks)``, z_tasks: (T, *z.shape), where head t reads
only ``z_tasks[t]`` (same outputs as ``forward`` when every slice is z). Then one backward of
sum_t L_t gives all T per-task z-gradients at the cost of one heads backward, instead of T
(the batched engines use it; both head classes here have it).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from mtlbench.harness.tasks import Outputs
from torch import Tensor, nn


class MultiTaskModel(nn.Module):
    """``encoder: x (B, ...) -> z (B, ...)``; ``heads: z -> outputs`` ((B, T, C) or T tensors)."""

    def __init__(self, encoder: nn.Module, heads: nn.Module, num_tasks: int):
        super().__init__()
        self.encoder = encoder
        self.heads = heads
        self.num_tasks = num_tasks

    def forward(self, x: Tensor) -> Outputs:
        return self.heads(self.encoder(x))

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def task_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.heads.parameters() if p.requires_grad]


class StackedMLPHeads(nn.Module):
    """T equal MLP heads held as stacked weights, run as batched matrix products.

    One head is ``Linear(in, hidden) -> ReLU -> Linear(hidden, out)`` (or a single
    ``Linear(in, out)`` when ``hidden`` is None); the T heads' weights are stacked on a leading
    axis so all heads cost one ``einsum`` per layer instead of T small kernels. Initialised as
    ``nn.Linear`` would be. z: (B, in) -> (B, T, out).
    """

    def __init__(self, num_tasks: int, in_features: int, out_features: int, hidden: int | None):
        super().__init__()
        widths = [in_features] + ([hidden] if hidden else []) + [out_features]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(widths):
            self.weights.append(nn.Parameter(torch.empty(num_tasks, fan_in, fan_out)))
            self.biases.append(nn.Parameter(torch.empty(num_tasks, fan_out)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw fresh weights as ``nn.Linear`` would: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        with torch.no_grad():
            for weight, bias in zip(self.weights, self.biases, strict=True):
                bound = 1.0 / math.sqrt(weight.shape[1])
                weight.uniform_(-bound, bound)
                bias.uniform_(-bound, bound)

    def forward(self, z: Tensor) -> Tensor:
        hidden = torch.einsum("bi,tio->bto", z.flatten(1), self.weights[0]) + self.biases[0]
        return self._after_first_layer(hidden)

    def forward_per_task(self, z_tasks: Tensor) -> Tensor:
        """Head t reads z_tasks[t]: (T, B, in) -> (B, T, out); same FLOPs as ``forward``."""
        hidden = torch.einsum("tbi,tio->bto", z_tasks.flatten(2), self.weights[0]) + self.biases[0]
        return self._after_first_layer(hidden)

    def _after_first_layer(self, hidden: Tensor) -> Tensor:
        for weight, bias in zip(list(self.weights)[1:], list(self.biases)[1:], strict=True):
            hidden = torch.relu(hidden)
            hidden = torch.einsum("bti,tio->bto", hidden, weight) + bias
        return hidden


class SeparateHeads(nn.Module):
    """Heads of different shapes (e.g. a regression and two classifications): T modules."""

    def __init__(self, heads: Sequence[nn.Module]):
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, z: Tensor) -> list[Tensor]:
        return [head(z) for head in self.heads]

    def forward_per_task(self, z_tasks: Tensor) -> list[Tensor]:
        """Head t reads z_tasks[t]: (T, B, ...) -> T outputs."""
        return [head(z_tasks[t]) for t, head in enumerate(self.heads)]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
