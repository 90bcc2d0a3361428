"""The loss weightings (rlw, uw, dwa, gls, stch, famo) against their papers' closed forms.

Every oracle is derived here, independently of the method's code: softmax of normal draws (RLW),
the stationary point and autograd gradient of UW's loss, epoch-mean loss ratios worked out by
hand (DWA), autograd through the scalarized losses themselves (GLS, STCH, FAMO's softmax
Jacobian), a reference Adam on FAMO's logits, and the budget of an EW step. Each method also
resumes from ``state_dict`` exactly where an uninterrupted run goes.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from _problems import tiny_batches, tiny_model, tiny_taskset
from mtlbench.harness.budget import Budget
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.method import Method, TrainingConfig
from mtlbench.harness.registry import METHODS

T = 3


def make(name: str, training: TrainingConfig | None = None, seed: int = 0, **params: Any) -> Method:
    method_cls = METHODS.get(name)
    torch.manual_seed(seed)
    return method_cls(
        method_cls.Params.model_validate(params),
        tiny_model(T, seed=seed),
        tiny_taskset(T),
        training or TrainingConfig(lr=1e-2),
    )


def engine_for(method: Method, batch, limit: float = 1e30):
    return get_engine("loop")(method.model, method.taskset, Budget("flops", limit), batch)


def frozen(method: Method) -> Method:
    """The model's optimizer takes steps of size 0: gradients stay readable, parameters fixed."""
    method.optimizer = torch.optim.SGD(method.model.parameters(), lr=0.0)
    return method


def step_gradients(method: Method, engine, batch) -> tuple[dict, list[torch.Tensor]]:
    """The method's step log and the parameter gradients its step wrote."""
    log = method.step(batch, engine)
    return log, [p.grad.clone() for p in method.model.parameters()]


def autograd_gradients(model, objective) -> list[torch.Tensor]:
    return [g.clone() for g in torch.autograd.grad(objective, list(model.parameters()))]


def assert_gradients_equal(actual, expected) -> None:
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7)


def batch_losses(method: Method, batch) -> torch.Tensor:
    inputs, targets = batch
    return method.taskset.losses(method.model(inputs), targets)


# ---- RLW --------------------------------------------------------------------------------------
def test_rlw_weights_are_softmax_of_normal_draws_from_its_generator() -> None:
    method = make("rlw")
    replay = torch.Generator().manual_seed(0)
    replay.set_state(method.weighting_state()["generator"])
    losses = torch.ones(T)
    previous = None
    for _ in range(5):
        expected = torch.softmax(torch.randn(T, generator=replay, dtype=torch.float64), 0)
        weights = method.weights(losses)
        torch.testing.assert_close(weights, expected)
        assert previous is None or not torch.equal(weights, previous)
        previous = weights


def test_rlw_weights_average_to_the_expected_softmax_of_a_normal() -> None:
    method = make("rlw", seed=3)
    draws = torch.stack([method.weights(torch.ones(T)) for _ in range(4000)])
    assert (draws >= 0).all() and torch.allclose(draws.sum(1), torch.ones(4000, dtype=draws.dtype))
    # E[softmax(eps)] by an independent Monte Carlo estimate; by symmetry every entry is 1/T
    normals = torch.randn(200_000, T, generator=torch.Generator().manual_seed(7))
    reference = torch.softmax(normals, 1)
    torch.testing.assert_close(draws.mean(0).float(), reference.mean(0), atol=0.01, rtol=0)
    second_moment = (reference**2).mean(0)
    torch.testing.assert_close((draws**2).mean(0).float(), second_moment, atol=0.01, rtol=0)


# ---- UW ---------------------------------------------------------------------------------------
def test_uw_closed_form_gradient_matches_autograd() -> None:
    lr = 0.1
    sgd = TrainingConfig(optimizer="sgd", lr=lr, momentum=0.0)
    method = make("uw", sgd, initial_log_variance=0.3)
    losses = torch.tensor([0.2, 1.5, 7.0])
    s = torch.full((T,), 0.3, requires_grad=True)
    (0.5 * torch.exp(-s) * losses + 0.5 * s).sum().backward()
    weights = method.weights(losses)
    torch.testing.assert_close(weights, 0.5 * torch.exp(-s.detach()))
    method.after_backward(losses, weights)
    after = method.weighting_state()["log_variances"]
    torch.testing.assert_close((0.3 - after) / lr, s.grad)  # plain SGD: s -= lr * grad


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.2), ("adam", 0.05)])
def test_uw_converges_to_the_stationary_point_log_loss(optimizer: str, lr: float) -> None:
    method = make("uw", TrainingConfig(optimizer=optimizer, lr=lr, momentum=0.0))
    torch.testing.assert_close(method.weights(torch.ones(T)), torch.full((T,), 0.5 * math.exp(0.5)))
    losses = torch.tensor([0.3, 1.0, 4.0])
    for _ in range(3000):
        method.after_backward(losses, method.weights(losses))
    learned = method.weighting_state()["log_variances"]
    torch.testing.assert_close(learned, losses.log(), atol=1e-3, rtol=0)
    torch.testing.assert_close(method.weights(losses), 0.5 / losses, atol=1e-3, rtol=1e-3)


def test_uw_logs_its_log_variances() -> None:
    batch = tiny_batches(T, count=1)[0]
    method = make("uw")
    log = method.step(batch, engine_for(method, batch))
    torch.testing.assert_close(log["log_variances"], method.weighting_state()["log_variances"])


# ---- DWA --------------------------------------------------------------------------------------
def test_dwa_weights_are_softmax_of_epoch_loss_ratios() -> None:
    method = make("dwa")
    method.steps_per_epoch = 2  # what bind() sets
    epochs = [  # two steps per epoch, three tasks
        [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]],  # means 2, 2, 2
        [[1.0, 1.0, 2.0], [1.0, 3.0, 2.0]],  # means 1, 2, 2
        [[0.5, 1.0, 1.0], [0.5, 1.0, 3.0]],  # means .5, 1, 2
        [[0.1, 0.1, 0.1], [0.1, 0.1, 0.1]],
    ]
    expected = [
        torch.full((T,), 1 / 3),
        torch.full((T,), 1 / 3),
        torch.softmax(torch.tensor([1 / 2, 2 / 2, 2 / 2]) / 2.0, 0),
        torch.softmax(torch.tensor([0.5 / 1, 1 / 2, 2 / 2]) / 2.0, 0),
    ]
    for losses, weights in zip(epochs, expected, strict=True):
        for step_losses in losses:
            torch.testing.assert_close(method.weights(torch.tensor(step_losses)), weights)


def test_dwa_window_steps_and_a_clear_error_without_epochs() -> None:
    with pytest.raises(ValueError, match="window_steps"):
        make("dwa").weights(torch.ones(T))
    method = make("dwa", window_steps=1, temperature=0.5)
    for losses in ([1.0, 1.0, 1.0], [2.0, 1.0, 0.5]):
        method.weights(torch.tensor(losses))
    ratios = torch.tensor([2.0, 1.0, 0.5])
    torch.testing.assert_close(method.weights(torch.ones(T)), torch.softmax(ratios / 0.5, 0))


# ---- GLS --------------------------------------------------------------------------------------
def test_gls_gradient_is_the_geometric_mean_gradient() -> None:
    batches = tiny_batches(T, count=3)
    method = frozen(make("gls"))
    engine = engine_for(method, batches[0])
    for batch in batches:
        _, grads = step_gradients(method, engine, batch)
        geometric_mean = batch_losses(method, batch).prod() ** (1 / T)
        assert_gradients_equal(grads, autograd_gradients(method.model, geometric_mean))


# ---- STCH -------------------------------------------------------------------------------------
def test_stch_gradient_in_and_after_the_warmup() -> None:
    with pytest.raises(ValueError, match="warmup_steps"):
        make("stch").weights(torch.ones(T))  # no epoch length and no warmup_steps
    mu = 0.5
    batches = tiny_batches(T, count=8)
    method = frozen(make("stch", mu=mu, warmup_epochs=2, warmup_steps=4))  # epochs of 2 steps
    engine = engine_for(method, batches[0])
    recorded = []
    for index, batch in enumerate(batches):
        log, grads = step_gradients(method, engine, batch)
        losses = batch_losses(method, batch)
        if index < 4:  # warm-up: the mean of the log-losses
            recorded.append(log["task_losses"])
            objective = losses.log().mean()
        else:  # z: the mean losses of the warm-up's last epoch (steps 2 and 3)
            z = (recorded[2] + recorded[3]) / 2
            objective = mu * torch.logsumexp((losses / z).log() / mu, 0)
        assert_gradients_equal(grads, autograd_gradients(method.model, objective))


# ---- FAMO -------------------------------------------------------------------------------------
def test_famo_weights_and_logit_updates_match_the_closed_form() -> None:
    w_lr, gamma, eps = 0.025, 1e-3, 1e-8
    batches = tiny_batches(T, count=6)
    method = make("famo", TrainingConfig(optimizer="sgd", lr=0.5, momentum=0.0))
    engine = engine_for(method, batches[0])
    logits = torch.zeros(T, requires_grad=True)
    reference_adam = torch.optim.Adam([logits], lr=w_lr, weight_decay=gamma)
    for batch in batches:
        log = method.step(batch, engine)
        old = log["task_losses"]
        z = torch.softmax(logits.detach(), 0)
        expected = (z / (old + eps)) / (z / (old + eps)).sum()
        torch.testing.assert_close(log["weights"], expected)
        assert abs(float(log["weights"].sum()) - 1) < 1e-6
        with torch.no_grad():
            new = batch_losses(method, batch)  # the model after its step, same batch
        delta = (old + eps).log() - (new + eps).log()
        reference_adam.zero_grad()
        logits.grad = torch.autograd.grad((torch.softmax(logits, 0) * delta).sum(), logits)[0]
        reference_adam.step()
        torch.testing.assert_close(method.weighting_state()["logits"], logits.detach())
    assert logits.detach().abs().max() > 1e-3  # the logits did move


def test_famo_charges_one_extra_forward_per_step() -> None:
    batch = tiny_batches(T, count=1)[0]
    spends = {}
    for name in ("ew", "famo"):
        method = make(name)
        engine = engine_for(method, batch)
        method.step(batch, engine)
        spends[name] = (engine.budget.spent_flops, dict(engine.budget.flops_by_pass))
    extra = engine.costs.flops("encoder_forward", 32) + engine.costs.flops("heads_forward", 32)
    assert spends["famo"][0] == pytest.approx(spends["ew"][0] + extra)
    for kind, flops in spends["ew"][1].items():
        factor = 2 if kind in ("encoder_forward", "heads_forward") else 1
        assert spends["famo"][1][kind] == pytest.approx(factor * flops)


# ---- every method: resume ---------------------------------------------------------------------
RESUME_CASES = [
    ("rlw", {}),
    ("uw", {}),
    ("dwa", {}),
    ("gls", {}),
    ("stch", {"warmup_epochs": 5}),  # 10 warm-up steps: the snapshot falls inside z's window
    ("famo", {}),
]


@pytest.mark.parametrize(("name", "params"), RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_resume_continues_like_an_uninterrupted_run(name: str, params: dict[str, Any]) -> None:
    batches = tiny_batches(T, count=13)
    method = make(name, **params)
    engine = engine_for(method, batches[0])
    method.bind(engine, steps_per_epoch=2)
    for batch in batches[:9]:
        method.step(batch, engine)
    snapshot = copy.deepcopy(method.state_dict())
    uninterrupted = [method.step(batch, engine)["weights"] for batch in batches[9:]]

    resumed = make(name, seed=1, **params)  # another seed: nothing may come from construction
    resumed_engine = engine_for(resumed, batches[0])
    resumed.bind(resumed_engine, steps_per_epoch=2)
    resumed.load_state_dict(snapshot)
    replayed = [resumed.step(batch, resumed_engine)["weights"] for batch in batches[9:]]
    for first, second in zip(uninterrupted, replayed, strict=True):
        torch.testing.assert_close(second, first, rtol=0, atol=0)
    for a, b in zip(method.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
