"""The tangent explorer of ``pareto_expansion``: rays grown from the seeds along the front.

Ma, Du & Matusik, ICML 2020, Eq. 6 and Alg. 1. At a point x with min-norm weights alpha
(sum_t alpha_t grad f_t ~ 0), solve ``(sum_t alpha_t H_t + damping I) v = J^T beta`` by MINRES
on Hessian-vector products, never forming a Hessian; beta is one tangent code per ray (see
:func:`~mtlbench.methods._pareto_geometry.tangent_codes`). Then ``x <- x - step_size v / ||v||``
and, optionally, ``correction_steps`` MGDA steps back to stationarity. Rays take turns (breadth
first) until the budget is spent; a ray's first step trades ``beta^T f`` down, later steps keep
its orientation. A ray stops at the front's edge (a weight alpha_t below ``alpha_floor``), where
the image folds back, where a new point is dominated by the one it came from, or after
``steps_per_direction`` steps. When every ray has stopped, :class:`ExplorationFinished`.

J and the HVPs use ``sample_size`` training samples (consecutive batches, gathered over steps
that then do no other work), with the model in eval mode. Every pass is charged.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

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
from mtlbench.harness.method import StepLog
from mtlbench.harness.tasks import TaskSet
from mtlbench.methods._expansion_front import ExplorationPoint
from mtlbench.methods._minres import MinresResult, minres
from mtlbench.methods._pareto_geometry import dominates
from mtlbench.methods.min_norm import min_norm_weights, two_vector_weight
from torch import Tensor, nn

if TYPE_CHECKING:
    from mtlbench.methods.pareto_expansion import ParetoExpansionParams

# the method's logger: the rays' stop messages are the method's
_LOG = logging.getLogger("mtlbench.methods.pareto_expansion")


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


def stationarity(jacobian: Tensor) -> tuple[Tensor, float]:
    """Min-norm weights alpha (T,) of J's rows (J: (T, N)) and the KKT residual ||J^T alpha||."""
    alpha = precise_min_norm_weights(jacobian @ jacobian.T).to(jacobian)
    return alpha, float((alpha @ jacobian).norm())


class ExplorationFinished(BudgetExhausted):
    """Every ray has stopped: nothing is left to explore, so training ends (budget not spent)."""

    stop_reason = "exploration_finished"


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
class Ray:
    """One ray: its seed, index, tangent code beta (T,), the indices of its points (the seed's
    first), whether it still grows and, once stopped, why."""

    seed: int
    index: int
    code: Tensor
    points: list[int] = field(default_factory=list)
    active: bool = True
    stop_reason: str = ""


class EvalMode:
    """Context: the model in eval mode (no dropout draws, fixed BatchNorm statistics)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


class TangentExplorer:
    """The expansion phase: computed points (seeds first), rays, their queue, solve reports.

    codes: (rays per seed, T) tangent codes. hvp_variant: None to time the variants on the model
    when the expansion starts (``harness.hvp.choose_hvp_variant``).
    """

    def __init__(
        self,
        params: ParetoExpansionParams,
        model: nn.Module,
        taskset: TaskSet,
        codes: Tensor,
        hvp_variant: HvpVariant | None,
    ):
        self.params = params
        self.model = model
        self.taskset = taskset
        self.num_tasks = len(taskset)
        self.codes = codes
        self.hvp_variant = hvp_variant
        self.points: list[ExplorationPoint] = []
        self.rays: list[Ray] = []
        self.queue: deque[int] = deque()
        self.pending: list[Batch] = []
        self.probe: Batch | None = None
        self.reports: list[SolveReport] = []

    # ---- one step ------------------------------------------------------------------------------
    def step(self, batch: Batch, engine: GradientEngine) -> StepLog:
        """Gather the sample; the first full one starts the expansion, later ones advance the
        next active ray. Raises ExplorationFinished when none is left, BudgetExhausted (open
        rays marked ``budget``) when the budget cannot pay for the step."""
        sample = self._gather(batch)
        uniform = torch.full((self.num_tasks,), 1.0 / self.num_tasks)
        if sample is None:
            return {"weights": uniform}
        with EvalMode(self.model):
            if self.probe is None:
                self.start(sample, engine)
                return {"weights": uniform}
            ray = self._next_ray()
            try:
                log = self._advance(ray, sample, engine)
            except BudgetExhausted:
                for open_ray in self.rays:
                    if open_ray.active:
                        open_ray.stop_reason = "budget"
                _LOG.info("pareto_expansion: budget spent (%s)", self.stop_summary())
                raise
            if ray.active:
                self.queue.append(ray.index)
            else:
                _LOG.info(
                    "pareto_expansion: seed%d/ray%d stopped: %s after %d steps",
                    ray.seed,
                    ray.index,
                    ray.stop_reason,
                    len(ray.points) - 1,
                )
        log.update(self.ray_counts())
        return log

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

    def _next_ray(self) -> Ray:
        """The next active ray in turn; ExplorationFinished if every ray has stopped."""
        while self.queue and not self.rays[self.queue[0]].active:
            self.queue.popleft()
        if not self.queue:
            finished = ExplorationFinished(
                f"pareto_expansion: every ray stopped ({len(self.points)} points found; "
                f"{self.stop_summary()})"
            )
            _LOG.info("%s", finished)
            raise finished
        return self.rays[self.queue.popleft()]

    # ---- what happened -------------------------------------------------------------------------
    def stop_summary(self) -> str:
        """Why the rays stopped: ``"<reason>: <count>"`` joined by ``", "`` (``"budget"``: still
        exploring when the budget ran out; ``"active"``: not stopped yet)."""
        counts: dict[str, int] = {}
        for ray in self.rays:
            reason = ray.stop_reason or "active"
            counts[reason] = counts.get(reason, 0) + 1
        return ", ".join(f"{reason}: {count}" for reason, count in sorted(counts.items()))

    def report(self) -> dict[str, float | str]:
        """Rays per stop reason (``rays.<reason>``), points found, and ``stop_summary``."""
        summary: dict[str, float | str] = {"points": float(len(self.points))}
        for ray in self.rays:
            key = "rays." + (ray.stop_reason or "active").replace(" ", "_")
            summary[key] = float(summary.get(key, 0.0)) + 1.0
        summary["stop_summary"] = self.stop_summary()
        return summary

    def ray_counts(self) -> StepLog:
        active = sum(1 for ray in self.rays if ray.active)
        return {
            "rays_active": torch.tensor(float(active)),
            "rays_stopped": torch.tensor(float(len(self.rays) - active)),
        }

    # ---- the expansion -------------------------------------------------------------------------
    def start(self, sample: Batch, engine: GradientEngine) -> None:
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
                self.rays.append(Ray(point.seed, index, code, [seed_point_index]))
                self.queue.append(index)

    def _describe(self, point: ExplorationPoint, sample: Batch, engine: GradientEngine) -> None:
        """Fill alpha, KKT residual and image of the point loaded in the model."""
        _, jacobian = full_jacobian(engine, sample)
        point.alpha, point.kkt_residual = stationarity(jacobian)
        assert self.probe is not None
        point.image = task_losses_at(engine, self.probe).detach().double().cpu()

    def _solve(
        self, ray: Ray, sample: Batch, engine: GradientEngine
    ) -> tuple[MinresResult, Tensor, Tensor, float]:
        """The tangent solve at the ray's last point (loaded into the model): MINRES's result,
        the right-hand side J^T beta (N,), alpha (T,) and the KKT residual there."""
        _, jacobian = full_jacobian(engine, sample)
        alpha, kkt_residual = stationarity(jacobian)
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
        return result, rhs, alpha, kkt_residual

    def _advance(self, ray: Ray, sample: Batch, engine: GradientEngine) -> StepLog:
        """One expansion step along ``ray``: tangent solve, step, correction, bookkeeping."""
        base = self.points[ray.points[-1]]
        load_parameter_vector(self.model, base.parameters)
        result, rhs, alpha, kkt_residual = self._solve(ray, sample, engine)
        direction = result.solution
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
        elif float(rhs @ step) > 0:  # first step: trade beta^T f down (the code's meaning).
            # -v does so only where sum alpha_t H_t is positive definite along the front; on a
            # non-convex front its curvature there is negative and -v points the other way
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

    def _accept(self, ray: Ray, point: ExplorationPoint) -> None:
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
            alpha, residual = stationarity(jacobian)
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

    # ---- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "points": [copy.deepcopy(asdict(p)) for p in self.points],
            "rays": [copy.deepcopy(asdict(r)) for r in self.rays],
            "queue": list(self.queue),
            "pending": list(self.pending),
            "probe": self.probe,
            "reports": [asdict(r) for r in self.reports],
            "codes": self.codes.clone(),
            "hvp_variant": self.hvp_variant,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.points = [ExplorationPoint(**p) for p in copy.deepcopy(state["points"])]
        self.rays = [Ray(**r) for r in copy.deepcopy(state["rays"])]
        self.queue = deque(state["queue"])
        self.pending = list(state["pending"])
        self.probe = state["probe"]
        self.reports = [SolveReport(**r) for r in state["reports"]]
        self.codes = state["codes"].clone()
        self.hvp_variant = state["hvp_variant"]
