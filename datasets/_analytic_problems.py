"""The analytic multi-objective problems behind the ``analytic`` dataset, and their true fronts.

Each problem is split the way the harness splits a model (``harness/model.py``):

- ``decision(parameters)``: the *encoder*, an unconstrained map from the trained parameters θ
  (n,) to the problem's decision vector z (n,). The classic problems are box-constrained
  (z ∈ [0, 1]^n); gradient methods train θ ∈ R^n instead, through z_i = sin²(θ_i), which covers
  the box exactly once per period and needs no projection. On the box's faces dz_i/dθ_i = 0, so
  faces are stationary in θ (see ``docs/analytic.md`` for what MGDA does there). Ma, Du &
  Matusik's variant has its own sin/cos map (below); ``quadratic`` is unconstrained (z = θ).
- ``objectives(z)``: the *heads*, parameter-free: z (B, n) -> objective values (B, T), the
  classic formulas on the box.

Fronts are returned as dense samples (N, T), float64, cached per problem; each class states how
dense and what that costs in hypervolume (measured with ``harness.metrics.hypervolume`` against
the closed form, reference point ``reference``, by ``tests/test_analytic_fronts.py``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

CURVE_POINTS = 20_001  # 2-objective fronts: points evenly spaced in arc length
LATTICE_DIVISIONS = 300  # 3-objective fronts: simplex lattice, (H + 1)(H + 2) / 2 = 45,451 points
FINE_FACTOR = 20  # 2-objective fronts: arc length measured on 20× as many points


def sine_squared(parameters: Tensor) -> Tensor:
    """The box map z = sin²(θ): R^n -> [0, 1]^n, element-wise."""
    return torch.sin(parameters) ** 2


def box_start(count: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """θ whose z = sin²(θ) is uniform in [0, 1]^count (global torch RNG): θ = arcsin(√u)."""
    return torch.asin(torch.rand(count, dtype=dtype).sqrt())


def arc_length_samples(curve: Callable[[np.ndarray], np.ndarray], count: int) -> np.ndarray:
    """``count`` points (count, T) of a curve ``curve(s)``, s ∈ [0, 1] -> (len(s), T), evenly
    spaced in arc length: the arc length is measured on ``FINE_FACTOR`` × more points, the
    parameter interpolated at even lengths, and the curve evaluated there (exactly on it)."""
    fine = np.linspace(0.0, 1.0, FINE_FACTOR * count)
    steps = np.linalg.norm(np.diff(curve(fine), axis=0), axis=1)
    length = np.concatenate([[0.0], np.cumsum(steps)])
    return curve(np.interp(np.linspace(0.0, length[-1], count), length, fine))


def simplex_lattice(divisions: int) -> np.ndarray:
    """Every point of the 3-simplex with coordinates in {0, 1/H, …, 1}: ((H+1)(H+2)/2, 3)."""
    first, second = np.meshgrid(np.arange(divisions + 1), np.arange(divisions + 1), indexing="ij")
    keep = first + second <= divisions
    first, second = first[keep], second[keep]
    return np.stack([first, second, divisions - first - second], axis=1) / divisions


@dataclass(frozen=True)
class AnalyticProblem(ABC):
    """One problem: n variables, T objectives, its reference point and true front.

    num_variables: n, the length of θ and z. reference: the hypervolume reference point (T,),
    a little beyond the front's nadir point.
    """

    num_variables: int
    name: ClassVar[str] = ""

    @property
    def num_objectives(self) -> int:
        """T."""
        return 2

    @property
    def reference(self) -> tuple[float, ...]:
        """The hypervolume reference point (T,): 1.1 in every objective (fronts lie in [0, 1])."""
        return (1.1,) * self.num_objectives

    @abstractmethod
    def decision(self, parameters: Tensor) -> Tensor:
        """θ (n,) -> z (n,): the encoder's map (see the module docstring)."""

    @abstractmethod
    def objectives(self, z: Tensor) -> Tensor:
        """z (B, n) -> objective values (B, T), to be minimised."""

    def initial_parameters(self) -> Tensor:
        """A random starting θ (n,), float64, from the global torch RNG: z uniform in the box."""
        return box_start(self.num_variables)

    @abstractmethod
    def _front(self) -> np.ndarray:
        """A dense sample (N, T) of the true Pareto front."""

    def front(self) -> np.ndarray:
        """The dense sample (N, T) of the true Pareto front, float64 (cached; do not modify)."""
        return _cached_front(self)

    def true_hypervolume(self) -> float | None:
        """The hypervolume of the whole true front up to ``reference``, in closed form (None
        where there is none: then the dense sample's hypervolume stands in)."""
        return None


@lru_cache(maxsize=16)
def _cached_front(problem: AnalyticProblem) -> np.ndarray:
    front = problem._front()
    front.setflags(write=False)
    return front


def _two_objective_hypervolume(area_under_front: float, reference: tuple[float, ...]) -> float:
    """HV of a front f2 = h(f1), f1 ∈ [0, 1], h decreasing from 1 to 0, up to r ≥ (1, 1):
    the area of [0, 1] × [0, r2] above h, plus the strip (1, r1] × [0, r2]."""
    first, second = reference
    return (second - area_under_front) + (first - 1.0) * second


class _Zdt(AnalyticProblem):
    """ZDT (Zitzler, Deb & Thiele 2000) on z = sin²(θ): f1 = z1, g = 1 + 9/(n−1) Σ_{i≥2} z_i,
    f2 = g · shape(f1 / g). The Pareto set is z_i = 0 for i ≥ 2 (g = 1), any z1."""

    def decision(self, parameters: Tensor) -> Tensor:
        return sine_squared(parameters)

    def _g(self, z: Tensor) -> Tensor:
        return 1.0 + 9.0 / (self.num_variables - 1) * z[:, 1:].sum(dim=1)


@dataclass(frozen=True)
class Zdt1(_Zdt):
    """ZDT1: f2 = g (1 − √(f1/g)). Convex front f2 = 1 − √f1, f1 ∈ [0, 1]; true HV at
    (1.1, 1.1) = 0.21 + 2/3. Sample: 20,001 points evenly spaced in arc length (gap 7.4e-5,
    so a distance to it overstates the distance to the front by ≤ 3.7e-5); its HV falls short of
    the true HV by 2.3e-5 (relative 2.6e-5)."""

    name: ClassVar[str] = "zdt1"

    def objectives(self, z: Tensor) -> Tensor:
        first, g = z[:, 0], self._g(z)
        return torch.stack([first, g - torch.sqrt(first * g)], dim=1)

    def _front(self) -> np.ndarray:
        # parameter √f1: the curve is steep at f1 = 0
        return arc_length_samples(lambda root: np.stack([root**2, 1.0 - root], 1), CURVE_POINTS)

    def true_hypervolume(self) -> float:
        return _two_objective_hypervolume(1.0 / 3.0, self.reference)


@dataclass(frozen=True)
class Zdt2(_Zdt):
    """ZDT2: f2 = g (1 − (f1/g)²). Non-convex front f2 = 1 − f1², f1 ∈ [0, 1]; true HV at
    (1.1, 1.1) = 0.21 + 1/3. Sample: 20,001 points evenly spaced in arc length (gap 7.4e-5,
    distances overstated by ≤ 3.7e-5); its HV falls short of the true HV by 2.3e-5 (relative
    4.2e-5)."""

    name: ClassVar[str] = "zdt2"

    def objectives(self, z: Tensor) -> Tensor:
        first, g = z[:, 0], self._g(z)
        return torch.stack([first, g - first**2 / g], dim=1)

    def _front(self) -> np.ndarray:
        return arc_length_samples(lambda first: np.stack([first, 1.0 - first**2], 1), CURVE_POINTS)

    def true_hypervolume(self) -> float:
        return _two_objective_hypervolume(2.0 / 3.0, self.reference)


@dataclass(frozen=True)
class Zdt2Ma2020(Zdt2):
    """The ZDT2 variant of Ma, Du & Matusik, "Efficient Continuous Pareto Exploration in
    Multi-Task Learning", ICML 2020 (supplement): ZDT2 with n = 3 on the box variables
    z1 = ½ sin(θ1 + s) + ½, z2 = z3 = ½ cos(s) + ½, s = θ2² + θ3² (their unconstrained map).
    Front and sample as ``zdt2``; Pareto set s = π (mod 2π), any θ1. Start: θ uniform in
    [−π, π]³."""

    name: ClassVar[str] = "zdt2_ma2020"

    def decision(self, parameters: Tensor) -> Tensor:
        radius_squared = parameters[1] ** 2 + parameters[2] ** 2
        first = 0.5 * torch.sin(parameters[0] + radius_squared) + 0.5
        rest = 0.5 * torch.cos(radius_squared) + 0.5
        return torch.stack([first, rest, rest])

    def initial_parameters(self) -> Tensor:
        return (2.0 * torch.rand(3, dtype=torch.float64) - 1.0) * math.pi


@dataclass(frozen=True)
class Dtlz2(AnalyticProblem):
    """DTLZ2 with 3 objectives (Deb, Thiele, Laumanns & Zitzler 2002) on z = sin²(θ):
    g = Σ_{i≥3} (z_i − ½)², f1 = (1+g) cos(πz1/2) cos(πz2/2), f2 = (1+g) cos(πz1/2) sin(πz2/2),
    f3 = (1+g) sin(πz1/2). Non-convex front: the unit sphere's positive octant; true HV at
    (1.1, 1.1, 1.1) = 1.1³ − π/6. Sample: the 45,451 points of the simplex lattice with
    H = 300, projected radially onto the sphere (every point of the octant within 4.7e-3 of
    one, so distances to the sample overstate those to the front by up to that); its HV falls
    short of the true HV by 2.6e-3 (relative 3.3e-3)."""

    name: ClassVar[str] = "dtlz2"

    @property
    def num_objectives(self) -> int:
        return 3

    def decision(self, parameters: Tensor) -> Tensor:
        return sine_squared(parameters)

    def objectives(self, z: Tensor) -> Tensor:
        radius = 1.0 + ((z[:, 2:] - 0.5) ** 2).sum(dim=1)
        polar, azimuth = 0.5 * math.pi * z[:, 0], 0.5 * math.pi * z[:, 1]
        return torch.stack(
            [
                radius * torch.cos(polar) * torch.cos(azimuth),
                radius * torch.cos(polar) * torch.sin(azimuth),
                radius * torch.sin(polar),
            ],
            dim=1,
        )

    def _front(self) -> np.ndarray:
        lattice = simplex_lattice(LATTICE_DIVISIONS)
        return lattice / np.linalg.norm(lattice, axis=1, keepdims=True)

    def true_hypervolume(self) -> float:
        return float(np.prod(self.reference)) - math.pi / 6.0


@dataclass(frozen=True)
class Quadratic(AnalyticProblem):
    """Convex quadratics f_t(z) = ||z − a_t||², z = θ ∈ R^n (no constraint), anchors
    a_t = e_t / √2 (so ||a_s − a_t|| = 1). The Pareto set is the anchors' convex hull, the front
    its image: for T = 2, (s², (1−s)²), s ∈ [0, 1] (√f1 + √f2 = 1; true HV at (1.1, 1.1) =
    1.21 − 1/6); for T = 3, f_t(λ) = ½ ||λ − e_t||², λ on the simplex. Start: θ ~ N(0, I).
    Samples: T = 2, 20,001 points evenly spaced in arc length (gap 8.1e-5; HV short by 1.8e-5,
    relative 1.7e-5); T = 3, the image of the H = 300 simplex lattice, 45,451 points (every
    front point within 3.8e-3 of one; HV short by 1.2e-3 of a 4× denser lattice's, relative
    1.3e-3)."""

    num_tasks: int = 2
    name: ClassVar[str] = "quadratic"

    @property
    def num_objectives(self) -> int:
        return self.num_tasks

    @cached_property
    def anchors(self) -> Tensor:
        """a_t (T, n), float64 (built once)."""
        return torch.eye(self.num_tasks, self.num_variables, dtype=torch.float64) / math.sqrt(2)

    def decision(self, parameters: Tensor) -> Tensor:
        return parameters

    def objectives(self, z: Tensor) -> Tensor:
        anchors = self.anchors.to(z)
        return ((z[:, None, :] - anchors[None]) ** 2).sum(dim=-1)

    def initial_parameters(self) -> Tensor:
        return torch.randn(self.num_variables, dtype=torch.float64)

    def _front(self) -> np.ndarray:
        if self.num_tasks == 2:
            return arc_length_samples(
                lambda share: np.stack([share**2, (1.0 - share) ** 2], 1), CURVE_POINTS
            )
        lattice = simplex_lattice(LATTICE_DIVISIONS)
        return 0.5 * ((lattice[:, None, :] - np.eye(3)[None]) ** 2).sum(axis=-1)

    def true_hypervolume(self) -> float | None:
        if self.num_tasks == 2:
            return _two_objective_hypervolume(1.0 / 6.0, self.reference)
        return None


PROBLEMS: dict[str, type[AnalyticProblem]] = {
    problem.name: problem for problem in (Zdt2Ma2020, Zdt1, Zdt2, Dtlz2, Quadratic)
}
DEFAULT_VARIABLES = {"zdt2_ma2020": 3, "zdt1": 30, "zdt2": 30, "dtlz2": 12, "quadratic": 10}
