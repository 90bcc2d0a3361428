"""Weightings: methods whose whole decision is a vector of task weights (T,).

Most gradient-balancing methods only decide how much of each task's gradient goes into the
update. This module gives them one contract and one generic step each, so a new method is the
rule that maps what the engine already computed to weights, and nothing else:

- :class:`GramWeighting`: ``(Gram (T, T) of the shared-parameter gradients, task losses (T,),
  own state) -> weights (T,)``. The step asks the engine for the Gram (``engine.shared_gram``),
  then for the combination sum_t a_t g_t (``engine.shared_combination``: formed where the
  per-task gradients lie, never by another encoder pass) and writes it as the shared gradient;
  heads follow their own task's gradient unless the weighting says otherwise
  (``head_weights``). Every engine serves these requests (``loop``, ``batched``, ``ray_sharded``
  without gathering the (T, P) Jacobian, ``deepspeed`` at ZeRO 0-2), so every Gram weighting runs
  on every engine. Cost: T encoder backward passes (the Jacobian), whatever the rule.
- :class:`LossWeighting`: ``(task losses (T,), own state) -> weights (T,)``, then one backward
  of sum_t w_t L_t: about one EW step.

Scale convention (one for every method, so one learning rate compares them): weights are on the
scale of a *mean* of task gradients, i.e. equal weighting is w_t = 1/T. Methods whose paper
sums task gradients (PCGrad, GradVac, Aligned-MTL) are divided by T; each docstring says how its
weights relate to the paper's. Methods whose scale is fixed by their own equation (Nash-MTL,
FairGrad, UW) keep it.

State: a weighting's own state (EMAs, previous weights, random generators) goes through
``weighting_state`` / ``load_weighting_state`` and is saved with the run's checkpoints.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
from mtlbench.harness.divergence import NonFiniteGradients
from mtlbench.harness.gradients import Batch, GradientEngine, StepState
from mtlbench.harness.method import Method, ParamsT, StepLog
from torch import Tensor


def seeded_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A generator of the method's own, seeded from the global torch RNG once (at construction).

    Random choices a method makes (PCGrad's order, RLW's draws) come from it, so they do not
    depend on how many random numbers the engine draws (dropout replays, actors) and they
    resume exactly from a checkpoint (its state is part of ``weighting_state``).
    """
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator(device=device).manual_seed(seed)


class GramWeighting(Method[ParamsT]):
    """Base of the weightings that decide from the Gram matrix of the shared gradients.

    Subclasses implement :meth:`weights`; override :meth:`head_weights` for a method whose heads
    are not updated with their own task's gradient (Nash-MTL backpropagates sum_t a_t L_t through
    the heads too). ``step`` logs ``task_losses`` (T,), ``weights`` (T,) and ``direction_norm``
    (||sum_t a_t g_t||, from the Gram: sqrt(a^T G a)).
    """

    produces_weights = True
    consumes: ClassVar[str] = "Gram (T×T) of shared gradients"
    default_engine: ClassVar[str] = "loop"

    @abstractmethod
    def weights(self, gram: Tensor, task_losses: Tensor) -> Tensor:
        """Task weights (T,) from the Gram (T, T) of the shared gradients and the losses (T,).

        ``gram`` may hold zero rows (a task whose gradient vanished), be rank-deficient, and
        range from 1e-8 to 1e8 in scale; the weights must stay finite. Both inputs are detached.
        """

    def head_weights(self, weights: Tensor) -> Tensor:
        """Weights (T,) of the task losses backpropagated into the heads: each head its own."""
        return torch.ones_like(weights)

    # ---- what an engine-level variant (MGDA-UB) changes ------------------------------------
    def task_gram(self, state: StepState, engine: GradientEngine) -> Tensor:
        """The Gram (T, T) the weights are decided from: the shared Jacobian's (J Jᵀ).

        Local engines form it from J; ``ray_sharded`` from parameter shards, never gathering J.
        """
        return engine.shared_gram(state)

    def apply(
        self, state: StepState, engine: GradientEngine, weights: Tensor, head_weights: Tensor
    ) -> None:
        """Write sum_t a_t g_t (from the per-task gradients in hand) and the heads' gradients."""
        engine.apply_shared_direction(
            state, engine.shared_combination(state, weights), head_weights
        )

    # ---- the step --------------------------------------------------------------------------
    def step(self, batch: Batch, engine: GradientEngine) -> StepLog:
        self.optimizer.zero_grad(set_to_none=True)
        state = engine.forward(batch)
        gram = self.task_gram(state, engine)
        if not bool(torch.isfinite(gram).all()):  # no solver is asked to weigh inf/NaN gradients
            raise NonFiniteGradients("non-finite task gradients: their Gram holds inf or NaN")
        task_losses = state.task_losses.detach()
        weights = self.weights(gram.detach(), task_losses).to(task_losses)
        self.apply(state, engine, weights, self.head_weights(weights).to(task_losses))
        self.optimizer.step()
        gram = gram.to(weights)
        direction_norm = (weights @ gram @ weights).clamp_min(0).sqrt()
        return {"task_losses": task_losses, "weights": weights, "direction_norm": direction_norm}


class LossWeighting(Method[ParamsT]):
    """Base of the weightings that decide from the task losses alone: one backward of
    sum_t w_t L_t per step (heads and shared parameters alike), about one EW step.

    Subclasses implement :meth:`weights`; :meth:`after_backward` lets a method update what it
    learns from the step (UW's log-variances). ``step`` logs ``task_losses`` and ``weights``.
    """

    produces_weights = True
    consumes: ClassVar[str] = "task losses"
    default_engine: ClassVar[str] = "loop"

    @abstractmethod
    def weights(self, task_losses: Tensor) -> Tensor:
        """Task weights (T,) from this step's losses (T,), detached."""

    def after_backward(self, task_losses: Tensor, weights: Tensor) -> None:
        """Called after the weighted backward, before the optimizer step (default: nothing)."""

    def step(self, batch: Batch, engine: GradientEngine) -> StepLog:
        self.optimizer.zero_grad(set_to_none=True)
        state = engine.forward(batch)
        task_losses = state.task_losses.detach()
        weights = self.weights(task_losses).to(task_losses)
        engine.backward(state, weights)
        self.after_backward(task_losses, weights)
        self.optimizer.step()
        return {"task_losses": task_losses, "weights": weights}


def as_state(generator: torch.Generator | None) -> Any:
    """A generator's state for ``weighting_state`` (None stays None)."""
    return None if generator is None else generator.get_state()
