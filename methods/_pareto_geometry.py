"""Geometry of the Pareto expansion: preference grids, tangent right-hand sides, local fronts.

Pure functions on small tensors (no model, no budget), used by ``pareto_expansion``
(Ma, Du & Matusik, ICML 2020, "Efficient Continuous Pareto Exploration in Multi-Task Learning").

A *local front* is the piece of the Pareto front explored from one seed x*: rays of points
``x*, x_1, x_2, ...`` grown along one tangent right-hand side each, joined into simplices
(segments along each ray; with 3 tasks, also triangles between neighbouring rays, which cover
the 2-D front around x*). Points inside a simplex are convex combinations of its vertices'
parameter vectors: the paper's first-order (linear) parameterisation of the local Pareto set.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


# ---- preferences and tangent right-hand sides ------------------------------------------------
def interior_lattice_size(num_vertices: int, divisions: int) -> int:
    """Number of lattice points of the simplex with step 1/divisions and every coordinate > 0:
    the compositions of ``divisions`` into ``num_vertices`` positive parts, C(d - 1, T - 1)."""
    return math.comb(divisions - 1, num_vertices - 1)


def interior_lattice_point(num_vertices: int, divisions: int, rank: int) -> tuple[int, ...]:
    """The ``rank``-th interior lattice point (counts summing to ``divisions``, each >= 1) in
    lexicographic order, built part by part without enumerating the others.

    Hand-written because itertools enumerates compositions but cannot jump to one: the
    enumeration is (d - 1)^T tuples, 39^40 at 40 tasks. Cost here: O(T * d) binomials.
    """
    if not 0 <= rank < interior_lattice_size(num_vertices, divisions):
        raise ValueError(f"rank {rank} outside the {num_vertices}-vertex, {divisions}-lattice")
    counts: list[int] = []
    remaining = divisions
    for position in range(num_vertices - 1):
        parts_after = num_vertices - position - 1
        value = 1
        while True:  # compositions starting with `value`: those of the rest into parts_after
            block = math.comb(remaining - value - 1, parts_after - 1)
            if rank < block:
                break
            rank -= block
            value += 1
        counts.append(value)
        remaining -= value
    counts.append(remaining)
    return tuple(counts)


def even_interior_lattice(num_vertices: int, count: int) -> tuple[int, list[tuple[int, ...]]]:
    """``count`` interior points of the coarsest simplex lattice that has at least ``count`` of
    them, taken evenly (first to last) from its lexicographic order: (divisions, counts).

    The lattice step 1/divisions starts at 1/num_vertices (whose only interior point is the
    centre, so one point is always the centre) and refines until it has ``count`` points.
    """
    divisions = num_vertices
    while interior_lattice_size(num_vertices, divisions) < count:
        divisions += 1
    size = interior_lattice_size(num_vertices, divisions)
    ranks = [round(i * (size - 1) / max(count - 1, 1)) for i in range(count)]
    return divisions, [interior_lattice_point(num_vertices, divisions, r) for r in ranks]


def preference_grid(num_tasks: int, count: int) -> Tensor:
    """``count`` preference vectors (count, T) spread evenly inside the simplex (0 and 1 excluded).

    Two tasks: ``(i/(count+1), 1 - i/(count+1))``, i = 1..count (the paper's 1/6..5/6 for 5).
    More tasks: the interior points of the coarsest simplex lattice that has at least ``count``
    of them, ``count`` taken evenly from its lexicographic order.
    """
    if num_tasks < 2 or count < 1:
        raise ValueError("preference_grid needs num_tasks >= 2 and count >= 1")
    if num_tasks == 2:
        first = torch.arange(1, count + 1, dtype=torch.float64) / (count + 1)
        return torch.stack([first, 1 - first], dim=1)
    divisions, lattice = even_interior_lattice(num_tasks, count)
    return torch.tensor(lattice, dtype=torch.float64) / divisions


def tangent_codes(num_tasks: int, random_count: int, generator: torch.Generator) -> Tensor:
    """The vectors beta (D, T) whose ``J^T beta`` are the tangent systems' right-hand sides.

    Two tasks: the unit vectors (one ray to each side of the seed). Three: the nonzero binary
    codes except all-ones, in cyclic order around the simplex's centre (so neighbouring rays
    span triangles of the 2-D front). More: ``random_count`` draws of N(0, I) (paper, Sec. 5).
    """
    if num_tasks == 2:
        return torch.eye(2, dtype=torch.float64)
    if num_tasks == 3:
        codes = [c for c in itertools.product((0.0, 1.0), repeat=3) if 0 < sum(c) < 3]
        codes_tensor = torch.tensor(codes, dtype=torch.float64)
        return codes_tensor[_cyclic_order(codes_tensor)]
    return torch.randn(random_count, num_tasks, generator=generator, dtype=torch.float64)


def _cyclic_order(codes: Tensor) -> list[int]:
    """Order of 3-task codes by angle around (1, 1, 1), in the plane orthogonal to it."""
    first = torch.tensor([1.0, -1.0, 0.0], dtype=codes.dtype) / math.sqrt(2)
    second = torch.tensor([1.0, 1.0, -2.0], dtype=codes.dtype) / math.sqrt(6)
    angles = torch.atan2(codes @ second, codes @ first)
    return torch.argsort(angles).tolist()


# ---- local fronts ----------------------------------------------------------------------------
@dataclass
class LocalFront:
    """The rays grown from one seed and the simplices joining them.

    seed: index of the seed point. rays: per tangent code, the point indices along it, the seed
    first. cyclic: whether neighbouring rays (in order, wrapping) span triangles (3 tasks).
    """

    seed: int
    rays: list[list[int]] = field(default_factory=list)
    cyclic: bool = False

    def simplices(self) -> list[tuple[int, ...]]:
        """Segments between consecutive points of each ray; with ``cyclic``, the triangles
        between neighbouring rays at consecutive depths (where both rays reach)."""
        result: list[tuple[int, ...]] = []
        for ray in self.rays:
            result += [(a, b) for a, b in itertools.pairwise(ray)]
        if self.cyclic and len(self.rays) >= 3:
            for index, ray in enumerate(self.rays):
                other = self.rays[(index + 1) % len(self.rays)]
                depth = min(len(ray), len(other))
                for k in range(depth - 1):
                    if k == 0:
                        result.append((ray[0], ray[1], other[1]))
                    else:
                        result.append((ray[k], ray[k + 1], other[k + 1]))
                        result.append((ray[k], other[k], other[k + 1]))
        return result

    def points(self) -> list[int]:
        seen: dict[int, None] = {}
        for ray in self.rays:
            for index in ray:
                seen[index] = None
        return list(seen) or [self.seed]


def dominates(first: Tensor, second: Tensor) -> bool:
    """Pareto dominance for minimised objectives: first <= second everywhere, < somewhere."""
    return bool((first <= second).all() and (first < second).any())


def dominance_matrix(first: Tensor, second: Tensor) -> Tensor:
    """(n, m) bool: entry (i, j) says whether first[i] dominates second[j] (minimised).

    first: (n, T), second: (m, T). One broadcast comparison (n * m * T), no Python loop.
    """
    no_worse = (first[:, None, :] <= second[None, :, :]).all(dim=-1)
    better = (first[:, None, :] < second[None, :, :]).any(dim=-1)
    return no_worse & better


def images_collide(first: Tensor, second: Tensor) -> bool:
    """Whether two local fronts' images (n, T) and (m, T) meet.

    They meet when a point of one dominates a point of the other (they overlap in the
    objective space, one lying behind the other) or when their bounding boxes intersect (their
    images cross or run into each other).
    """
    low_first, high_first = first.min(dim=0).values, first.max(dim=0).values
    low_second, high_second = second.min(dim=0).values, second.max(dim=0).values
    if bool((low_first <= high_second).all() and (low_second <= high_first).all()):
        return True
    return bool(dominance_matrix(first, second).any() or dominance_matrix(second, first).any())


@dataclass
class MergedFront:
    """One continuous front after merging: the local fronts it joins, and the simplices kept.

    simplices: those whose vertices are not all dominated by points of the merged front.
    """

    members: list[int]
    simplices: list[tuple[int, ...]]
    points: list[int]


def merge_local_fronts(fronts: list[LocalFront], images: dict[int, Tensor]) -> list[MergedFront]:
    """Group local fronts whose images collide (transitively) and drop dominated simplices.

    fronts: the local fronts. images: point index -> objective vector (T,) (training losses on
    one fixed probe sample). Within a group, a simplex whose vertices are all dominated by some
    point of the group is dropped: that part of one local front lies behind another's (the
    paper's non-dominance test where local fronts overlap). Points without an image are kept.
    """
    parent = list(range(len(fronts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def image_of(front: LocalFront) -> Tensor | None:
        known = [images[p] for p in front.points() if p in images]
        return torch.stack(known) if known else None

    front_images = [image_of(front) for front in fronts]
    for i, j in itertools.combinations(range(len(fronts)), 2):
        a, b = front_images[i], front_images[j]
        if a is not None and b is not None and images_collide(a, b):
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(fronts)):
        groups.setdefault(root(i), []).append(i)
    merged = []
    for members in groups.values():
        points = list(dict.fromkeys(p for m in members for p in fronts[m].points()))
        with_image = [p for p in points if p in images]
        dominated: set[int] = set()
        if with_image:
            group_images = torch.stack([images[p] for p in with_image])
            behind = dominance_matrix(group_images, group_images).any(dim=0)
            dominated = {
                p for p, is_behind in zip(with_image, behind.tolist(), strict=True) if is_behind
            }
        simplices = [
            simplex
            for m in members
            for simplex in fronts[m].simplices()
            if not all(p in dominated for p in simplex)
        ]
        merged.append(MergedFront(members, simplices, points))
    return merged


def simplex_samples(num_vertices: int, count: int) -> list[tuple[float, ...]]:
    """``count`` barycentric coordinates strictly inside a simplex of ``num_vertices`` vertices.

    Segments: ``k/(count+1)`` for k = 1..count. Triangles: interior points of the coarsest
    lattice with at least ``count`` of them (the centroid first when count = 1).
    """
    if count < 1:
        return []
    if num_vertices == 2:
        return [(1 - k / (count + 1), k / (count + 1)) for k in range(1, count + 1)]
    divisions, lattice = even_interior_lattice(num_vertices, count)
    return [tuple(c / divisions for c in counts) for counts in lattice]
