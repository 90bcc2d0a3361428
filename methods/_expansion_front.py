"""The continuous front of ``pareto_expansion``: computed points, simplices, solutions.

Ma, Du & Matusik, ICML 2020, Sec. 4.3. Every computed parameter set is an
:class:`ExplorationPoint`; the points of each seed's rays are joined into simplices (segments
along rays; with 3 tasks, triangles between neighbouring rays, see
:class:`~mtlbench.methods._pareto_geometry.LocalFront`), and a point inside a simplex is the
convex combination of its vertices' parameter vectors (N,): a first-order parameterisation of
the local Pareto set. Local fronts whose images collide are merged and simplices lying wholly
behind the merged front are dropped (:func:`~mtlbench.methods._pareto_geometry.merge_local_fronts`).

Solutions are views (:class:`PointModel`) sharing one scratch copy of the model: each loads its
parameters before its forward, so they are evaluated one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from mtlbench.harness.hvp import load_parameter_vector
from mtlbench.harness.method import Solution
from mtlbench.methods._pareto_geometry import LocalFront, merge_local_fronts, simplex_samples
from torch import Tensor, nn


@dataclass
class ExplorationPoint:
    """One computed parameter set.

    parameters: (N,) all trainable parameters. buffers: the model's buffers for it.
    seed / ray / depth: where it was found (ray -1, depth 0 for a seed).
    alpha: (T,) min-norm weights at it. kkt_residual: ||J^T alpha|| there (on its J sample).
    image: (T,) training losses on the probe sample (None until the expansion starts).
    """

    parameters: Tensor
    buffers: dict[str, Tensor]
    seed: int
    ray: int = -1
    depth: int = 0
    alpha: Tensor | None = None
    kkt_residual: float = math.nan
    image: Tensor | None = None

    @property
    def label(self) -> str:
        if self.ray < 0:
            return f"seed{self.seed}"
        return f"seed{self.seed}/ray{self.ray}/step{self.depth}"


def model_buffers(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of every buffer of ``model`` (BatchNorm statistics), by name."""
    return {name: b.detach().clone() for name, b in model.named_buffers()}


@torch.no_grad()
def load_model_buffers(model: nn.Module, buffers: dict[str, Tensor]) -> None:
    """Copy ``buffers`` (every buffer of ``model``, by name) into ``model``."""
    for name, buffer in model.named_buffers():
        buffer.copy_(buffers[name])


class PointModel(nn.Module):
    """A solution view: loads one point's parameters (N,) and buffers into a scratch copy of the
    model before each forward (all views share that copy; evaluate them one at a time)."""

    def __init__(self, scratch: nn.Module, parameters: Tensor, buffers: dict[str, Tensor]):
        super().__init__()
        self.scratch = scratch
        self._parameters_vector = parameters
        self._buffer_values = buffers

    def forward(self, inputs: Tensor) -> Any:
        load_parameter_vector(self.scratch, self._parameters_vector.to(inputs.device))
        with torch.no_grad():
            for name, buffer in self.scratch.named_buffers():
                if name in self._buffer_values:
                    buffer.copy_(self._buffer_values[name])
        return self.scratch(inputs)


def local_fronts(
    points: Sequence[ExplorationPoint], rays: Sequence[tuple[int, list[int]]], num_tasks: int
) -> list[LocalFront]:
    """One local front per seed point, from the rays grown out of it.

    points: every computed point, the seeds first. rays: (seed, point indices along the ray,
    the seed's first) per ray. With 3 tasks neighbouring rays span triangles.
    """
    seed_count = sum(1 for p in points if p.ray < 0)
    fronts = []
    for seed_point_index, point in enumerate(points[:seed_count]):
        seed_rays = [ray_points for seed, ray_points in rays if seed == point.seed]
        cyclic = num_tasks == 3
        fronts.append(LocalFront(seed_point_index, seed_rays or [[seed_point_index]], cyclic))
    return fronts


def point_coordinates(
    vertices: Sequence[ExplorationPoint], weights: Sequence[float], preference: Tensor
) -> tuple[float, ...]:
    """Coordinates (T,) of a convex combination of ``vertices`` with ``weights``: their min-norm
    weights alpha, combined alike; ``preference`` (T,) when a vertex has no alpha yet."""
    alphas = [v.alpha for v in vertices if v.alpha is not None]
    if len(alphas) < len(vertices):
        return tuple(preference.tolist())
    mixed = torch.zeros(alphas[0].shape, dtype=torch.float64)
    for weight, alpha in zip(weights, alphas, strict=True):
        mixed = mixed + weight * alpha.double().cpu()
    return tuple(float(c) for c in mixed)


def front_solutions(
    points: Sequence[ExplorationPoint],
    rays: Sequence[tuple[int, list[int]]],
    scratch: nn.Module,
    preferences: Tensor,
    samples_per_simplex: int,
) -> Iterator[Solution]:
    """Every computed point, then ``samples_per_simplex`` samples inside each kept simplex of
    the merged fronts (labelled ``front<group>/<w>*<vertex>+...``).

    rays: as in :func:`local_fronts`. preferences: (seeds, T), the coordinates of a seed that
    has no alpha yet (row ``seed``, the last row past the end).
    """

    def preference_of(point: ExplorationPoint) -> Tensor:
        return preferences[min(point.seed, len(preferences) - 1)]

    for point in points:
        yield Solution(
            point.label,
            PointModel(scratch, point.parameters, point.buffers),
            point_coordinates([point], [1.0], preference_of(point)),
        )
    num_tasks = int(preferences.shape[1])
    images = {i: p.image for i, p in enumerate(points) if p.image is not None}
    fronts = local_fronts(points, rays, num_tasks)
    for group, merged in enumerate(merge_local_fronts(fronts, images)):
        for simplex in merged.simplices:
            vertices = [points[i] for i in simplex]
            for weights in simplex_samples(len(simplex), samples_per_simplex):
                parameters = sum(w * v.parameters for w, v in zip(weights, vertices, strict=True))
                label = f"front{group}/" + "+".join(
                    f"{w:.2f}*{v.label}" for w, v in zip(weights, vertices, strict=True)
                )
                yield Solution(
                    label,
                    PointModel(scratch, parameters, vertices[0].buffers),  # type: ignore[arg-type]
                    point_coordinates(vertices, list(weights), preference_of(vertices[0])),
                )
