"""``pareto_expansion``: Hessian-free continuous Pareto exploration.

Ma, Du & Matusik, ICML 2020, "Efficient Continuous Pareto Exploration in Multi-Task Learning"
(reference code mit-gfx/ContinuousParetoMTL). The parameters x are *all* the model's trainable
parameters (encoder and heads, N of them), as in the paper.

1. **Seeds** (a ``seed_budget_fraction`` of the budget, or ``seed_steps`` steps in all):
   Pareto-stationary points reached by weighted-sum training from an even grid of preferences
   that excludes 0 and 1 (paper, Sec. 5), or by MGDA descent (Sener & Koltun 2018; weights from
   ``min_norm_weights``). Under a budget, weighted-sum seeds share a trunk trained with uniform
   weights (``trunk_fraction`` of the seeding) and fine-tune from it; the paper trains each
   seed from scratch (``trunk_fraction: 0``). With MGDA, seeds after the first restart from a
   re-initialisation of every module that has ``reset_parameters``.
2. **Tangents**: at a point x with min-norm weights alpha (sum_t alpha_t grad f_t ~ 0), solve
   ``(sum_t alpha_t H_t + damping I) v = J^T beta`` by MINRES on Hessian-vector products (paper,
   Eq. 6 and Alg. 1), never forming a Hessian; beta = unit vectors (2 tasks), nonzero binary
   codes except all-ones (3), N(0, I) draws (more).
3. **Expansion**: ``x <- x - step_size * v / ||v||``, then optionally ``correction_steps`` MGDA
   steps with backtracking back to stationarity (the paper corrects in its toy, not in deep
   runs); repeated along each ray, rays taking turns (breadth first), until the budget is spent.
   A ray stops at the front's edge (a weight alpha_t below ``alpha_floor``), where the image
   folds back (consecutive image steps point against each other), where a new point is dominated
   by the one it came from, or after ``steps_per_direction`` steps.
4. **Continuous local fronts**: the points of each seed's rays are joined into simplices
   (segments along rays; with 3 tasks, triangles between neighbouring rays), and points inside a
   simplex are convex combinations of its vertices' parameters: a first-order parameterisation
   of the local Pareto set. Local fronts whose images (training losses on one probe sample)
   collide are merged; simplices lying wholly behind the merged front are dropped.
   :meth:`solutions` yields every computed point, then ``samples_per_simplex`` samples from each
   kept simplex; coordinates are the min-norm weights alpha, interpolated inside simplices.

J and the HVPs use ``sample_size`` training samples (consecutive batches, gathered over steps
that then do no other work), with the model in eval mode (no dropout draws: the system is one
deterministic function). Every pass is charged; an HVP at its cost measured by FlopCounterMode
(see ``harness/hvp.py``). When every ray has stopped before the budget ends, the method raises
:class:`ExplorationFinished` (a ``BudgetExhausted``), which ends training cleanly.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from mtlbench.harness.budget import BudgetExhausted
from mtlbench.harness.gradients import Batch, GradientEngine
from mtlbench.harness.hvp import (
    HVP_VARIANTS,
    HvpVariant,
    choose_hvp_variant,
    full_jacobian,
    hessian_operator,
    load_parameter_vector,
    parameter_vector,
    task_losses_at,
)
from mtlbench.harness.method import Method, MethodParams, Solution, StepLog, make_optimizer
from mtlbench.harness.registry import register_method
from mtlbench.harness.tasks import TaskSet
from mtlbench.methods._minres import MinresResult, minres
from mtlbench.methods._pareto_geometry import (
    LocalFront,
    dominates,
    merge_local_fronts,
    preference_grid,
    simplex_samples,
    tangent_codes,
)
from mtlbench.methods.min_norm import min_norm_weights, two_vector_weight
from pydantic import Field
from torch import Tensor, nn


def precise_min_norm_weights(gram: Tensor, polish_iterations: int = 10) -> Tensor:
    """``min_norm_weights(gram)`` polished by Frank-Wolfe steps in float64: (T,) float64.

    ``min_norm_weights`` returns float32 weights; near a stationary point the min-norm element
    ``J^T alpha`` is far smaller than the rows of J, so a float32 alpha can leave it pointing
    uphill for one task and stall the correction (measured on the ZDT2 toy: residual stuck at
    ~2e-4). Each step here is the same exact line search toward the best vertex. With two tasks
    the exact two-vector rule (Sener & Koltun 2018, Alg. 1) is the whole solve.
    """
    gram = gram.to(torch.float64)
    if gram.shape[0] == 2:
        gamma = two_vector_weight(gram[0, 0], gram[0, 1], gram[1, 1])
        return torch.stack([gamma, 1 - gamma])
    alpha = min_norm_weights(gram).to(torch.float64)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    for _ in range(polish_iterations):
        gram_alpha = gram @ alpha
        vertex = torch.argmin(gram_alpha)
        gamma = two_vector_weight(alpha @ gram_alpha, gram_alpha[vertex], gram[vertex, vertex])
        alpha = gamma * alpha + (1 - gamma) * eye[vertex]
    return alpha


class ExplorationFinished(BudgetExhausted):
    """Every ray has stopped: nothing is left to explore, so training ends (budget not spent)."""

    stop_reason = "exploration_finished"


class ParetoExpansionParams(MethodParams):
    """Parameters (defaults follow the paper's MultiMNIST run where it states them).

    seeding: ``weighted_sum`` (preference grid) or ``mgda``. num_seeds: seed points.
    seed_budget_fraction: share of the budget spent on seeding; the rest goes to the expansion.
    trunk_fraction: share of the seeding spent on a trunk trained with uniform weights, from
        which every weighted-sum seed then fine-tunes with its preference (the rest is split
        evenly among the seeds; 0: every seed trains from the initial parameters, as in the
        paper). seed_steps: if set, the seeding lasts this many steps in all, divided the same
        way, instead of a budget share (for toys whose FLOPs the counter does not see).
    damping: lambda added to the Hessian's diagonal. minres_max_iterations / minres_tolerance:
        MINRES iterations and relative residual target per tangent solve. minres_check_every:
        iterations between reads of MINRES's stopping test (its only host synchronisations).
    sample_size: training samples for J and the HVPs of one expansion step (None: one batch).
    step_size: length of one expansion step ``s`` in parameter space (the direction is unit).
    steps_per_direction: most expansion steps along one ray. random_directions: rays per seed
        beyond 3 tasks. alpha_floor: a point with a weight below it is on the front's edge.
    correction_steps: MGDA steps after each expansion step (0: none, as in the paper's deep
        runs); correction_lr: their first trial step (halved until no task loss rises);
        correction_tolerance: relative KKT residual at which they stop early.
    hvp_variant: ``auto`` (timed per model, cached) or a fixed one (see ``harness/hvp.py``).
    samples_per_simplex: points sampled inside each simplex of the continuous front.
    """

    seeding: Literal["weighted_sum", "mgda"] = "weighted_sum"
    num_seeds: int = Field(3, ge=1, le=64)
    seed_budget_fraction: float = Field(0.8, gt=0.0, lt=1.0)
    trunk_fraction: float = Field(0.7, ge=0.0, lt=1.0)
    seed_steps: int | None = Field(None, ge=1)
    damping: float = Field(0.1, ge=0.0)
    minres_max_iterations: int = Field(50, ge=1)
    minres_tolerance: float = Field(1e-5, gt=0.0, lt=1.0)
    minres_check_every: int = Field(5, ge=1)
    sample_size: int | None = Field(None, ge=1)
    step_size: float = Field(0.1, gt=0.0)
    steps_per_direction: int = Field(10, ge=1)
    random_directions: int = Field(4, ge=1)
    alpha_floor: float = Field(1e-3, ge=0.0, lt=0.5)
    correction_steps: int = Field(0, ge=0)
    correction_lr: float = Field(1.0, gt=0.0)
    correction_tolerance: float = Field(1e-6, ge=0.0)
    hvp_variant: Literal["auto", "double_backward", "vjp_grad", "jvp_grad"] = "auto"
    samples_per_simplex: int = Field(3, ge=0)


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


@dataclass
class SolveReport:
    """One tangent solve: where, MINRES's iterations and relative residuals, products used."""

    seed: int
    ray: int
    depth: int
    iterations: int
    estimated_residual: float
    true_residual: float
    converged: bool
    products: int
    kkt_residual: float


@dataclass
class _Ray:
    seed: int
    index: int
    code: Tensor
    points: list[int] = field(default_factory=list)
    active: bool = True
    stop_reason: str = ""


class _PointModel(nn.Module):
    """A solution view: loads one point's parameters and buffers into a scratch copy of the
    model before each forward (all views share that copy; evaluate them one at a time)."""

    def __init__(self, scratch: nn.Module, parameters: Tensor, buffers: dict[str, Tensor]):
        super().__init__()
        self.scratch = scratch
        self._parameters_vector = parameters
        self._buffer_values = buffers

    def forward(self, inputs: Tensor):
        load_parameter_vector(self.scratch, self._parameters_vector.to(inputs.device))
        with torch.no_grad():
            for name, buffer in self.scratch.named_buffers():
                if name in self._buffer_values:
                    buffer.copy_(self._buffer_values[name])
        return self.scratch(inputs)


class _EvalMode:
    """Context: the model in eval mode (no dropout draws, fixed BatchNorm statistics)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


@register_method("pareto_expansion")
class ParetoExpansion(Method[ParetoExpansionParams]):
    Params = ParetoExpansionParams
    produces_weights = True
    weights_on_simplex = True
    consumes = "shared Jacobian (min-norm weights) and Hessian-vector products"
    cost = "seeds as ew; each tangent solve ≈ MINRES iterations × 1 HVP"
    paper = "Ma, Du & Matusik, ICML 2020"
    # each seed's fine-tune starts a fresh optimizer (from the trunk's state), which DeepSpeed's
    # engine cannot re-wrap: its ZeRO optimizer is created once, with the model
    engines = ("loop", "batched", "ray_sharded")

    def __init__(self, params: ParetoExpansionParams, model, taskset: TaskSet, training):
        super().__init__(params, model, taskset, training)
        self.check(params, taskset)
        self.num_tasks = len(taskset)
        self.preferences = preference_grid(self.num_tasks, params.num_seeds).float()
        self.generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
        self.codes = tangent_codes(self.num_tasks, params.random_directions, self.generator)
        self.phase = "seeding"
        # stage 0: the shared trunk (skipped when it has no share); stage i >= 1: seed i - 1
        self.stage = 0 if self._trunk_share > 0 else 1
        self.seeding_steps_done = 0
        # where seeds start: the trunk (weighted sum) or the initial parameters
        self.trunk: tuple[Tensor, dict[str, Tensor]] = (parameter_vector(model), self._buffers())
        self.trunk_optimizer: dict[str, Any] | None = None
        self.points: list[ExplorationPoint] = []
        self.rays: list[_Ray] = []
        self.queue: deque[int] = deque()
        self.pending: list[Batch] = []
        self.probe: Batch | None = None
        self.reports: list[SolveReport] = []
        self.hvp_variant: HvpVariant | None = (
            None if params.hvp_variant == "auto" else params.hvp_variant
        )
        self._scratch: nn.Module | None = None

    @classmethod
    def check(cls, params: ParetoExpansionParams, taskset: TaskSet) -> None:
        if len(taskset) < 2:
            raise ValueError("pareto_expansion needs at least 2 tasks")

    # ---- the step ------------------------------------------------------------------------------
    def step(self, batch: Batch, engine: GradientEngine) -> StepLog:
        if self.phase == "seeding":
            log = self._seed_step(batch, engine)
            self.seeding_steps_done += 1
            while self.phase == "seeding" and self._stage_finished(engine):
                self._finish_stage()
            return log
        return self._expansion_step(batch, engine)

    # ---- seeding -------------------------------------------------------------------------------
    @property
    def _trunk_share(self) -> float:
        return self.params.trunk_fraction if self.params.seeding == "weighted_sum" else 0.0

    def _stage_end(self, stage: int) -> float:
        """Cumulative share of the seeding phase at the end of ``stage`` (0: the trunk)."""
        return self._trunk_share + (1 - self._trunk_share) * stage / self.params.num_seeds

    def _stage_finished(self, engine: GradientEngine) -> bool:
        end = self._stage_end(self.stage)
        if self.params.seed_steps is not None:
            return self.seeding_steps_done >= round(self.params.seed_steps * end)
        return engine.budget.fraction_spent >= self.params.seed_budget_fraction * end

    def _stage_weights(self) -> Tensor:
        if self.stage == 0:
            return torch.full((self.num_tasks,), 1.0 / self.num_tasks)
        return self.preferences[self.stage - 1]

    def _seed_step(self, batch: Batch, engine: GradientEngine) -> StepLog:
        self.optimizer.zero_grad(set_to_none=True)
        state = engine.forward(batch)
        if self.params.seeding == "weighted_sum":
            weights = self._stage_weights().to(state.task_losses.device)
            engine.backward(state, weights)
        else:
            jacobian = engine.shared_jacobian(state)
            weights = precise_min_norm_weights(jacobian @ jacobian.T).to(jacobian)
            ones = torch.ones_like(weights)
            engine.apply_shared_direction(state, weights @ jacobian, ones)
        self.optimizer.step()
        return {"task_losses": state.task_losses.detach(), "weights": weights.float()}

    def _finish_stage(self) -> None:
        """Store the seed just trained (stage >= 1) and set up the next stage's start."""
        if self.stage == 0:
            self.trunk = (parameter_vector(self.model), self._buffers())
            self.trunk_optimizer = copy.deepcopy(self.optimizer.state_dict())
        else:
            seed = self.stage - 1
            self.points.append(
                ExplorationPoint(parameter_vector(self.model), self._buffers(), seed)
            )
        self.stage += 1
        if self.stage > self.params.num_seeds:
            self.phase = "expansion"
            return
        if self.params.seeding == "mgda" and self.stage > 1:
            for module in self.model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            self.optimizer = make_optimizer(self.model.parameters(), self.training)
        else:  # from the trunk, with the trunk's optimizer state (its moments are warm)
            parameters, buffers = self.trunk
            load_parameter_vector(self.model, parameters)
            self._load_buffers(buffers)
            self.optimizer = make_optimizer(self.model.parameters(), self.training)
            if self.trunk_optimizer is not None:
                self.optimizer.load_state_dict(copy.deepcopy(self.trunk_optimizer))

    def _buffers(self) -> dict[str, Tensor]:
        return {name: b.detach().clone() for name, b in self.model.named_buffers()}

    @torch.no_grad()
    def _load_buffers(self, buffers: dict[str, Tensor]) -> None:
        for name, buffer in self.model.named_buffers():
            buffer.copy_(buffers[name])

    # ---- expansion -----------------------------------------------------------------------------
    def _gather(self, batch: Batch) -> Batch | None:
        """Collect batches until ``sample_size`` samples; None while still short."""
        self.pending.append(batch)
        wanted = self.params.sample_size or int(batch[0].shape[0])
        if sum(int(b[0].shape[0]) for b in self.pending) < wanted:
            return None
        inputs = torch.cat([b[0] for b in self.pending])[:wanted]
        targets = torch.cat([b[1] for b in self.pending])[:wanted]
        self.pending = []
        return inputs, targets

    def _expansion_step(self, batch: Batch, engine: GradientEngine) -> StepLog:
        sample = self._gather(batch)
        uniform = torch.full((self.num_tasks,), 1.0 / self.num_tasks)
        if sample is None:
            return {"weights": uniform}
        with _EvalMode(self.model):
            if self.probe is None:
                self._start_expansion(sample, engine)
                return {"weights": uniform}
            while self.queue and not self.rays[self.queue[0]].active:
                self.queue.popleft()
            if not self.queue:
                raise ExplorationFinished(
                    f"pareto_expansion: every ray stopped ({len(self.points)} points found)"
                )
            ray = self.rays[self.queue.popleft()]
            log = self._advance(ray, sample, engine)
            if ray.active:
                self.queue.append(ray.index)
        return log

    def _start_expansion(self, sample: Batch, engine: GradientEngine) -> None:
        """Fix the probe sample, correct the seeds if asked, and open one ray per code each."""
        self.probe = sample
        if self.hvp_variant is None:
            weights = torch.full((self.num_tasks,), 1.0 / self.num_tasks, device=sample[0].device)
            self.hvp_variant = choose_hvp_variant(self.model, self.taskset, sample, weights)
        for seed_point_index, point in enumerate(list(self.points)):
            load_parameter_vector(self.model, point.parameters)
            if self.params.correction_steps:
                self._correct(sample, engine)
                point.parameters = parameter_vector(self.model)
            self._describe(point, sample, engine)
            for code in self.codes:
                index = len(self.rays)
                self.rays.append(_Ray(point.seed, index, code, [seed_point_index]))
                self.queue.append(index)

    def _describe(self, point: ExplorationPoint, sample: Batch, engine: GradientEngine) -> None:
        """Fill alpha, KKT residual and image of the point loaded in the model."""
        _, jacobian = full_jacobian(engine, sample)
        point.alpha, point.kkt_residual = self._alpha(jacobian)
        assert self.probe is not None
        point.image = task_losses_at(engine, self.probe).detach().double().cpu()

    @staticmethod
    def _alpha(jacobian: Tensor) -> tuple[Tensor, float]:
        """Min-norm weights alpha (T,) of J's rows and the KKT residual ||J^T alpha||."""
        alpha = precise_min_norm_weights(jacobian @ jacobian.T).to(jacobian)
        return alpha, float((alpha @ jacobian).norm())

    def _advance(self, ray: _Ray, sample: Batch, engine: GradientEngine) -> StepLog:
        """One expansion step along ``ray``: tangent solve, step, correction, bookkeeping."""
        base = self.points[ray.points[-1]]
        load_parameter_vector(self.model, base.parameters)
        _, jacobian = full_jacobian(engine, sample)
        alpha, kkt_residual = self._alpha(jacobian)
        rhs = ray.code.to(jacobian) @ jacobian
        assert self.hvp_variant is not None
        operator = hessian_operator(engine, sample, alpha, self.hvp_variant)
        result: MinresResult = minres(
            operator,
            rhs,
            shift=self.params.damping,
            tolerance=self.params.minres_tolerance,
            max_iterations=self.params.minres_max_iterations,
            check_every=self.params.minres_check_every,
        )
        direction = result.solution
        self.reports.append(
            SolveReport(
                ray.seed,
                ray.index,
                len(ray.points),
                result.iterations,
                result.estimated_residual,
                result.true_residual,
                result.converged,
                result.products,
                kkt_residual,
            )
        )
        norm = float(direction.norm())
        if not math.isfinite(norm) or norm == 0.0:
            ray.active, ray.stop_reason = False, "degenerate tangent"
            return self._solve_log(result, alpha, kkt_residual)
        step = -self.params.step_size * direction / norm
        if len(ray.points) >= 2:  # keep the ray's orientation (continuation): the damped
            # system's solution flips sign where the curvature along the front crosses -damping
            previous_step = base.parameters - self.points[ray.points[-2]].parameters
            if float(step @ previous_step.to(step)) < 0:
                step = -step
        moved = base.parameters.to(step) + step
        load_parameter_vector(self.model, moved)
        if self.params.correction_steps:
            self._correct(sample, engine)
        point = ExplorationPoint(
            parameter_vector(self.model), base.buffers, ray.seed, ray.index, len(ray.points)
        )
        self._describe(point, sample, engine)
        self._accept(ray, point)
        log = self._solve_log(result, point.alpha, point.kkt_residual)
        log["expansion_points"] = torch.tensor(float(len(self.points)))
        return log

    def _solve_log(self, result: MinresResult, alpha: Tensor | None, kkt: float) -> StepLog:
        weights = (
            alpha if alpha is not None else torch.full((self.num_tasks,), 1.0 / self.num_tasks)
        )
        return {
            "weights": weights.detach().float().cpu(),
            "minres_iterations": torch.tensor(float(result.iterations)),
            "minres_residual": torch.tensor(result.true_residual),
            "kkt_residual": torch.tensor(kkt),
            # which HVP variant ran: its index in harness.hvp.HVP_VARIANTS (logs hold numbers)
            "hvp_variant": torch.tensor(
                float(HVP_VARIANTS.index(self.hvp_variant or "double_backward"))
            ),
        }

    def _accept(self, ray: _Ray, point: ExplorationPoint) -> None:
        """Add the point to the ray unless it is dominated by its predecessor; stop rules."""
        previous = self.points[ray.points[-1]]
        assert point.image is not None and previous.image is not None
        if not torch.isfinite(point.image).all() or dominates(previous.image, point.image):
            ray.active, ray.stop_reason = False, "dominated by its predecessor"
            return
        if len(ray.points) >= 2:
            before = self.points[ray.points[-2]].image
            assert before is not None
            if float((point.image - previous.image) @ (previous.image - before)) < 0:
                ray.active, ray.stop_reason = False, "image folds back"
                return
        self.points.append(point)
        ray.points.append(len(self.points) - 1)
        assert point.alpha is not None
        if float(point.alpha.min()) < self.params.alpha_floor:
            ray.active, ray.stop_reason = False, "edge of the front"
        elif len(ray.points) - 1 >= self.params.steps_per_direction:
            ray.active, ray.stop_reason = False, "steps_per_direction"

    def _correct(self, sample: Batch, engine: GradientEngine) -> None:
        """MGDA steps toward stationarity: x <- x - lr J^T alpha, lr halved from
        ``correction_lr`` until no task loss rises; stops early once the relative KKT residual
        ``||J^T alpha|| / max_t ||J_t||`` is at most ``correction_tolerance``."""
        for _ in range(self.params.correction_steps):
            losses, jacobian = full_jacobian(engine, sample)
            alpha, residual = self._alpha(jacobian)
            direction = alpha @ jacobian
            scale = float(jacobian.norm(dim=1).max())
            if residual == 0.0 or residual <= self.params.correction_tolerance * scale:
                return
            start = parameter_vector(self.model)
            rate = self.params.correction_lr
            for _ in range(30):
                load_parameter_vector(self.model, start - rate * direction)
                if bool((task_losses_at(engine, sample) <= losses).all()):
                    break
                rate *= 0.5
            else:
                load_parameter_vector(self.model, start)
                return

    # ---- the continuous front --------------------------------------------------------------------
    def local_fronts(self) -> list[LocalFront]:
        """One local front per seed, from the rays grown out of it."""
        fronts = []
        for seed_point_index, point in enumerate(self.points[: self._seed_count()]):
            rays = [r.points for r in self.rays if r.seed == point.seed]
            cyclic = self.num_tasks == 3
            fronts.append(LocalFront(seed_point_index, rays or [[seed_point_index]], cyclic))
        return fronts

    def _seed_count(self) -> int:
        return sum(1 for p in self.points if p.ray < 0)

    def solutions(self) -> Iterator[Solution]:
        """Every computed point, then samples inside each kept simplex of the merged fronts."""
        if self._scratch is None:
            self._scratch = copy.deepcopy(self.model)
        scratch = self._scratch
        if self.phase == "seeding":  # the stage in progress (training may end before it is stored)
            label = "trunk" if self.stage == 0 else f"seed{self.stage - 1}"
            yield Solution(
                label,
                _PointModel(scratch, parameter_vector(self.model), self._buffers()),
                tuple(float(w) for w in self._stage_weights()),
            )
        for point in self.points:
            yield Solution(
                point.label,
                _PointModel(scratch, point.parameters, point.buffers),
                self._coordinates([point], [1.0], point),
            )
        images = {i: p.image for i, p in enumerate(self.points) if p.image is not None}
        for group, merged in enumerate(merge_local_fronts(self.local_fronts(), images)):
            for simplex in merged.simplices:
                vertices = [self.points[i] for i in simplex]
                for weights in simplex_samples(len(simplex), self.params.samples_per_simplex):
                    parameters = sum(w * v.parameters for w, v in zip(weights, vertices))
                    label = f"front{group}/" + "+".join(
                        f"{w:.2f}*{v.label}" for w, v in zip(weights, vertices)
                    )
                    yield Solution(
                        label,
                        _PointModel(scratch, parameters, vertices[0].buffers),
                        self._coordinates(vertices, list(weights), vertices[0]),
                    )

    def _coordinates(
        self, vertices: list[ExplorationPoint], weights: list[float], fallback: ExplorationPoint
    ) -> tuple[float, ...]:
        """Min-norm weights alpha, interpolated; a seed without alpha uses its preference."""
        alphas = [v.alpha for v in vertices]
        if any(a is None for a in alphas):
            return tuple(self.preferences[min(fallback.seed, len(self.preferences) - 1)].tolist())
        mixed = sum(w * a.double().cpu() for w, a in zip(weights, alphas))  # type: ignore
        return tuple(float(c) for c in mixed)

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "phase": self.phase,
            "stage": self.stage,
            "seeding_steps_done": self.seeding_steps_done,
            "trunk": copy.deepcopy(self.trunk),
            "trunk_optimizer": copy.deepcopy(self.trunk_optimizer),
            "points": [copy.deepcopy(asdict(p)) for p in self.points],
            "rays": [copy.deepcopy(asdict(r)) for r in self.rays],
            "queue": list(self.queue),
            "pending": list(self.pending),
            "probe": self.probe,
            "reports": [asdict(r) for r in self.reports],
            "generator": self.generator.get_state(),
            "codes": self.codes.clone(),
            "hvp_variant": self.hvp_variant,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.phase = state["phase"]
        self.stage = state["stage"]
        self.seeding_steps_done = state["seeding_steps_done"]
        self.trunk = copy.deepcopy(state["trunk"])
        self.trunk_optimizer = copy.deepcopy(state["trunk_optimizer"])
        self.points = [ExplorationPoint(**p) for p in copy.deepcopy(state["points"])]
        self.rays = [_Ray(**r) for r in copy.deepcopy(state["rays"])]
        self.queue = deque(state["queue"])
        self.pending = list(state["pending"])
        self.probe = state["probe"]
        self.reports = [SolveReport(**r) for r in state["reports"]]
        self.generator.set_state(state["generator"])
        self.codes = state["codes"].clone()
        self.hvp_variant = state["hvp_variant"]
