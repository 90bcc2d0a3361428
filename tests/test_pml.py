"""Pareto Manifold Learning: the weight-space ensemble, the method's gradients, its front.

Oracles: member weights themselves (vertex exactness), the base model (identical members),
plain autograd on the whole objective (the engine-folded regularizer and gradnorm weights),
batch statistics computed by hand (BatchNorm recalibration), and the analytic Pareto front of a
two-objective quadratic problem (front quality, with moocore's hypervolume and IGD+).
"""

from __future__ import annotations

import copy
import math

import moocore
import numpy as np
import pytest
import torch
from _method_checks import check_method_properties
from _problems import tiny_batches, tiny_model, tiny_taskset
from mtlbench.harness.budget import Budget
from mtlbench.harness.gradients import GradientEngine
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.model import MultiTaskModel, SeparateHeads, StackedMLPHeads
from mtlbench.harness.tasks import TaskSet, TaskSpec
from mtlbench.methods._ensemble import EnsembleModel, reinitialised_copy
from mtlbench.methods._simplex import simplex_evaluation_points
from mtlbench.methods.pml import ParetoManifoldLearning, PMLParams, ordering_penalty
from torch import nn

NUM_TASKS = 3
CLASSES = 4


def conv_bn_model(heads: str = "stacked", seed: int = 0) -> MultiTaskModel:
    """Conv → BatchNorm → ReLU → Linear encoder on 1×6×6 inputs; stacked or separate heads."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 8), nn.ReLU()
    )
    if heads == "stacked":
        head_module = StackedMLPHeads(NUM_TASKS, 8, CLASSES, hidden=6)
    else:
        head_module = SeparateHeads([nn.Linear(8, CLASSES) for _ in range(NUM_TASKS)])
    return MultiTaskModel(encoder, head_module, NUM_TASKS)


def image_batch(seed: int = 0, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(size, 1, 6, 6, generator=generator)
    targets = torch.randint(0, CLASSES, (size, NUM_TASKS), generator=generator).float()
    return inputs, targets


# ---- the ensemble wrapper ------------------------------------------------------------------------
@pytest.mark.parametrize("heads", ["stacked", "separate"])
def test_vertex_equals_member_exactly(heads: str) -> None:
    base = conv_bn_model(heads)
    members = [base, reinitialised_copy(base), reinitialised_copy(base)]
    expected = [copy.deepcopy(m) for m in members]
    ensemble = EnsembleModel(members)
    inputs, _ = image_batch()
    for index, member in enumerate(expected):
        vertex = torch.zeros(NUM_TASKS)
        vertex[index] = 1.0
        ensemble.set_alpha(vertex)
        combined = {
            **{f"encoder.{k}": v for k, v in ensemble.encoder.combined().items()},
            **{f"heads.{k}": v for k, v in ensemble.heads.combined().items()},
        }
        own = dict(member.named_parameters())
        assert combined.keys() == own.keys()
        for name, value in own.items():
            assert torch.equal(combined[name], value), name
        # same buffers (the ensemble's shared ones) in both, then bitwise equal outputs
        member.load_state_dict(
            {
                n.replace(".template", ""): b
                for n, b in ensemble.state_dict().items()
                if ".template." in n
            },
            strict=False,
        )
        member.eval(), ensemble.eval()
        with torch.no_grad():
            got, want = ensemble(inputs), member(inputs)
        if isinstance(got, list):
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
        else:
            assert torch.equal(got, want)
    # members really differ (independent initialisations)
    first, second = (dict(m.named_parameters())["encoder.0.weight"] for m in expected[:2])
    assert not torch.allclose(first, second)


def test_identical_members_round_trip_the_base_model() -> None:
    base = conv_bn_model("stacked")
    reference = copy.deepcopy(base)
    ensemble = EnsembleModel([base, copy.deepcopy(base), copy.deepcopy(base)])
    inputs, _ = image_batch()
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        alpha = torch.distributions.Dirichlet(torch.ones(NUM_TASKS)).sample()
        ensemble.set_alpha(alpha)
        # train mode: batch statistics, and the shared running statistics advance like the base's
        torch.testing.assert_close(ensemble(inputs), reference(inputs), rtol=1e-5, atol=1e-6)
        inputs = torch.randn(inputs.shape, generator=generator)
    torch.testing.assert_close(
        ensemble.encoder.template[1].running_mean, reference.encoder[1].running_mean
    )
    ensemble.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(ensemble(inputs), reference(inputs), rtol=1e-5, atol=1e-6)
    # the engine's split view (encoder, then heads on z) is the same function
    with torch.no_grad():
        torch.testing.assert_close(
            ensemble.heads(ensemble.encoder(inputs)), reference(inputs), rtol=1e-5, atol=1e-6
        )


def test_parameters_are_stacked_per_member() -> None:
    base = conv_bn_model("stacked")
    ensemble = EnsembleModel.reinitialised(base, NUM_TASKS)
    base_shapes = sorted(tuple(p.shape) for p in base.parameters())
    stacked_shapes = sorted(tuple(p.shape[1:]) for p in ensemble.parameters())
    assert stacked_shapes == base_shapes
    assert all(p.shape[0] == NUM_TASKS for p in ensemble.parameters())
    assert sum(p.numel() for p in ensemble.shared_parameters()) == NUM_TASKS * sum(
        p.numel() for p in base.encoder.parameters()
    )
    assert len(ensemble.task_parameters()) == len(list(base.heads.parameters()))


def test_batchnorm_recalibration_matches_batch_statistics() -> None:
    base = conv_bn_model("stacked")
    ensemble = EnsembleModel.reinitialised(base, NUM_TASKS)
    batches = [image_batch(seed) for seed in range(3)]
    for inputs, _ in batches:  # some shared statistics from a mixture of alphas
        ensemble.set_alpha(torch.distributions.Dirichlet(torch.ones(NUM_TASKS)).sample())
        ensemble(inputs)
    shared_before = {n: b.clone() for n, b in ensemble.normalization_buffers().items()}
    alpha = torch.tensor([0.6, 0.3, 0.1])
    buffers = ensemble.recalibrated_buffers(alpha, batches)
    for name, buffer in ensemble.normalization_buffers().items():
        assert torch.equal(buffer, shared_before[name]), "shared statistics were modified"
    # oracle: the per-batch channel mean / unbiased variance of the BatchNorm input at θ(α)
    weight = ensemble.encoder.combined(alpha)["0.weight"]
    bias = ensemble.encoder.combined(alpha)["0.bias"]
    with torch.no_grad():
        activations = [nn.functional.conv2d(x, weight, bias) for x, _ in batches]
    mean = torch.stack([a.mean(dim=(0, 2, 3)) for a in activations]).mean(dim=0)
    variance = torch.stack([a.transpose(0, 1).flatten(1).var(dim=1) for a in activations]).mean(
        dim=0
    )
    torch.testing.assert_close(buffers["encoder.template.1.running_mean"], mean)
    torch.testing.assert_close(buffers["encoder.template.1.running_var"], variance)
    # a view with these statistics computes as a plain model holding θ(α) and them
    plain = copy.deepcopy(base)
    with torch.no_grad():
        for name, value in ensemble.encoder.combined(alpha).items():
            plain.encoder.get_parameter(name).copy_(value)
        for name, value in ensemble.heads.combined(alpha).items():
            plain.heads.get_parameter(name).copy_(value)
        plain.encoder[1].running_mean.copy_(mean)
        plain.encoder[1].running_var.copy_(variance)
    view = ensemble.at(alpha, buffers).eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(view(batches[0][0]), plain(batches[0][0]), rtol=1e-5, atol=1e-5)


# ---- the method ----------------------------------------------------------------------------------
def make_pml(
    params: dict, model: MultiTaskModel | None = None, taskset: TaskSet | None = None, lr=1e-2
):
    taskset = taskset or tiny_taskset(NUM_TASKS)
    model = model or tiny_model(NUM_TASKS)
    torch.manual_seed(0)
    method = ParetoManifoldLearning(
        PMLParams(**params), model, taskset, TrainingConfig(batch_size=32, lr=lr)
    )
    return method, taskset


def direct_objective(
    method, taskset, batch, alphas, inner: str, regularization: float, ordering: str
):
    """The PML objective by plain autograd on the ensemble (no engine, no detaching)."""
    inputs, targets = batch
    losses = torch.stack([taskset.losses(method.model(inputs, alpha=a), targets) for a in alphas])
    if inner == "gradnorm":
        shared = method.model.shared_parameters()
        norms = torch.stack(
            [
                torch.stack(
                    [
                        torch.cat(
                            [
                                g.flatten()
                                for g in torch.autograd.grad(loss, shared, retain_graph=True)
                            ]
                        ).norm()
                        for loss in row
                    ]
                )
                for row in losses
            ]
        )
        coefficients = alphas / (norms + 1e-3)
    else:
        coefficients = alphas
    objective = (coefficients * losses).sum()
    penalty = ordering_penalty(losses, alphas, 1.0, ordering)
    assert penalty.item() > 0, "test needs an active regularizer"
    assert regularization * penalty.item() < objective.item(), "test needs the gate open"
    return objective + regularization * penalty


@pytest.mark.parametrize(
    "inner, ordering", [("ls", "paper"), ("gradnorm", "paper"), ("ls", "reference")]
)
def test_engine_gradient_equals_direct_autograd(inner: str, ordering: str) -> None:
    params = {"window": 4, "regularization": 0.05, "inner": inner, "ordering": ordering}
    method, taskset = make_pml(params)
    batch = tiny_batches(NUM_TASKS, count=1)[0]
    engine = GradientEngine(method.model, taskset, Budget("flops", 1e30), batch)
    alphas = method.sample_alphas()
    method.optimizer.zero_grad(set_to_none=True)
    method.accumulate_gradients(batch, engine, alphas)
    got = [p.grad.clone() for p in method.model.parameters()]
    objective = direct_objective(method, taskset, batch, alphas, inner, 0.05, ordering)
    want = torch.autograd.grad(objective, list(method.model.parameters()))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_ordering_penalty_sign() -> None:
    alphas = torch.tensor([[0.5], [0.2], [0.8]])
    rising = torch.tensor([[2.0], [1.0], [4.0]])  # loss rises with the weight: the bad order
    falling = torch.tensor([[2.0], [4.0], [1.0]])
    expected = math.log((math.exp(1.0) + math.exp(2.0)) / 2)
    assert float(ordering_penalty(rising, alphas, 1.0)) == pytest.approx(expected)
    assert float(ordering_penalty(falling, alphas, 1.0)) == 0.0
    # the reference code's sign: the opposite orderings are penalised
    assert float(ordering_penalty(falling, alphas, 1.0, "reference")) == pytest.approx(
        math.log((math.exp(2.0) + math.exp(1.0)) / 2)
    )
    assert float(ordering_penalty(rising, alphas, 1.0, "reference")) == 0.0
    # temperature scales the rises: τ = 2 gives log((e² + e⁴)/2)
    assert float(ordering_penalty(rising, alphas, 2.0)) == pytest.approx(
        math.log((math.exp(2) + math.exp(4)) / 2)
    )


def test_one_step_charges_window_passes() -> None:
    method, taskset = make_pml({"window": 4})
    batch = tiny_batches(NUM_TASKS, count=1)[0]
    budget = Budget("flops", 1e30)
    engine = GradientEngine(method.model, taskset, budget, batch)
    log = method.step(batch, engine)
    assert budget.passes_by_kind["encoder_forward"] == 4
    assert budget.passes_by_kind["encoder_backward"] == 4
    assert budget.passes_by_kind["heads_backward"] == 4
    assert torch.isclose(log["weights"].sum(), torch.tensor(1.0))
    assert log["task_losses"].shape == (NUM_TASKS,)


def test_presets_and_overrides() -> None:
    method, _ = make_pml({"preset": "utkface", "window": 5})
    settings = method.settings
    assert (settings.window, settings.regularization, settings.concentration, settings.inner) == (
        5,
        1.0,
        2.0,
        "gradnorm",
    )
    assert method.optimizer.param_groups[0]["lr"] == 1e-3
    default, _ = make_pml({}, lr=0.02)
    assert (
        default.settings.window,
        default.settings.regularization,
        default.settings.concentration,
    ) == (4, 0.0, 1.0)
    assert default.optimizer.param_groups[0]["lr"] == 0.02  # no preset: the suite's lr
    assert make_pml({"preset": "multidigits"})[0].settings.window == 4
    with pytest.raises(ValueError, match="unknown preset"):
        PMLParams(preset="imagenet")


@pytest.mark.parametrize("num_tasks, count", [(2, 11), (3, 66), (4, 4 + 1 + 20)])
def test_evaluation_grid(num_tasks: int, count: int) -> None:
    points = simplex_evaluation_points(num_tasks)
    assert points.shape == (count, num_tasks)
    np.testing.assert_allclose(points.sum(axis=1), 1.0)
    assert (points >= 0).all()
    assert len({tuple(np.round(p, 9)) for p in points}) == count
    for vertex in np.eye(num_tasks):
        assert any(np.allclose(p, vertex) for p in points)
    if num_tasks == 2:
        np.testing.assert_allclose(points[:, 0], np.linspace(0, 1, 11))


def test_solutions_carry_alpha_and_recalibrated_statistics() -> None:
    taskset = TaskSet([TaskSpec(f"t{t}", "classification", CLASSES) for t in range(NUM_TASKS)])
    method, _ = make_pml(
        {"window": 2, "bn_recalibration_batches": 2, "grid_divisions": 4},
        conv_bn_model("stacked"),
        taskset,
    )
    batches = [image_batch(seed) for seed in range(3)]
    engine = GradientEngine(method.model, taskset, Budget("flops", 1e30), batches[0])
    for batch in batches:
        method.step(batch, engine)
    shared = {n: b.clone() for n, b in method.model.normalization_buffers().items()}
    solutions = list(method.solutions())
    assert len(solutions) == 15  # 3 tasks, 4 divisions: C(6, 2)
    for solution in solutions:
        assert solution.coordinates is not None and math.isclose(sum(solution.coordinates), 1.0)
        assert solution.label.startswith("alpha=")
        assert solution.model.buffers_at_alpha is not None
    assert not torch.equal(
        solutions[0].model.buffers_at_alpha["encoder.template.1.running_mean"],
        solutions[-1].model.buffers_at_alpha["encoder.template.1.running_mean"],
    )
    for name, buffer in method.model.normalization_buffers().items():
        assert torch.equal(buffer, shared[name])


def test_checkpoint_restores_the_alpha_stream() -> None:
    method, _ = make_pml({})
    state = copy.deepcopy(method.state_dict())
    first = method.sample_alphas()
    method.load_state_dict(state)
    assert torch.equal(method.sample_alphas(), first)


@pytest.mark.parametrize(
    "params, engine",
    [
        ({"window": 3, "regularization": 1.0, "inner": "gradnorm"}, "loop"),
        ({"window": 2, "regularization": 5.0, "ordering": "reference"}, "loop"),
        ({"window": 2, "regularization": 1.0, "inner": "gradnorm"}, "batched"),
    ],
)
def test_shared_property_checks(params: dict, engine: str) -> None:
    check_method_properties("pml", params, engine=engine)


# ---- the analytic two-objective problem ----------------------------------------------------------
class TaskBiases(nn.Module):
    """Heads adding one learned bias per task to a scalar representation: (B, 1) -> (B, 2, 1)."""

    def __init__(self, num_tasks: int = 2):
        super().__init__()
        self.bias = nn.Parameter(torch.empty(num_tasks))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.bias, -1.0, 1.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, None, :] + self.bias[None, :, None]


def test_front_on_two_quadratics_is_non_dominated_and_spread() -> None:
    """f_t(w, b_t) = mean((x·w + b_t − x·a_t)²) over centred x: f_t = (w−a_t)ᵀΣ(w−a_t) + b_t².

    Pareto set: b = 0, w = α a₁ + (1−α) a₂ (exactly linear in α, so reachable by the ensemble);
    front: f₁ = (1−α)² D, f₂ = α² D with D = (a₁−a₂)ᵀΣ(a₁−a₂), i.e. √f₁ + √f₂ = √D.
    """
    generator = torch.Generator().manual_seed(0)
    features, samples = 4, 256
    inputs = torch.randn(samples, features, generator=generator)
    inputs -= inputs.mean(dim=0)
    optima = torch.randn(2, features, generator=generator)
    targets = inputs @ optima.T  # (N, 2)
    covariance = inputs.T @ inputs / samples
    gap = optima[0] - optima[1]
    scale = float(gap @ covariance @ gap)  # D

    taskset = TaskSet([TaskSpec(f"f{t}", "regression", 1, regression_loss="mse") for t in (1, 2)])
    torch.manual_seed(0)
    model = MultiTaskModel(nn.Linear(features, 1, bias=False), TaskBiases(2), 2)
    method, _ = make_pml({"window": 4, "concentration": 1.0}, model, taskset, lr=0.05)
    batch = (inputs, targets)
    engine = GradientEngine(method.model, taskset, Budget("flops", 1e30), batch)
    for _ in range(250):
        method.step(batch, engine)

    solutions = list(method.solutions())
    alphas = np.array([s.coordinates for s in solutions])
    with torch.no_grad():
        front = np.array([taskset.losses(s.model(inputs), targets).tolist() for s in solutions])
    assert front.shape == (101, 2)  # the default grid (was 11 points)
    # every point lies on the analytic front, at the place its α asks for
    distance = (np.sqrt(front).sum(axis=1) - math.sqrt(scale)) / math.sqrt(scale)
    share = np.sqrt(front[:, 0]) / np.sqrt(front).sum(axis=1)  # 1 − α on the exact front
    assert np.abs(distance).max() < 0.01, distance
    assert np.abs(share - (1 - alphas[:, 0])).max() < 0.02
    assert moocore.is_nondominated(front).all()
    # spread: hypervolume against the exact front at the same α, IGD+ against a dense front
    reference = np.array([1.1 * scale, 1.1 * scale])
    grid = alphas[:, 0]
    exact = np.stack([(1 - grid) ** 2 * scale, grid**2 * scale], axis=1)
    hv_ratio = moocore.hypervolume(front, ref=reference) / moocore.hypervolume(exact, ref=reference)
    dense_alpha = np.linspace(0, 1, 2001)
    dense = np.stack([(1 - dense_alpha) ** 2 * scale, dense_alpha**2 * scale], axis=1)
    igd_plus = moocore.igd_plus(front, ref=dense) / scale
    igd_plus_exact = moocore.igd_plus(exact, ref=dense) / scale
    gaps = np.diff(np.sort(share))
    print(
        f"\nPML analytic front: HV ratio {hv_ratio:.4f}, IGD+/D {igd_plus:.4f} "
        f"(exact points at the same α: {igd_plus_exact:.4f}), "
        f"share range [{share.min():.3f}, {share.max():.3f}], "
        f"largest gap {gaps.max():.3f} (exact 0.1)"
    )
    assert hv_ratio > 0.99
    assert igd_plus < igd_plus_exact + 0.005
    assert share.min() < 0.02 and share.max() > 0.98
    assert gaps.max() < 0.13


# ---- through the trainer -------------------------------------------------------------------------
def test_trainer_runs_pml_with_best_val_scoring() -> None:
    from mtlbench.harness.config import parse_suite
    from mtlbench.harness.suite import expand_suite
    from mtlbench.harness.trainer import train_run

    suite = {
        "name": "tiny-pml",
        "datasets": [
            {
                "name": "multidigits",
                "params": {"train_pairs": 256, "val_pairs": 64, "test_pairs": 64},
            }
        ],
        "methods": [{"name": "pml", "params": {"preset": "multidigits"}}],
        "budget": {"flops": 1.5e9},
        "training": {"batch_size": 32, "log_every": 2, "eval_every": 4},
        "scoring": "best_val",
    }
    (spec,) = expand_suite(parse_suite(suite))
    result = train_run(spec)
    assert result.status == "completed", result.error
    assert result.stop_reason == "budget" and result.budget["budget_spent"] <= spec.budget_limit
    coordinates = np.array([s.coordinates for s in result.solutions])
    # the default two-task grid: 100 divisions (tests/test_pml_grid.py says why)
    np.testing.assert_allclose(coordinates, [[k / 100, 1 - k / 100] for k in range(101)])
    assert any(s.on_front for s in result.solutions)
    assert {"weights/left", "weights/right", "ordering_penalty"} <= set(result.history[0])
