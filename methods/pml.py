"""``pml``: Pareto Manifold Learning, a continuous Pareto front from one training run.

Dimitriadis, Frossard & Fleuret, "Pareto Manifold Learning: Tackling multiple tasks via
ensembles of single-task models", ICML 2023 (Alg. 1; reference code nik-dim/pamal).

The model becomes a weight-space ensemble of T members, one per task, each independently
initialised (:mod:`mtlbench.methods._ensemble`): member 0 is the model as built, the others are
re-drawn by every module's ``reset_parameters()``; a parameter that no module can reset is
re-drawn uniformly within its own range (a constant one is copied), so any model works, heads
without parameters included. The network at α on the simplex computes with
θ(α) = Σ_t α_t θ_t. One step, on one batch:

1. draw W points α⁽¹⁾..α⁽ᵂ⁾ ~ Dirichlet(p·1) (``window`` W, ``concentration`` p);
2. for each, one forward at θ(α⁽ʷ⁾) through the gradient engine: task losses L⁽ʷ⁾ (T,);
3. minimise Σ_w [Σ_t c_t⁽ʷ⁾ L_t⁽ʷ⁾] + λ R(L⁽¹⁾..L⁽ᵂ⁾), where the inner weights c are α
   (``inner="ls"``) or α_t / (‖∇_shared L_t⁽ʷ⁾‖ + 10⁻³) with the norm a constant
   (``inner="gradnorm"``, the reference's gradient balancing; costs the shared Jacobian);
4. one optimizer step on the summed gradient.

The budget therefore counts W forward and W backward passes per step (plus the per-task
Jacobian passes for ``gradnorm``).

**The multi-forward regularizer R** (paper Sec. 3.2) asks each task's loss to order with its
weight across the W samples: a task weighted more should not do worse. With the samples sorted
by α_t ascending, Δ_k = L_t(α⁽ᵏ⁺¹⁾) − L_t(α⁽ᵏ⁾) is how much the loss *rises* when the weight rises,
and R = Σ_t log((1/(W−1)) Σ_k exp(τ·relu(Δ_k))) ≥ 0 (zero when every loss falls or stays as its
weight rises; τ = ``temperature``). The reference code sorts by α_t *descending* and applies the
same relu to the same consecutive differences, so it penalises a loss that rises as the weight
*falls*, the ordering the paper asks for; that is the inverse of the stated intent. We implement
the paper's intent (``ordering="paper"``); ``ordering="reference"`` reproduces the code. As in
the code, λR is added only while it is smaller than the summed inner loss (a device-side mask,
no host sync), and R needs W ≥ 2.

**Gradients through the engine.** R depends on the parameters only through the W loss vectors,
so ∂(λR)/∂θ = Σ_w Σ_t λ ∂R/∂L_t⁽ʷ⁾ · ∂L_t⁽ʷ⁾/∂θ: the exact total gradient is
Σ_w engine.backward(state_w, c⁽ʷ⁾ + λ ∂R/∂L⁽ʷ⁾), with ∂R/∂L (W, T) from autograd on the small
function R of the detached losses. No extra pass is made.

**Normalization layers.** Running statistics are not interpolated: one set per layer, updated by
every α drawn in training, as in the reference code, so at evaluation every α sees statistics
mixed over all members. With ``bn_recalibration_batches`` = k > 0 (default 8) each evaluated α
gets its own BatchNorm statistics, re-estimated at θ(α) on the last k training batches
(evaluation only; the training statistics are untouched; no-op for models without BatchNorm).
Measured in ``benchmarks/pml_batchnorm.py`` (multidigits LeNet + BatchNorm, quickstart budget):
test hypervolume 0.696 → 0.811 (seed 0) and 0.677 → 0.726 (seed 1) with recalibration, the
vertices' own-task errors roughly halved. ``bn_recalibration_batches: 0`` gives the paper's
behaviour.

**Evaluation.** ``solutions()`` is the image of a grid on the simplex, each solution carrying
its α as ``coordinates``: for 2 and 3 tasks the lattice of step 1/k (``grid_divisions`` k;
k + 1 points for two tasks, (k + 1)(k + 2)/2 for three), by default k = 100 (101 points) for two
tasks and k = 60 (1891 points) for three; for 4 tasks and more (a lattice would grow as
k^(T−1)) it is *sampled*, never enumerated: the T vertices, the centre and ``random_points``
fixed Dirichlet(1) draws (CelebA, T = 40: 61 points). A grid of more than
``MAX_EVALUATION_POINTS`` points is refused when the suite is loaded.

Evaluation is not charged to the budget: a dense grid costs evaluation time only, one val + test
evaluation per point at every anytime point (``eval_every``) and at the end, linear in the
number of points. Measured with ``benchmarks/pml_grid.py`` on 2 CPU cores shared with other
jobs (so ranges): an analytic problem, 1 ms a point (0.1 s for the 101 points); the quickstart's
multidigits (LeNet, 1000 val + 2000 test pairs), 0.17 s a point on a quiet machine, up to 2 s
under load, so 17 s per evaluation for 101 points against 2 s for the paper's 11; a 3-task
synthetic MLP (1024 + 1024 samples), 10 to 40 ms a point, 20 to 73 s for the 1891 points
against under a second for 66. Suites that want cheap anytime points on learning datasets can
set ``grid_divisions``: their fronts rarely need the density (the rule below: L₁L₂/HV* is small
when the front is far from the reference point).

**How dense a grid must be.** The bound is for a *perfect* sampler (every point exactly on the
front). Take a two-objective front f₂ = h(f₁), h decreasing on [0, L₁] and spanning L₂, a
reference point r at or beyond its nadir, true hypervolume HV*, and the N = k + 1 front points
at f₁ = i·L₁/k (the image of the lattice when f₁ is linear in α, as for a Pareto set that
θ(α) = Σ α_t θ_t traces exactly). They miss the area between their staircase and the front, the
error of a left Riemann sum:

    HV* − HV_k = (L₁/k) Σ_{i<k} h(i·L₁/k) − ∫ h  ≤  L₁L₂/k,  and = L₁L₂/(2k) + o(1/k),

exactly (3k − 1)/(6k²) for h = 1 − f₁² on [0, 1]. So HV_k/HV* ≥ 0.98 needs k ≳ 25·L₁L₂/HV*.
Against the nadir (1, 1) that is k ≥ 40 for f₂ = 1 − √f₁ (ZDT1, HV* = 2/3), k ≥ 75 for
f₂ = 1 − f₁² (ZDT2, HV* = 1/3), k ≥ 110 for the quarter circle (HV* = 1 − π/4); against
(1.1, 1.1), the analytic dataset's reference: 31, 46, 55 (the exact minima, by brute force with
moocore, in ``tests/test_pml_grid.py``). Even the best placement of 11 points on the front
reaches only 89.4% (ZDT2) and 87.3% (quarter circle) against (1, 1): the paper's 11-point grid
cannot reach 98% there. The defaults let a perfect sampler reach at least 98.4% on every one of
these fronts against a reference 10% beyond the nadir: k = 100 gives 99.4%, 99.1%, 98.9% on the
three (and 99.2%, 98.5%, 97.8% against the nadir itself); for three tasks, the DTLZ2 octant of
the unit sphere sampled at α/‖α‖ needs k ≥ 49 (1275 points) against (1.1, 1.1, 1.1) and k ≥ 85
(3741) against (1, 1, 1), and k = 60 reaches 98.4% and 97.3%.

**Logs.** ``weights`` is the mean of the step's W sampled α (on the simplex: the preference mix
the step trained on), not the effective gradient weights; ``task_losses`` the mean over the W
samples; ``ordering_penalty`` the value of R (W ≥ 2).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from mtlbench.harness.gradients import Batch, GradientEngine
from mtlbench.harness.method import Method, MethodParams, Solution, StepLog, TrainingConfig
from mtlbench.harness.model import MultiTaskModel
from mtlbench.harness.registry import register_method
from mtlbench.harness.tasks import TaskSet
from mtlbench.methods._ensemble import EnsembleModel
from mtlbench.methods._simplex import simplex_evaluation_points
from pydantic import Field, field_validator
from torch import Tensor

GRADNORM_EPSILON = 1e-3  # ξ of the reference's gradient normalisation
# Lattice divisions k of the default evaluation grid, by number of tasks (module docstring).
DEFAULT_GRID_DIVISIONS: dict[int, int] = {2: 100, 3: 60}
MAX_EVALUATION_POINTS = 10_000  # a larger grid is refused at suite load

# The paper's configurations (reference repo configs/experiment/<benchmark>/), all with Adam and
# τ = 1. ``lr`` replaces the suite's learning rate only when a preset is named.
PAPER_PRESETS: dict[str, dict[str, Any]] = {
    "multimnist": {
        "window": 4,
        "regularization": 0.0,
        "concentration": 1.0,
        "inner": "ls",
        "lr": 1e-3,
    },
    "multimnist3": {
        "window": 3,
        "regularization": 2.0,
        "concentration": 1.0,
        "inner": "ls",
        "lr": 1e-3,
    },
    "census": {"window": 2, "regularization": 5.0, "concentration": 1.0, "inner": "ls", "lr": 1e-3},
    "utkface": {
        "window": 3,
        "regularization": 1.0,
        "concentration": 2.0,
        "inner": "gradnorm",
        "lr": 1e-3,
    },
    "cityscapes": {
        "window": 3,
        "regularization": 1.0,
        "concentration": 7.0,
        "inner": "gradnorm",
        "lr": 1e-4,
    },
}
# mtlbench dataset names -> the paper benchmark whose settings they take.
DATASET_PRESETS: dict[str, str] = {"multidigits": "multimnist"}
FALLBACK_PRESET = "multimnist"


class PMLParams(MethodParams):
    """preset: a paper benchmark (``multimnist``, ``multimnist3``, ``census``, ``utkface``,
    ``cityscapes``) or an mtlbench dataset mapped to one (``multidigits``); its values fill the
    fields left unset (no preset: MultiMNIST's, without its lr).
    window: W, samples of α per step. concentration: p of Dirichlet(p·1). regularization: λ.
    temperature: τ of the ordering penalty. inner: ``ls`` (Σ α_t L_t) or ``gradnorm``.
    ordering: ``paper`` (penalise a loss rising with its weight) or ``reference`` (the code's sign).
    lr: learning rate replacing the suite's (None: the preset's if named, else the suite's).
    grid_divisions: k, the evaluation lattice's divisions (2 and 3 tasks; None: 100 for two
    tasks, 60 for three, dense enough for 98% of a curved front's hypervolume, see the module
    docstring).
    random_points: random evaluation points beyond vertices + centre (4 tasks and more).
    bn_recalibration_batches: re-estimate BatchNorm statistics per evaluated α on this many of
    the last training batches (0: the shared training statistics, as in the paper's code).
    """

    preset: str | None = None
    window: int | None = Field(None, ge=1)
    concentration: float | None = Field(None, gt=0)
    regularization: float | None = Field(None, ge=0)
    temperature: float = Field(1.0, gt=0)
    inner: Literal["ls", "gradnorm"] | None = None
    ordering: Literal["paper", "reference"] = "paper"
    lr: float | None = Field(None, gt=0)
    grid_divisions: int | None = Field(None, ge=1)
    random_points: int = Field(20, ge=0)
    bn_recalibration_batches: int = Field(8, ge=0)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PAPER_PRESETS and value not in DATASET_PRESETS:
            known = ", ".join(sorted({*PAPER_PRESETS, *DATASET_PRESETS}))
            raise ValueError(f"unknown preset {value!r} (known: {known})")
        return value


@dataclass(frozen=True)
class PMLSettings:
    """The resolved hyperparameters of one run (explicit field > preset > MultiMNIST's)."""

    window: int
    concentration: float
    regularization: float
    temperature: float
    inner: str
    ordering: str
    lr: float | None


def resolve_settings(params: PMLParams) -> PMLSettings:
    name = DATASET_PRESETS.get(params.preset, params.preset) if params.preset else FALLBACK_PRESET
    preset = PAPER_PRESETS[name]

    def pick(field: str) -> Any:
        value = getattr(params, field)
        return preset[field] if value is None else value

    lr = params.lr if params.lr is not None else (preset["lr"] if params.preset else None)
    return PMLSettings(
        window=pick("window"),
        concentration=pick("concentration"),
        regularization=pick("regularization"),
        temperature=params.temperature,
        inner=pick("inner"),
        ordering=params.ordering,
        lr=lr,
    )


def grid_divisions(params: PMLParams, num_tasks: int) -> int:
    """k of the evaluation lattice: ``params.grid_divisions``, else the default for 2 and 3 tasks
    (unused, 1, beyond: those grids are sampled)."""
    if params.grid_divisions is not None:
        return params.grid_divisions
    return DEFAULT_GRID_DIVISIONS.get(num_tasks, 1)


def evaluation_point_count(params: PMLParams, num_tasks: int) -> int:
    """N, the number of points of the evaluation grid, without building it: C(k + T − 1, T − 1)
    for 2 and 3 tasks, T + 1 + ``random_points`` beyond."""
    if num_tasks <= 3:
        return math.comb(grid_divisions(params, num_tasks) + num_tasks - 1, num_tasks - 1)
    return num_tasks + 1 + params.random_points


def evaluation_grid(params: PMLParams, num_tasks: int) -> np.ndarray:
    """The α points (N, T) PML's solutions are evaluated at, rows on the simplex: the lattice of
    step 1/k for 2 and 3 tasks, vertices + centre + ``random_points`` fixed draws beyond."""
    return simplex_evaluation_points(
        num_tasks, grid_divisions(params, num_tasks), params.random_points
    )


def ordering_penalty(
    task_losses: Tensor, alphas: Tensor, temperature: float, ordering: str = "paper"
) -> Tensor:
    """R = Σ_t log((1/(W−1)) Σ_k exp(τ·relu(Δ_{k,t}))), a scalar ≥ 0.

    task_losses, alphas: (W, T), W ≥ 2. Δ_{k,t} = L_t at the (k+1)-th smallest α_t minus L_t at
    the k-th smallest: a loss rising with its weight (``ordering="paper"``); ``"reference"``
    flips the sign (the reference code's behaviour, see the module docstring).
    """
    window = task_losses.shape[0]
    if window < 2:
        raise ValueError(f"the ordering penalty needs at least 2 samples, got {window}")
    order = alphas.argsort(dim=0, stable=True)
    ordered = task_losses.gather(0, order)
    rise = ordered[1:] - ordered[:-1]
    if ordering == "reference":
        rise = -rise
    scaled = temperature * torch.relu(rise)
    return (torch.logsumexp(scaled, dim=0) - np.log(window - 1)).sum()


@register_method("pml")
class ParetoManifoldLearning(Method[PMLParams]):
    Params = PMLParams
    produces_weights = True
    weights_on_simplex = True
    consumes = "task losses of a weight-space ensemble at W simplex points"
    cost = "W forwards + W backwards of a T-member ensemble"
    paper = "Dimitriadis, Frossard & Fleuret, ICML 2023"

    def __init__(
        self,
        params: PMLParams,
        model: MultiTaskModel,
        taskset: TaskSet,
        training: TrainingConfig,
    ) -> None:
        self.settings = resolve_settings(params)
        if self.settings.lr is not None:
            training = training.model_copy(update={"lr": self.settings.lr})
        ensemble = EnsembleModel.reinitialised(model, len(taskset))
        super().__init__(params, ensemble, taskset, training)
        self.model: EnsembleModel
        # α draws: their own stream, seeded from the run's torch RNG (deterministic per seed)
        self.alpha_rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        # batches kept for BatchNorm recalibration (none when the model has no BatchNorm; not
        # checkpointed: after a resume, the batches seen since)
        keep = params.bn_recalibration_batches if self.model.normalization_buffers() else 0
        self.recent_batches: deque[Batch] = deque(maxlen=keep)

    @classmethod
    def check(cls, params: MethodParams, taskset: TaskSet) -> None:
        assert isinstance(params, PMLParams)
        if len(taskset) < 2:
            raise ValueError(f"pml needs at least 2 tasks, the dataset has {len(taskset)}")
        count = evaluation_point_count(params, len(taskset))
        if count > MAX_EVALUATION_POINTS:
            field = "grid_divisions" if len(taskset) <= 3 else "random_points"
            raise ValueError(
                f"{field}: the evaluation grid would have {count} points for {len(taskset)} "
                f"tasks, more than {MAX_EVALUATION_POINTS}"
            )

    # ---- training -----------------------------------------------------------------------------
    def sample_alphas(self, device: torch.device | str = "cpu") -> Tensor:
        """W points of the simplex ~ Dirichlet(p·1): (W, T) float32."""
        settings = self.settings
        draws = self.alpha_rng.dirichlet(
            np.full(len(self.taskset), settings.concentration), settings.window
        )
        return torch.as_tensor(draws, dtype=torch.float32).to(device)

    def step(self, batch: Batch, engine: GradientEngine) -> StepLog:
        self.optimizer.zero_grad(set_to_none=True)
        if self.recent_batches.maxlen:
            self.recent_batches.append(batch)
        log = self.accumulate_gradients(batch, engine, self.sample_alphas(batch[0].device))
        self.optimizer.step()
        return log

    def accumulate_gradients(self, batch: Batch, engine: GradientEngine, alphas: Tensor) -> StepLog:
        """Add the gradient of the PML objective at ``alphas`` (W, T) to every ``.grad``."""
        settings = self.settings
        states = []
        for alpha in alphas:
            self.model.set_alpha(alpha)
            states.append(engine.forward(batch))
        task_losses = torch.stack([state.task_losses.detach() for state in states])  # (W, T)
        alphas = alphas.to(task_losses)
        jacobians: list[Tensor] = []
        if settings.inner == "gradnorm":
            jacobians = [engine.shared_jacobian(state) for state in states]  # W × (T, P)
            norms = torch.stack([jacobian.norm(dim=1) for jacobian in jacobians])
            inner = alphas / (norms + GRADNORM_EPSILON)
        else:
            inner = alphas
        weights = inner
        log: StepLog = {"task_losses": task_losses.mean(dim=0), "weights": alphas.mean(dim=0)}
        if settings.window > 1:
            losses = task_losses.clone().requires_grad_(True)
            with torch.enable_grad():
                penalty = ordering_penalty(losses, alphas, settings.temperature, settings.ordering)
                (penalty_grad,) = torch.autograd.grad(penalty, losses)
            log["ordering_penalty"] = penalty.detach()
            if settings.regularization > 0:
                scaled = settings.regularization * penalty.detach()
                # as in the reference: λR joins the objective only while below the inner loss
                active = (scaled < (inner * task_losses).sum()).to(task_losses)
                weights = inner + active * settings.regularization * penalty_grad
        for index, state in enumerate(states):
            if jacobians:
                # from the cached Jacobian, charged as a combine (like mgda), no backward
                direction = engine.shared_combination(state, weights[index])
                engine.apply_shared_direction(state, direction, weights[index])
            else:
                engine.backward(state, weights[index])
        return log

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluation_points(self) -> np.ndarray:
        """The α grid (N, T) that ``solutions`` evaluates (module docstring, "Evaluation")."""
        return evaluation_grid(self.params, len(self.taskset))

    def solutions(self) -> Iterator[Solution]:
        recalibrate = bool(self.recent_batches)
        for point in self.evaluation_points():
            coordinates = tuple(float(value) for value in point)
            buffers = (
                self.model.recalibrated_buffers(point, list(self.recent_batches))
                if recalibrate
                else None
            )
            label = "alpha=" + ",".join(f"{value:.3f}" for value in coordinates)
            yield Solution(label, self.model.at(point, buffers), coordinates)

    # ---- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["alpha_rng"] = self.alpha_rng.bit_generator.state
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.alpha_rng.bit_generator.state = state["alpha_rng"]
