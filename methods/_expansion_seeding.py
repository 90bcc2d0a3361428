"""The seeding phase of ``pareto_expansion``: Pareto-stationary points to expand from.

Seeds come from an even grid of preferences that excludes 0 and 1
(:func:`~mtlbench.methods._pareto_geometry.preference_grid`), each trained by the weighted
Chebyshev scalarization (default, :func:`chebyshev_weights`), by the weighted sum (Ma, Du &
Matusik 2020, Sec. 5: it cannot reach a non-convex part of the front, where its seeds collapse
onto the ends), or by MGDA descent (Sener & Koltun 2018). Under a budget, preference seeds share
a trunk trained with uniform preference (``trunk_fraction`` of the seeding) and fine-tune from
it, with the trunk's optimizer state; the paper trains each seed from scratch
(``trunk_fraction: 0``). With MGDA, seeds after the first restart from a re-initialisation of
every module that has ``reset_parameters``.

Stages: 0 is the trunk (skipped when it has no share), stage i >= 1 trains seed i - 1. Stage i
ends once the seeding has spent ``trunk + (1 - trunk) i / num_seeds`` of its share of the
budget (or of ``seed_steps``).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from mtlbench.harness.gradients import Batch, GradientEngine
from mtlbench.harness.hvp import load_parameter_vector, parameter_vector
from mtlbench.harness.method import Solution, StepLog, TrainingConfig, make_optimizer
from mtlbench.methods._expansion_front import (
    ExplorationPoint,
    PointModel,
    load_model_buffers,
    model_buffers,
)
from mtlbench.methods._expansion_tangents import precise_min_norm_weights
from mtlbench.methods._pareto_geometry import preference_grid
from torch import Tensor, nn

if TYPE_CHECKING:
    from mtlbench.methods.pareto_expansion import ParetoExpansionParams

CHEBYSHEV_SMOOTHING = 0.02


def chebyshev_weights(preference: Tensor, task_losses: Tensor) -> Tensor:
    """Weights (T,) on the simplex of one step on the smoothed weighted Chebyshev scalarization
    ``mu log sum_t exp(p_t L_t / mu)`` (ideal point 0: losses are non-negative).

    Its gradient is ``sum_t softmax(p L / mu)_t p_t grad L_t``; the weights are those
    coefficients, normalised to sum to 1. mu = ``CHEBYSHEV_SMOOTHING`` x max_t |p_t L_t|, so the
    smoothing is relative to the losses' scale (a weighted loss 10% above another's takes
    98.9% of the softmax). Its minimisers satisfy p_t L_t ~ equal: every point of a front,
    convex or not, is one of them (Miettinen 1999, Thm 3.4.5), where a weighted sum only reaches
    the convex hull's vertices (on a concave front: its two ends).
    """
    preference = preference.to(task_losses)
    scaled = preference * task_losses
    smoothing = CHEBYSHEV_SMOOTHING * scaled.abs().max().clamp_min(torch.finfo(scaled.dtype).tiny)
    coefficients = torch.softmax(scaled / smoothing, dim=0) * preference
    return coefficients / coefficients.sum()


class Seeding:
    """The seeding schedule and its state: the stage in progress, steps done, the trunk.

    preferences: (num_seeds, T) float32, seed i's preference. trunk: parameters (N,) and
    buffers where preference seeds start (the initial ones until the trunk is trained);
    trunk_optimizer: the optimizer's state at the trunk's end (None before).
    """

    def __init__(self, params: ParetoExpansionParams, num_tasks: int, model: nn.Module):
        self.params = params
        self.num_tasks = num_tasks
        self.preferences = preference_grid(num_tasks, params.num_seeds).float()
        self.stage = 0 if self.trunk_share > 0 else 1
        self.steps_done = 0
        self.trunk: tuple[Tensor, dict[str, Tensor]] = (
            parameter_vector(model),
            model_buffers(model),
        )
        self.trunk_optimizer: dict[str, Any] | None = None

    @property
    def trunk_share(self) -> float:
        """The trunk's share of the seeding (none with MGDA seeds)."""
        return self.params.trunk_fraction if self.params.seeding != "mgda" else 0.0

    def stage_end(self, stage: int) -> float:
        """Cumulative share of the seeding phase at the end of ``stage`` (0: the trunk)."""
        return self.trunk_share + (1 - self.trunk_share) * stage / self.params.num_seeds

    def stage_finished(self, engine: GradientEngine) -> bool:
        end = self.stage_end(self.stage)
        if self.params.seed_steps is not None:
            return self.steps_done >= round(self.params.seed_steps * end)
        return engine.budget.fraction_spent >= self.params.seed_budget_fraction * end

    def stage_weights(self) -> Tensor:
        """The stage's preference (T,): uniform for the trunk."""
        if self.stage == 0:
            return torch.full((self.num_tasks,), 1.0 / self.num_tasks)
        return self.preferences[self.stage - 1]

    def step(
        self, optimizer: torch.optim.Optimizer, batch: Batch, engine: GradientEngine
    ) -> StepLog:
        """One optimizer step of the stage's scalarization (or of MGDA's direction)."""
        optimizer.zero_grad(set_to_none=True)
        state = engine.forward(batch)
        if self.params.seeding == "weighted_sum":
            weights = self.stage_weights().to(state.task_losses.device)
            engine.backward(state, weights)
        elif self.params.seeding == "chebyshev":
            weights = chebyshev_weights(self.stage_weights(), state.task_losses.detach())
            engine.backward(state, weights)
        else:
            jacobian = engine.shared_jacobian(state)
            weights = precise_min_norm_weights(jacobian @ jacobian.T).to(jacobian)
            ones = torch.ones_like(weights)
            engine.apply_shared_direction(state, weights @ jacobian, ones)
        optimizer.step()
        self.steps_done += 1
        return {"task_losses": state.task_losses.detach(), "weights": weights.float()}

    def finish_stage(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, training: TrainingConfig
    ) -> tuple[ExplorationPoint | None, torch.optim.Optimizer | None]:
        """Close the stage just trained and set ``model`` up for the next one.

        Returns the seed point the stage produced (None for the trunk) and the optimizer of the
        next stage (None once every seed is trained: the seeding is over).
        """
        seed_point = None
        if self.stage == 0:
            self.trunk = (parameter_vector(model), model_buffers(model))
            self.trunk_optimizer = copy.deepcopy(optimizer.state_dict())
        else:
            seed = self.stage - 1
            seed_point = ExplorationPoint(parameter_vector(model), model_buffers(model), seed)
        self.stage += 1
        if self.stage > self.params.num_seeds:
            return seed_point, None
        if self.params.seeding == "mgda" and self.stage > 1:
            for module in model.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
            return seed_point, make_optimizer(model.parameters(), training)
        # from the trunk, with the trunk's optimizer state (its moments are warm)
        parameters, buffers = self.trunk
        load_parameter_vector(model, parameters)
        load_model_buffers(model, buffers)
        next_optimizer = make_optimizer(model.parameters(), training)
        if self.trunk_optimizer is not None:
            next_optimizer.load_state_dict(copy.deepcopy(self.trunk_optimizer))
        return seed_point, next_optimizer

    def stage_solution(self, model: nn.Module, scratch: nn.Module) -> Solution:
        """The stage in progress as a solution (training may end before it is stored)."""
        label = "trunk" if self.stage == 0 else f"seed{self.stage - 1}"
        return Solution(
            label,
            PointModel(scratch, parameter_vector(model), model_buffers(model)),
            tuple(float(w) for w in self.stage_weights()),
        )

    # ---- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "seeding_steps_done": self.steps_done,
            "trunk": copy.deepcopy(self.trunk),
            "trunk_optimizer": copy.deepcopy(self.trunk_optimizer),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage = state["stage"]
        self.steps_done = state["seeding_steps_done"]
        self.trunk = copy.deepcopy(state["trunk"])
        self.trunk_optimizer = copy.deepcopy(state["trunk_optimizer"])
