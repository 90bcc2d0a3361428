"""Points of the probability simplex: the evaluation grid of continuous-front methods."""

from __future__ import annotations

import itertools

import numpy as np


def simplex_lattice(num_tasks: int, divisions: int) -> np.ndarray:
    """Every point of the simplex whose coordinates are multiples of 1/divisions.

    Returns (N, num_tasks), N = C(divisions + num_tasks - 1, num_tasks - 1): 11 points for two
    tasks and 10 divisions (first coordinate ascending), 66 for three (a triangular grid).
    """
    if num_tasks < 1 or divisions < 1:
        raise ValueError(f"need num_tasks >= 1 and divisions >= 1, got {num_tasks}, {divisions}")
    rows = []
    for counts in itertools.product(range(divisions + 1), repeat=num_tasks - 1):
        if sum(counts) <= divisions:
            rows.append((*counts, divisions - sum(counts)))
    return np.asarray(rows, dtype=np.float64) / divisions


def simplex_evaluation_points(
    num_tasks: int, divisions: int = 10, random_points: int = 20, seed: int = 0
) -> np.ndarray:
    """The α grid a continuous front is evaluated on: (N, num_tasks), rows summing to 1.

    Two or three tasks: :func:`simplex_lattice` (11 and 66 points for 10 divisions, as in
    Dimitriadis et al. 2023). More tasks (a lattice grows as divisions^(T-1)): the T vertices,
    the centre, then ``random_points`` uniform (Dirichlet(1)) draws from a fixed ``seed``, so
    every run of a suite is evaluated on the same points.
    """
    if num_tasks <= 3:
        return simplex_lattice(num_tasks, divisions)
    vertices = np.eye(num_tasks)
    centre = np.full((1, num_tasks), 1.0 / num_tasks)
    draws = np.random.default_rng(seed).dirichlet(np.ones(num_tasks), size=random_points)
    return np.concatenate([vertices, centre, draws])
