"""Test-only methods: ones that fail on purpose, and a min-norm (MGDA-like) one on the Gram API.

``register()`` adds them to the method registry (also used as a Ray ``worker_process_setup_hook``
so Ray workers know them); ``unregister()`` removes them, so the shared property checks, which
run on every registered method, never see them.
"""

from __future__ import annotations

import os
import signal
import time

import torch
from mtlbench.harness.method import Method, MethodParams
from mtlbench.harness.registry import METHODS
from mtlbench.methods.ew import EqualWeighting
from mtlbench.methods.min_norm import min_norm_weights
from pydantic import Field


class FailAtParams(MethodParams):
    """at_step: the step (1-based) at which the method misbehaves."""

    at_step: int = Field(3, ge=1)


class _TestEW(EqualWeighting):
    """EW with fixed weights 1/T and its own params (no EW parameter checks)."""

    produces_weights = False

    def __init__(self, params, model, taskset, training):
        Method.__init__(self, params, model, taskset, training)
        self.fixed_weights = torch.full((len(taskset),), 1.0 / len(taskset))
        self.steps_done = 0

    @classmethod
    def check(cls, params, taskset) -> None:
        return None


class _FailingBase(_TestEW):
    Params = FailAtParams  # type: ignore[assignment]

    def misbehave(self) -> None:
        raise NotImplementedError

    def step(self, batch, engine):
        self.steps_done += 1
        if self.steps_done == self.params.at_step:
            self.misbehave()
        return super().step(batch, engine)


class RaisesMethod(_FailingBase):
    """Raises RuntimeError at ``at_step``."""

    def misbehave(self) -> None:
        raise RuntimeError(f"test_raises: failing on purpose at step {self.steps_done}")


class NanMethod(_FailingBase):
    """From ``at_step`` on, its task weights are NaN, so parameters and losses turn NaN."""

    def misbehave(self) -> None:
        self.fixed_weights = torch.full_like(self.fixed_weights, float("nan"))


class KillsWorkerMethod(_FailingBase):
    """SIGKILLs its own process at ``at_step`` (only ever run on a Ray worker)."""

    def misbehave(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class SlowParams(MethodParams):
    """seconds_per_step: sleep added to every EW step (a run that takes a known wall time)."""

    seconds_per_step: float = Field(0.25, ge=0)


class SlowMethod(_TestEW):
    """EW that sleeps ``seconds_per_step`` each step (no extra compute)."""

    Params = SlowParams  # type: ignore[assignment]

    def step(self, batch, engine):
        time.sleep(self.params.seconds_per_step)
        return super().step(batch, engine)


class GramParams(MethodParams):
    """kill_actor_at_step: at that step, SIGKILL one of the engine's actors (0: never)."""

    kill_actor_at_step: int = Field(0, ge=0)


class GramMinNorm(Method):
    """Min-norm weights from ``engine.shared_gram``, update Σ aₜgₜ from ``shared_gradient``."""

    Params = GramParams
    produces_weights = True
    weights_on_simplex = True

    def __init__(self, params, model, taskset, training):
        super().__init__(params, model, taskset, training)
        self.steps_done = 0

    def step(self, batch, engine):
        self.steps_done += 1
        self.optimizer.zero_grad(set_to_none=True)
        state = engine.forward(batch)
        if self.steps_done == self.params.kill_actor_at_step:
            os.kill(engine.actor_pids()[-1], signal.SIGKILL)
        weights = min_norm_weights(engine.shared_gram(state))
        direction = engine.shared_gradient(state, weights)
        engine.apply_shared_direction(state, direction, torch.ones_like(weights))
        self.optimizer.step()
        restarts = float(getattr(getattr(engine, "stats", None), "restarts", 0))
        return {
            "task_losses": state.task_losses.detach(),
            "weights": weights,
            "actor_restarts": torch.tensor(restarts),
        }


TEST_METHODS = {
    "test_raises": RaisesMethod,
    "test_nan": NanMethod,
    "test_kills_worker": KillsWorkerMethod,
    "test_slow": SlowMethod,
    "test_gram_min_norm": GramMinNorm,
}


def register() -> None:
    for name, cls in TEST_METHODS.items():
        METHODS.register(name)(cls)


def unregister() -> None:
    for name in TEST_METHODS:
        METHODS.unregister(name)
