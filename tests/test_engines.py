"""Gradient engines against plain autograd, their FLOP tally against FlopCounterMode, and an
MGDA run that must end Pareto stationary on an analytic two-objective problem."""

from __future__ import annotations

import copy

import pytest
import torch
from _problems import tiny_batches, tiny_model, tiny_taskset
from mtlbench.harness.budget import Budget
from mtlbench.harness.gradients import flatten_gradients, get_engine
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.model import MultiTaskModel, SeparateHeads
from mtlbench.harness.registry import DATASETS, METHODS
from mtlbench.harness.tasks import TaskSet, TaskSpec
from mtlbench.methods.min_norm import min_norm_weights
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ENGINES = [
    ("loop", {}),
    ("batched", {}),
    ("batched", {"chunk_size": 2}),
    ("batched", {"chunk_size": 1}),  # a plain VJP per task
    ("representation", {}),
]


def mixed_problem() -> tuple[MultiTaskModel, TaskSet, tuple[torch.Tensor, torch.Tensor]]:
    """Heads of different shapes (list outputs, unfused losses): regression + 2 classifications."""
    torch.manual_seed(1)
    encoder = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 6), nn.Tanh())
    heads = SeparateHeads(
        [
            nn.Linear(6, 1),
            nn.Linear(6, 3),
            nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)),
        ]
    )
    taskset = TaskSet(
        [
            TaskSpec("value", "regression", 1),
            TaskSpec("three", "classification", 3),
            TaskSpec("two", "classification", 2),
        ]
    )
    inputs = torch.randn(16, 8)
    targets = torch.stack(
        [torch.randn(16), torch.randint(0, 3, (16,)).float(), torch.randint(0, 2, (16,)).float()], 1
    )
    return MultiTaskModel(encoder, heads, 3), taskset, (inputs, targets)


def stacked_problem():
    batch = tiny_batches(5, batch_size=16, count=1)[0]
    return tiny_model(5, seed=3), tiny_taskset(5), batch


def plain_heads_problem():
    """Heads without ``forward_per_task`` (one Linear reshaped to (B, T, C)): the batched VJP
    path."""
    torch.manual_seed(2)
    encoder = nn.Sequential(nn.Linear(8, 10), nn.ReLU())
    heads = nn.Sequential(nn.Linear(10, 4 * 3), nn.Unflatten(1, (4, 3)))
    taskset = TaskSet([TaskSpec(f"t{t}", "classification", 3) for t in range(4)])
    batch = (torch.randn(16, 8), torch.randint(0, 3, (16, 4)).float())
    return MultiTaskModel(encoder, heads, 4), taskset, batch


PROBLEMS = {
    "stacked_heads_T5": stacked_problem,
    "separate_heads_T3": mixed_problem,
    "plain_heads_T4": plain_heads_problem,
}


def autograd_oracle(model: MultiTaskModel, taskset: TaskSet, batch, weights, head_weights):
    """Independent of the engines' split at z: per-task gradients of the whole model by autograd."""
    inputs, targets = batch
    losses = taskset.losses(model(inputs), targets)
    shared, heads = model.shared_parameters(), model.task_parameters()
    jacobian = torch.stack(
        [
            flatten_gradients(
                torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True), shared
            )
            for loss in losses
        ]
    )
    representation = model.encoder(inputs)
    z = representation.detach().requires_grad_(True)
    z_losses = taskset.losses(model.heads(z), targets)
    z_grads = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0] for loss in z_losses])
    shared_grad = flatten_gradients(
        torch.autograd.grad((weights * losses).sum(), shared, retain_graph=True, allow_unused=True),
        shared,
    )
    head_grad = flatten_gradients(
        torch.autograd.grad((head_weights * losses).sum(), heads, allow_unused=True), heads
    )
    return jacobian, z_grads, shared_grad, head_grad


def grads_of(params) -> torch.Tensor:
    return flatten_gradients([p.grad for p in params], params)


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("engine_name, options", ENGINES)
def test_engines_agree_with_autograd(problem: str, engine_name: str, options: dict) -> None:
    model, taskset, batch = PROBLEMS[problem]()
    tasks = len(taskset)
    weights = torch.linspace(0.2, 1.0, tasks)
    head_weights = torch.linspace(1.5, 0.5, tasks)
    jacobian, z_grads, shared_grad, head_grad = autograd_oracle(
        model, taskset, batch, weights, head_weights
    )
    engine = get_engine(engine_name)(model, taskset, Budget("flops", 1e30), batch, **options)
    close = {"atol": 1e-5, "rtol": 1e-5}

    state = engine.forward(batch)
    torch.testing.assert_close(engine.representation_gradients(state), z_grads, **close)
    if engine_name == "representation":
        with pytest.raises(RuntimeError, match="representation"):
            engine.shared_jacobian(state)
    else:
        torch.testing.assert_close(engine.shared_jacobian(state), jacobian, **close)
        torch.testing.assert_close(
            engine.combine(weights, engine.shared_jacobian(state)), shared_grad, **close
        )
    torch.testing.assert_close(engine.shared_gradient(state, weights), shared_grad, **close)
    # backward reusing the cached z-gradients, heads weighted separately
    model.zero_grad(set_to_none=True)
    engine.backward(state, weights, head_weights=head_weights)
    torch.testing.assert_close(grads_of(model.shared_parameters()), shared_grad, **close)
    torch.testing.assert_close(grads_of(model.task_parameters()), head_grad, **close)
    # fresh states: one fused backward (heads weighted alike), and separate head weights
    _, _, _, head_grad_same = autograd_oracle(model, taskset, batch, weights, weights)
    for heads, expected_heads in ((None, head_grad_same), (head_weights, head_grad)):
        model.zero_grad(set_to_none=True)
        engine.backward(engine.forward(batch), weights, head_weights=heads)
        torch.testing.assert_close(grads_of(model.shared_parameters()), shared_grad, **close)
        torch.testing.assert_close(grads_of(model.task_parameters()), expected_heads, **close)


def test_apply_shared_direction_writes_the_direction_and_head_gradients() -> None:
    model, taskset, batch = stacked_problem()
    ones = torch.ones(len(taskset))
    jacobian, _, _, head_grad = autograd_oracle(model, taskset, batch, ones, ones)
    engine = get_engine("batched")(model, taskset, Budget("flops", 1e30), batch)
    direction = torch.randn(jacobian.shape[1])
    model.zero_grad(set_to_none=True)
    engine.apply_shared_direction(engine.forward(batch), direction, ones)
    torch.testing.assert_close(grads_of(model.shared_parameters()), direction)
    torch.testing.assert_close(grads_of(model.task_parameters()), head_grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "method_name, engine_name",
    [
        ("ew", "representation"),
        ("mgda", "loop"),
        ("mgda", "batched"),
        ("mgda_ub", "loop"),
        ("mgda_ub", "representation"),
    ],
)
def test_charged_flops_match_flop_counter(method_name: str, engine_name: str) -> None:
    """Six steps on the multidigits LeNet: the budget's tally within 5% of FlopCounterMode."""
    dataset_cls = DATASETS.get("multidigits")
    dataset = dataset_cls(dataset_cls.Params(train_pairs=192, val_pairs=1, test_pairs=1))
    inputs, targets = dataset.load().train.tensors
    taskset = dataset_cls.taskset(dataset.params)
    batches = [(inputs[i : i + 32], targets[i : i + 32]) for i in range(0, 192, 32)]
    torch.manual_seed(0)
    method_cls = METHODS.get(method_name)
    method = method_cls(method_cls.Params(), dataset.build_model(), taskset, TrainingConfig())
    budget = Budget("flops", 1e15)
    engine = get_engine(engine_name)(method.model, taskset, budget, batches[0])
    with FlopCounterMode(display=False) as counter:
        for batch in batches:
            method.step(batch, engine)
    measured = counter.get_total_flops()
    assert abs(budget.spent_flops - measured) / measured < 0.05, (budget.flops_by_pass, measured)


class ParameterEncoder(nn.Module):
    """The shared parameters θ (d,) themselves: z = θ for every sample, (B, d)."""

    def __init__(self, start: list[float]):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(start))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.expand(x.shape[0], -1)


class SquaredDistanceHeads(nn.Module):
    """Output t = ||z - c_t||^2 >= 0, so an L1 loss against 0 is L_t(θ) = ||θ - c_t||^2.

    ``unused`` is a head parameter with zero gradient: the engines expect task parameters.
    """

    def __init__(self, centres: torch.Tensor):
        super().__init__()
        self.register_buffer("centres", centres)
        self.unused = nn.Parameter(torch.zeros(len(centres)))

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        distances = ((z[:, None, :] - self.centres[None]) ** 2).sum(-1) + 0 * self.unused
        return [distances[:, t : t + 1] for t in range(len(self.centres))]


@pytest.mark.parametrize("method_name", ["mgda", "mgda_ub"])
def test_mgda_ends_pareto_stationary_on_an_analytic_problem(method_name: str) -> None:
    """L_1 = ||θ - c_1||^2, L_2 = ||θ - c_2||^2: the Pareto set is the segment [c_1, c_2].

    From θ_0 off the segment, MGDA must end on it: the min-norm element of the hull of the exact
    gradients (computed here in closed form, solved independently) is below the tolerance.
    """
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    model = MultiTaskModel(ParameterEncoder([1.5, 2.0, 1.0]), SquaredDistanceHeads(centres), 2)
    taskset = TaskSet([TaskSpec(f"f{t}", "regression", 1, regression_loss="l1") for t in range(2)])
    batch = (torch.zeros(4, 1), torch.zeros(4, 2))
    method_cls = METHODS.get(method_name)
    training = TrainingConfig(optimizer="sgd", lr=0.02, momentum=0.0)
    method = method_cls(method_cls.Params(), model, taskset, training)
    engine = get_engine(method_cls.default_engine)(model, taskset, Budget("flops", 1e30), batch)
    for _ in range(400):
        log = method.step(batch, engine)
    theta = model.encoder.theta.detach().double()
    gradients = torch.stack([2 * (theta - c) for c in centres.double()])
    gram = gradients @ gradients.T
    weights = min_norm_weights(gram)
    min_norm_squared = float(weights @ gram @ weights)
    assert min_norm_squared < 1e-5 * float(gram.diagonal().max()), min_norm_squared
    assert float(log["direction_norm"]) ** 2 < 1e-5 * float(gram.diagonal().max())
    assert abs(float(theta[2])) < 1e-3 and float(theta[0] + theta[1]) == pytest.approx(
        1.0, abs=1e-3
    )
    assert 0 < float(theta[0]) < 1


def test_mgda_and_mgda_ub_weights_coincide_when_dz_dtheta_is_an_isometry() -> None:
    """With z = θ for every sample, A A^T = B·I: MGDA-UB's weights equal MGDA's (docstring
    claim)."""
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -0.5]])
    taskset = TaskSet([TaskSpec(f"f{t}", "regression", 1, regression_loss="l1") for t in range(3)])
    batch = (torch.zeros(4, 1), torch.zeros(4, 3))
    logs = {}
    for name in ("mgda", "mgda_ub"):
        model = MultiTaskModel(ParameterEncoder([0.3, 2.0]), SquaredDistanceHeads(centres), 3)
        method_cls = METHODS.get(name)
        method = method_cls(
            method_cls.Params(), model, taskset, TrainingConfig(optimizer="sgd", lr=1e-3)
        )
        engine = get_engine("loop")(model, taskset, Budget("flops", 1e30), batch)
        logs[name] = method.step(batch, engine)
    torch.testing.assert_close(
        logs["mgda"]["weights"], logs["mgda_ub"]["weights"], atol=1e-5, rtol=0
    )


def test_resume_keeps_the_warm_start() -> None:
    """state_dict carries the solver's warm start: a resumed run logs the same weights."""
    taskset = tiny_taskset(3)
    batches = tiny_batches(3, count=6)
    method_cls = METHODS.get("mgda")
    first = method_cls(method_cls.Params(), tiny_model(3), taskset, TrainingConfig(lr=1e-2))
    engine = get_engine("batched")(first.model, taskset, Budget("flops", 1e30), batches[0])
    for batch in batches[:3]:
        first.step(batch, engine)
    saved = copy.deepcopy(first.state_dict())
    second = method_cls(
        method_cls.Params(), tiny_model(3, seed=5), taskset, TrainingConfig(lr=1e-2)
    )
    second.load_state_dict(saved)
    engine2 = get_engine("batched")(second.model, taskset, Budget("flops", 1e30), batches[0])
    for batch in batches[3:]:
        torch.testing.assert_close(
            first.step(batch, engine)["weights"], second.step(batch, engine2)["weights"]
        )


@pytest.mark.parametrize("engine_name", ["batched", "representation"])
def test_dropout_heads_use_the_steps_own_forward(engine_name: str) -> None:
    """Heads with dropout are not rerun per task: the z-gradients are those of the step's losses."""
    torch.manual_seed(4)
    heads = SeparateHeads([nn.Sequential(nn.Dropout(0.5), nn.Linear(6, 2)) for _ in range(3)])
    model = MultiTaskModel(nn.Sequential(nn.Linear(8, 6), nn.ReLU()), heads, 3)
    taskset = TaskSet([TaskSpec(f"t{t}", "classification", 2) for t in range(3)])
    batch = (torch.randn(16, 8), torch.randint(0, 2, (16, 3)).float())
    engine = get_engine(engine_name)(model, taskset, Budget("flops", 1e30), batch)
    state = engine.forward(batch)
    expected = torch.stack(
        [
            torch.autograd.grad(loss, state.detached, retain_graph=True)[0]
            for loss in state.task_losses
        ]
    )
    torch.testing.assert_close(engine.representation_gradients(state), expected)


def _keyword_options(engine_class: type) -> dict[str, object] | None:
    """The constructor's options after (model, taskset, budget, calibration batch) with their
    defaults; None when it takes them as ``**options`` (validated by its own model)."""
    import inspect

    parameters = list(inspect.signature(engine_class).parameters.values())[4:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name: p.default for p in parameters}


@pytest.mark.parametrize("engine_name", ["loop", "batched", "representation", "ray_sharded"])
def test_options_model_declares_exactly_the_constructors_options(engine_name: str) -> None:
    """Each engine's ``options_model`` (what a suite is checked against, and what the engines
    page lists) has the constructor's keyword options, with the same defaults, each described,
    and forbids any other; the defaults pass the model's own strict validation."""
    engine_class = get_engine(engine_name)
    model = engine_class.options_model
    constructor = _keyword_options(engine_class)
    if model is None:  # takes no options, and says so when given one
        with pytest.raises(TypeError, match=f"engine {engine_name!r} takes no options"):
            batch = tiny_batches(2, count=1)[0]
            engine_class(tiny_model(2), tiny_taskset(2), Budget("flops", 1e30), batch, chunk=2)
        return
    assert model.model_config.get("extra") == "forbid"
    assert constructor is not None
    assert {name: field.default for name, field in model.model_fields.items()} == constructor
    assert all(field.description for field in model.model_fields.values())
    model.model_validate(constructor, strict=True)


def test_deepspeed_options_model_is_described() -> None:
    pytest.importorskip("deepspeed")
    from mtlbench.cluster.deepspeed_engine import DeepSpeedEngine, DeepSpeedOptions

    assert get_engine("deepspeed") is DeepSpeedEngine
    assert DeepSpeedEngine.options_model is DeepSpeedOptions
    assert DeepSpeedOptions.model_config.get("extra") == "forbid"
    assert all(field.description for field in DeepSpeedOptions.model_fields.values())
