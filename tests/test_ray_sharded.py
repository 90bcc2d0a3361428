"""Engine ``ray_sharded``: equal to the ``loop`` engine, honest budget and bytes, survives a
killed actor, on every transport (shared memory, object store, collectives over gloo).

The actors compute their rows with the ``batched`` engine's VJPs: one per-task heads pass when the
heads have ``forward_per_task`` (LeNet, the stacked MLP heads), batched heads VJPs when dropout in
the heads forbids a rerun; both are checked against ``loop`` and charged as made.

Two actors on a local Ray (``start_local(num_cpus=2)``, loopback only) that this module starts
and shuts down.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal

import _test_methods
import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
from _problems import tiny_batches, tiny_model, tiny_taskset
from mlflow.tracking import MlflowClient
from mtlbench.cluster._ray_setup import start_local
from mtlbench.cluster.collective import expected_collective_bytes
from mtlbench.cluster.node_shared import SHM_DIR
from mtlbench.datasets._models import multi_lenet
from mtlbench.harness.budget import Budget
from mtlbench.harness.config import parse_suite
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.model import MultiTaskModel, SeparateHeads, StackedMLPHeads
from mtlbench.harness.runner import run_suite
from mtlbench.harness.tasks import TaskSet, TaskSpec
from mtlbench.methods.imtl_g import impartial_weights
from mtlbench.methods.min_norm import min_norm_weights
from torch import nn

STEPS = 4


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    start_local(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def release_dropped_engines():
    """After each test, collect engines a test dropped without ``close`` (e.g. in ``train_tiny``)
    so their actors give their CPUs back before the next test places its own."""
    yield
    gc.collect()


def lenet_problem(batch_size: int = 16, count: int = STEPS):
    """LeNet (with Dropout2d: replicas must replay the driver's RNG), random 20×20 inputs, T = 2."""
    taskset = TaskSet(
        [TaskSpec("left", "classification", 10), TaskSpec("right", "classification", 10)]
    )
    generator = torch.Generator().manual_seed(3)
    batches = [
        (
            torch.rand(batch_size, 1, 20, 20, generator=generator),
            torch.randint(0, 10, (batch_size, 2), generator=generator).float(),
        )
        for _ in range(count)
    ]

    def build():
        torch.manual_seed(0)
        return multi_lenet(20, num_tasks=2)

    return build, taskset, batches


def dropout_heads_problem(count: int = STEPS):
    """Dropout in the encoder and in every head (no per-task heads rerun), T = 3, B = 16."""
    taskset = TaskSet([TaskSpec(f"t{t}", "classification", 2) for t in range(3)])
    generator = torch.Generator().manual_seed(5)
    batches = [
        (
            torch.randn(16, 8, generator=generator),
            torch.randint(0, 2, (16, 3), generator=generator).float(),
        )
        for _ in range(count)
    ]

    def build():
        torch.manual_seed(4)
        encoder = nn.Sequential(
            nn.Linear(8, 12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 6), nn.ReLU()
        )
        heads = SeparateHeads([nn.Sequential(nn.Dropout(0.5), nn.Linear(6, 2)) for _ in range(3)])
        return MultiTaskModel(encoder, heads, 3)

    return build, taskset, batches


def min_norm_steps(engine_name: str, build, taskset, batches, inspect: bool = True, **options):
    """Exact-MGDA-like steps through the engine API: Gram → min-norm weights → Σ aₜgₜ.

    On ``ray_sharded`` the Gram is asked twice per step (a method may): the second answer must be
    the first, with nothing recomputed, moved or charged (the budget and byte checks of the tests
    see one Gram per step). Returns (grams, jacobians, representation gradients, model, engine);
    with ``inspect`` off, only the passes the method needs are made (the last two lists stay empty).
    """
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    engine = get_engine(engine_name)(model, taskset, Budget("flops", 1e18), batches[0], **options)
    torch.manual_seed(1)  # the dropout stream, identical for both engines
    grams, jacobians, z_grads = [], [], []
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        state = engine.forward(batch)
        gram = engine.shared_gram(state)
        if engine_name == "ray_sharded":
            again = engine.shared_gram(state)
            assert torch.equal(again, gram) and again is not gram
        weights = min_norm_weights(gram)
        direction = engine.shared_combination(state, weights)
        if inspect:
            jacobians.append(engine.shared_jacobian(state).clone())
            z_grads.append(engine.representation_gradients(state).clone())
        engine.apply_shared_direction(state, direction, torch.ones_like(weights))
        optimizer.step()
        grams.append(gram)
    return grams, jacobians, z_grads, model, engine


def assert_close_lists(first, second, tolerance=1e-5):
    for a, b in zip(first, second, strict=True):
        assert torch.allclose(a, b, atol=tolerance, rtol=tolerance), float((a - b).abs().max())


HAS_SHM = os.path.isdir(SHM_DIR)
TRANSPORTS = [
    pytest.param("shared_memory", marks=pytest.mark.skipif(not HAS_SHM, reason="no /dev/shm")),
    "object_store",
]


@pytest.mark.parametrize("driver_share", [True, False], ids=["driver-share", "actors-only"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_equal_to_loop_engine_with_dropout_parameter_shards_budget_and_bytes(
    transport, driver_share
) -> None:
    """LeNet (Dropout2d), T = 2 over 2 workers (2 actors, or the driver and 1 actor), Gram by
    parameter shards, several steps.

    Equal to the loop engine to 1e-5 (Gram, Jacobian, representation gradients, parameters);
    charged the loop engine's passes plus the actors' replayed forwards, the workers' heads
    passes and the driver's own representation gradients; bytes per step as the module notes
    state, counted by the driver and, for what they receive, by the actors themselves.
    """
    build, taskset, batches = lenet_problem()
    reference = min_norm_steps("loop", build, taskset, batches)
    options = {"actors": 2, "transport": transport, "driver_share": driver_share}
    *sharded, model, engine = min_norm_steps("ray_sharded", build, taskset, batches, **options)
    assert engine.transport == transport
    # the driver's share takes the place of one actor (at most T workers)
    assert (engine.workers, engine.num_actors) == ((2, 1) if driver_share else (2, 2))
    # from the second step on, each step's rows started before the driver's forward
    assert (engine.stats.prefetched, engine.stats.prefetch_dropped) == (STEPS - 1, 0)
    for index in range(3):
        assert_close_lists(reference[index], sharded[index])
    for p_ref, p_sharded in zip(reference[3].parameters(), model.parameters(), strict=True):
        assert torch.allclose(p_ref, p_sharded, atol=1e-5, rtol=1e-5)
    assert not torch.equal(next(build().parameters()), next(model.parameters()))  # it trained

    loop = reference[4]
    actors, workers, tasks, steps, size = engine.num_actors, 2, 2, len(batches), 16
    # per step, beside the driver's forward: one replayed encoder forward per actor (the driver's
    # share uses its own forward) and one per-task heads pass (forward + backward) per worker
    # (LeNet's heads have ``forward_per_task``); T heads-input backwards on the driver for the
    # representation gradients this test asks for. The rest as loop charges it.
    passes = {
        "encoder_forward": 1 + actors,
        "heads_forward": 1 + workers,
        "heads_backward_input": workers + tasks,
    }
    assert_charged_passes(engine, loop, passes, steps, size)
    assert engine.budget.passes_by_kind["encoder_backward"] == tasks * steps  # T per step, as loop

    shared = engine.num_shared
    everything = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    bounds = engine.column_bounds
    widths = [bounds[1] - bounds[0], bounds[2] - bounds[1]]
    per_step = engine.stats.bytes_per_step()
    # worker k (task k) sends its row restricted to the other worker's columns: (W-1)/W · T · P · 4
    assert per_step["reshard"] == 4 * (widths[1] + widths[0]) == 4 * shared
    # what the actors return: their partial Grams and their slices of Σ aₜgₜ (the driver's own
    # share stays with it), and, only because this test asked for J, what the driver lacks of it
    assert per_step["gram_blocks"] == actors * tasks * tasks * 4
    assert per_step["weights"] == actors * tasks * 4
    own_columns = widths[0] if driver_share else 0
    assert per_step["direction"] == 4 * (shared - own_columns)
    if not driver_share:
        assert per_step["jacobian_columns"] == tasks * shared * 4
    elif transport == "shared_memory":  # the actor's row (the driver wrote its own)
        assert per_step["jacobian_columns"] == 1 * shared * 4
    else:  # the actor's column shard
        assert per_step["jacobian_columns"] == tasks * widths[1] * 4
    assert per_step["parameters"] == actors * everything  # the parameters changed every step
    # the same totals counted on the receiving side, by the actors themselves (the driver
    # receives the actor's row in its own columns: widths[0] numbers per step)
    received = [ray.get(actor.received_bytes.remote()) for actor in engine.pool.actors]
    driver_received = {"parameters": 0, "reshard": 4 * own_columns * steps}
    for kind in ("parameters", "reshard"):
        got = sum(r[kind] for r in received) + driver_received[kind]
        assert got == engine.stats.bytes_by_kind[kind], kind
    assert per_step["rng"] == actors * torch.get_rng_state().numel()
    assert engine.report()["driver_share"] == ("true" if driver_share else "false")
    engine.close()


def assert_charged_passes(engine, loop, passes: dict[str, int], steps: int, size: int) -> None:
    """Each kind in ``passes`` charged that many passes per step; every other kind (the Gram and
    the combination, arithmetic, included) charged as the loop engine charged it."""
    for kind in set(engine.budget.flops_by_pass) | set(loop.budget.flops_by_pass) | set(passes):
        if kind in passes:
            assert engine.budget.passes_by_kind[kind] == passes[kind] * steps, kind
            expected = engine.costs.flops(kind, size, passes[kind] * steps)
        else:
            expected = loop.budget.flops_by_pass.get(kind, 0.0)
        assert engine.budget.flops_by_pass.get(kind, 0.0) == pytest.approx(expected), kind


@pytest.mark.parametrize("driver_share", [True, False], ids=["driver-share", "actors-only"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_equal_to_loop_engine_mlp_uneven_shards_gather_and_sharded_representation(
    transport, driver_share
) -> None:
    """T = 5 over 2 actors (3 + 2 tasks), or the driver and 2 actors (2 + 2 + 1), Gram from
    gathered rows, z-gradients from the workers."""
    taskset, batches = tiny_taskset(5), tiny_batches(5, count=STEPS)

    def build():
        return tiny_model(5, seed=0)

    options = {
        "actors": 2,
        "gram": "gather",
        "shard_representation": True,
        "transport": transport,
        "driver_share": driver_share,
    }
    reference = min_norm_steps("loop", build, taskset, batches)
    *sharded, model, engine = min_norm_steps("ray_sharded", build, taskset, batches, **options)
    for index in range(3):
        assert_close_lists(reference[index], sharded[index])
    for p_ref, p_sharded in zip(reference[3].parameters(), model.parameters(), strict=True):
        assert torch.allclose(p_ref, p_sharded, atol=1e-5, rtol=1e-5)
    assert engine.task_shards == ([[0, 1], [2, 3], [4]] if driver_share else [[0, 1, 2], [3, 4]])
    per_step = engine.stats.bytes_per_step()
    actor_tasks = 3 if driver_share else 5  # rows the driver receives (its own 2 stay with it)
    assert per_step["jacobian_rows"] == actor_tasks * engine.num_shared * 4
    assert "reshard" not in per_step
    z_row = sharded[2][0][0].numel() * 4  # B · D floats
    assert per_step["representation_rows"] == actor_tasks * z_row
    # parameters put once per step and read once per actor, though two requests reached them
    everything = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert per_step["parameters"] == 2 * everything
    # per step: one replayed encoder forward per actor; per-task heads, so one heads pass per
    # worker for the Jacobian and one for the z-gradients (loop: T heads-input backwards,
    # reused for both)
    actors, workers, steps, size = 2, 2 + driver_share, len(batches), 32
    passes = {
        "encoder_forward": 1 + actors,
        "heads_forward": 1 + 2 * workers,
        "heads_backward_input": 2 * workers,
    }
    assert_charged_passes(engine, reference[4], passes, steps, size)
    engine.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_dropout_heads_fall_back_to_batched_heads_vjps_restricted_to_each_actors_tasks(
    transport,
) -> None:
    """Dropout in the heads: no per-task heads rerun; each actor replays the heads forward with the
    driver's RNG and makes one batched heads VJP per own task (T in all with the driver's, which
    reads its own forward's graph; charged so). T = 3 over the driver and 2 actors (1 task
    each), Gram by parameter shards, z-gradients from the workers too."""
    build, taskset, batches = dropout_heads_problem()
    options = {"actors": 2, "shard_representation": True, "transport": transport}
    reference = min_norm_steps("loop", build, taskset, batches)
    *sharded, model, engine = min_norm_steps("ray_sharded", build, taskset, batches, **options)
    for index in range(3):
        assert_close_lists(reference[index], sharded[index])
    for p_ref, p_sharded in zip(reference[3].parameters(), model.parameters(), strict=True):
        assert torch.allclose(p_ref, p_sharded, atol=1e-5, rtol=1e-5)
    assert (engine.workers, engine.num_actors, engine.driver_share) == (3, 2, 1)  # the default
    actors, tasks, steps, size = 2, 3, len(batches), 16
    # Jacobian: one replayed heads forward per actor, T heads VJPs; z-gradients: the same again
    passes = {
        "encoder_forward": 1 + actors,
        "heads_forward": 1 + 2 * actors,
        "heads_backward_input": 2 * tasks,
    }
    assert_charged_passes(engine, reference[4], passes, steps, size)
    everything = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert engine.stats.bytes_per_step()["parameters"] == actors * everything  # once per step
    engine.close()


@pytest.mark.parametrize("driver_share", [True, False], ids=["driver-share", "actors-only"])
def test_actor_killed_mid_run_completes_and_is_recorded_once(tmp_path, driver_share) -> None:
    """SIGKILL an actor at step 3, while it computes the step's prefetched rows: the run goes on
    from the driver's state, with the numbers of a run on the local loop engine; recorded once.
    EW on the sharded engine equals EW on loop. T = 2: the driver and 1 actor (the driver,
    waiting at the barrier, must notice the death), or 2 actors (the survivor must be released
    from the barrier)."""
    _test_methods.register()
    try:
        gram_method = {"name": "test_gram_min_norm"}
        options = {"actors": 2, "driver_share": driver_share}
        sharded = {"engine": "ray_sharded", "engine_options": options}
        suite = parse_suite(
            {
                "name": "actor-kill",
                "datasets": [
                    {
                        "name": "multidigits",
                        "params": {"train_pairs": 256, "val_pairs": 64, "test_pairs": 64},
                    }
                ],
                "methods": [
                    {
                        **gram_method,
                        **sharded,
                        "label": "killed",
                        "params": {"kill_actor_at_step": 3},
                    },
                    {**gram_method, "engine": "loop", "label": "reference"},
                    {"name": "ew", **sharded, "label": "ew-sharded"},
                    {"name": "ew", "engine": "loop", "label": "ew-loop"},
                ],
                "budget": {"flops": 1e15},
                "training": {"batch_size": 32, "max_steps": 6, "log_every": 1},
            }
        )
        summary = run_suite(suite, tmp_path, show_progress=False)
    finally:
        _test_methods.unregister()
    results = {r.spec.method_label: r for r in summary.recorded}
    assert {r.status for r in results.values()} == {"completed"}, [
        r.error for r in results.values()
    ]
    killed, reference = results["killed"], results["reference"]
    assert killed.steps == reference.steps == 6
    assert killed.history[-1]["actor_restarts"] >= 1
    # the engine's own report: same-machine actors exchange through shared memory (whose
    # barrier a killed peer must not hang), the restart counted, bytes per step recorded
    assert killed.engine_stats["transport"] == ("shared_memory" if HAS_SHM else "object_store")
    assert killed.engine_stats["actor_restarts"] == 1  # a survivor was released, not replaced
    assert killed.engine_stats["bytes_per_step.reshard"] > 0
    assert results["ew-sharded"].engine_stats == {"actors": 0}
    assert np.allclose(
        killed.solutions[0].test_losses, reference.solutions[0].test_losses, atol=1e-5
    )
    for row_killed, row_reference in zip(killed.history, reference.history, strict=True):
        for key in ("task_losses/left", "task_losses/right"):
            assert row_killed[key] == pytest.approx(row_reference[key], abs=1e-5)
    ew_sharded, ew_loop = results["ew-sharded"], results["ew-loop"]
    assert ew_sharded.solutions[0].test_losses == ew_loop.solutions[0].test_losses
    assert ew_sharded.budget == ew_loop.budget  # EW needs no per-task gradient: no actor, no charge

    rows = pq.read_table(tmp_path / "runs").to_pylist()
    assert sorted(r["method_label"] for r in rows) == [
        "ew-loop",
        "ew-sharded",
        "killed",
        "reference",
    ]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("actor-kill")
    children = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("mtlbench.kind") == "run"
    ]
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    killed_run = next(r for r in children if r.data.tags.get("mtlbench.engine.transport"))
    assert killed_run.data.metrics["engine.actor_restarts"] >= 1
    row = next(r for r in rows if r["method_label"] == "killed")
    recorded = json.loads(row["engine_stats"])
    assert (recorded["actors"], recorded["workers"]) == ((1, 2) if driver_share else (2, 2))


def batchnorm_problem(count: int = 6):
    """BatchNorm in the encoder (its running statistics move in every training forward), T = 4."""
    taskset, batches = tiny_taskset(4), tiny_batches(4, count=count)

    def build():
        torch.manual_seed(2)
        encoder = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16))
        return MultiTaskModel(encoder, StackedMLPHeads(4, 16, 4, hidden=None), 4)

    return build, taskset, batches


def every_other_step_asks(engine_name: str, build, taskset, batches, **options):
    """Even steps: min-norm weights from the Gram and Σ aₜgₜ; odd steps: a plain equal-weight
    backward (no per-task request), so every prefetch started after an even step is dropped."""
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    engine = get_engine(engine_name)(model, taskset, Budget("flops", 1e18), batches[0], **options)
    grams = []
    for index, batch in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        state = engine.forward(batch)
        if index % 2 == 0:
            grams.append(engine.shared_gram(state))
            weights = min_norm_weights(grams[-1])
            direction = engine.shared_combination(state, weights)
            engine.apply_shared_direction(state, direction, torch.ones_like(weights))
        else:
            engine.backward(state, torch.ones(len(taskset)))
        optimizer.step()
    if hasattr(engine, "close"):
        engine.close()  # its actors' CPUs go back to Ray (stats and budget stay readable)
    return grams, model, engine


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_prefetch_dropped_when_not_asked_is_not_charged_and_batchnorm_replays(transport) -> None:
    """A method that asks every other step, on a BatchNorm encoder: with prefetch the numbers
    and the budget are those without it (the dropped exchanges are not charged), and both equal
    the loop engine's; the forward's move of BatchNorm's running statistics is not taken for a
    change of the model."""
    build, taskset, batches = batchnorm_problem()
    reference, reference_model, _ = every_other_step_asks("loop", build, taskset, batches)
    runs = {
        prefetch: every_other_step_asks(
            "ray_sharded",
            build,
            taskset,
            batches,
            actors=2,
            transport=transport,
            prefetch=prefetch,
        )
        for prefetch in (True, False)
    }
    for grams, model, _engine in runs.values():
        assert_close_lists(reference, grams)
        for expected, got in zip(
            reference_model.state_dict().values(), model.state_dict().values(), strict=True
        ):
            assert torch.allclose(expected.float(), got.float(), atol=1e-5, rtol=1e-5)
    with_prefetch, without = runs[True][2], runs[False][2]
    assert with_prefetch.budget.passes_by_kind == without.budget.passes_by_kind
    assert with_prefetch.budget.flops_by_pass == pytest.approx(without.budget.flops_by_pass)
    # steps 1, 3, 5 follow an asking step: prefetched, never asked for, dropped (the driver
    # shares by default, so its actors wait at the barrier for rows it never writes: released)
    assert with_prefetch.driver_share == 1
    assert (with_prefetch.stats.prefetched, with_prefetch.stats.prefetch_dropped) == (3, 3)
    assert (without.stats.prefetched, without.stats.prefetch_dropped) == (0, 0)


def gram_only_or_two_combinations(engine_name: str, taskset, batches, **options):
    """Even steps ask for the Gram only (then an equal-weight backward); odd steps for the Gram
    and two Σ aₜgₜ (min-norm weights, then equal weights). Returns grams and directions."""
    model = tiny_model(len(taskset), seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    engine = get_engine(engine_name)(model, taskset, Budget("flops", 1e18), batches[0], **options)
    grams, directions = [], []
    for index, batch in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        state = engine.forward(batch)
        grams.append(engine.shared_gram(state))
        weights = min_norm_weights(grams[-1])
        if index % 2 == 0:
            engine.backward(state, torch.ones(len(taskset)))
        else:
            directions.append(engine.shared_combination(state, weights))
            directions.append(engine.shared_combination(state, torch.full_like(weights, 0.2)))
            engine.apply_shared_direction(state, directions[-2], torch.ones_like(weights))
        optimizer.step()
    return grams, directions, engine


@pytest.mark.skipif(not HAS_SHM, reason="no /dev/shm")
def test_one_call_steps_let_the_actors_go_without_a_combination_and_combine_twice() -> None:
    """The driver's share over shared memory runs a step in one actor call whose actors wait for
    the weights of Σ aₜgₜ: a step that asks for the Gram only must let them go (at the next
    forward), and a second Σ aₜgₜ of the same step goes through Ray calls. T = 5 over the
    driver and 2 actors; equal to the loop engine."""
    taskset, batches = tiny_taskset(5), tiny_batches(5, count=4)
    reference = gram_only_or_two_combinations("loop", taskset, batches)
    options = {"actors": 2, "transport": "shared_memory"}
    *sharded, engine = gram_only_or_two_combinations("ray_sharded", taskset, batches, **options)
    assert engine.workers == 3
    for index in range(2):
        assert_close_lists(reference[index], sharded[index])
    engine.close()


@pytest.mark.skipif(not HAS_SHM, reason="no /dev/shm")
def test_driver_share_failing_releases_the_actors_waiting_for_it() -> None:
    """The driver's own rows raise while its actors wait for them at the barrier: the error
    reaches the caller (not a hang), the actors are released, and the next step is exact."""
    build, taskset, batches = dropout_heads_problem(count=3)
    model = build()
    engine = get_engine("ray_sharded")(
        model, taskset, Budget("flops", 1e18), batches[0], actors=2, transport="shared_memory"
    )
    engine.forward(batches[0])  # no request yet: nothing in flight
    original = engine._own_rows

    def failing(*args, **kwargs):
        raise RuntimeError("driver rows failed")

    engine._own_rows = failing
    with pytest.raises(RuntimeError, match="driver rows failed"):
        engine.shared_gram(engine.forward(batches[1]))
    engine._own_rows = original
    reference_model = build()
    reference_model.load_state_dict(model.state_dict())
    reference = get_engine("loop")(reference_model, taskset, Budget("flops", 1e18), batches[0])
    torch.manual_seed(7)
    gram = engine.shared_gram(engine.forward(batches[2]))
    torch.manual_seed(7)
    expected = reference.shared_gram(reference.forward(batches[2]))
    assert torch.allclose(gram, expected, atol=1e-5, rtol=1e-5)
    assert engine.stats.restarts == 0  # released, not replaced
    engine.close()


@pytest.mark.skipif(not HAS_SHM, reason="no /dev/shm")
@pytest.mark.parametrize("driver_share", [True, False], ids=["driver-share", "actors-only"])
def test_batch_in_the_arena_follows_the_step_asked_for_and_ragged_batches_go_by_store(
    driver_share,
) -> None:
    """The batch travels in the arena when it has the calibration batch's shapes, else (a
    ragged last batch) through the object store. Three forwards, then the Grams asked newest
    first: the arena must hold the batch of the step asked for, not of the last forward. Equal
    to the loop engine, which keeps every step's graph."""
    build, taskset, batches = lenet_problem(count=3)
    ragged = (batches[2][0][:9], batches[2][1][:9])
    sequence = [batches[0], ragged, batches[1]]
    grams = {}
    options = {"actors": 2, "transport": "shared_memory", "driver_share": driver_share}
    for name, engine_options in (("loop", {}), ("ray_sharded", options)):
        engine = get_engine(name)(
            build(), taskset, Budget("flops", 1e18), batches[0], **engine_options
        )
        torch.manual_seed(3)  # the same dropout masks in both
        states = [engine.forward(batch) for batch in sequence]
        grams[name] = [engine.shared_gram(state) for state in reversed(states)]
        if name == "ray_sharded":
            assert engine._arena_batch_token == states[0].replay.token  # the last one asked
            engine.close()
    assert_close_lists(grams["loop"], grams["ray_sharded"])


def test_auto_transport_without_room_in_shared_memory_says_why_and_stays_exact(
    monkeypatch, caplog
) -> None:
    """``transport: auto`` where /dev/shm has no room (here: creating the arena fails as a full
    /dev/shm makes it fail): the run goes on over the object store, exact, and the reason is
    logged once and reported, not silent."""
    from mtlbench.cluster import sharded

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sharded.SharedArena, "create", no_room)
    build, taskset, batches = lenet_problem(count=1)
    engine = get_engine("ray_sharded")(
        build(), taskset, Budget("flops", 1e18), batches[0], actors=1, transport="auto"
    )
    reference = get_engine("loop")(build(), taskset, Budget("flops", 1e18), batches[0])
    with caplog.at_level(logging.WARNING, logger="mtlbench.cluster.sharded"):
        torch.manual_seed(5)  # the same dropout masks in both
        gram = engine.shared_gram(engine.forward(batches[0]))
    torch.manual_seed(5)
    expected = reference.shared_gram(reference.forward(batches[0]))
    assert torch.allclose(gram, expected, atol=1e-5, rtol=1e-5)
    assert engine.transport == "object_store"
    assert "No space left on device" in engine.report()["transport_reason"]
    warnings = [r for r in caplog.records if "object store" in r.getMessage()]
    assert len(warnings) == 1
    engine.close()


def test_transport_option_errors_name_the_field() -> None:
    build, taskset, batches = lenet_problem(count=1)
    engine = get_engine("ray_sharded")
    with pytest.raises(ValueError, match=r"engine_options\.transport: expected one of"):
        engine(build(), taskset, Budget("flops", 1e18), batches[0], transport="tcp")
    with pytest.raises(ValueError, match=r"engine_options\.driver_share: expected true, false"):
        engine(build(), taskset, Budget("flops", 1e18), batches[0], driver_share="yes")
    with pytest.raises(ValueError, match=r"engine_options\.transport: shared_memory holds CPU"):
        engine(
            build(),
            taskset,
            Budget("flops", 1e18),
            batches[0],
            transport="shared_memory",
            gpus_per_actor=1,
        )


@pytest.mark.parametrize("name", ["mgda", "mgda_ub"])
def test_registered_mgda_methods_on_ray_sharded_match_loop(name: str) -> None:
    """The registered methods (not a test double) through ``ray_sharded``: the same min-norm
    weights and losses as through ``loop``, step for step, T = 5 over the default workers (on
    the CPU: the driver's share and 1 actor)."""
    from _method_checks import train_tiny

    _, _, reference = train_tiny(name, engine="loop", num_tasks=5, budget_steps=40)
    _, _, sharded = train_tiny(name, engine="ray_sharded", num_tasks=5, budget_steps=40)
    steps = min(len(reference), len(sharded))
    assert steps >= 5
    for ref, got in zip(reference[:steps], sharded[:steps], strict=True):
        assert torch.allclose(ref["weights"], got["weights"], atol=1e-5)
        assert torch.allclose(ref["task_losses"], got["task_losses"], atol=1e-5)


# ---- transport: collective (torch.distributed among the workers; gloo on the CPU) -------------
def gram_weighting_steps(weighting, engine_name: str, taskset, batches, kill=None, **options):
    """A Gram weighting's steps through the engine API: Gram → weights → Σ aₜgₜ → update, T =
    len(taskset) on ``tiny_model``. ``kill``: {step: "before_gram" | "before_combination"}, when
    to SIGKILL the engine's last actor (by PID). Returns (grams, directions, model, engine)."""
    model = tiny_model(len(taskset), seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    engine = get_engine(engine_name)(model, taskset, Budget("flops", 1e18), batches[0], **options)
    grams, directions = [], []
    for step, batch in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        state = engine.forward(batch)
        if (kill or {}).get(step) == "before_gram":
            os.kill(engine.actor_pids()[-1], signal.SIGKILL)
        grams.append(engine.shared_gram(state))
        weights = weighting(grams[-1])
        if (kill or {}).get(step) == "before_combination":
            os.kill(engine.actor_pids()[-1], signal.SIGKILL)
        directions.append(engine.shared_combination(state, weights))
        engine.apply_shared_direction(state, directions[-1], torch.ones_like(weights))
        optimizer.step()
    return grams, directions, model, engine


def imtl_g_weights(gram: torch.Tensor) -> torch.Tensor:
    """IMTL-G's weights as the registered method forms them (float64, symmetrized)."""
    gram64 = gram.double()
    weights = impartial_weights((gram64 + gram64.T) / 2, torch.finfo(gram.dtype).eps)
    return weights.to(gram.dtype)


GRAM_WEIGHTINGS = {"mgda": min_norm_weights, "imtl_g": imtl_g_weights}


@pytest.mark.parametrize(
    ("weighting", "driver_share"), [("mgda", True), ("imtl_g", False)], ids=["mgda", "imtl_g"]
)
def test_collective_equal_to_loop_and_bytes_per_rank_as_the_formulas(weighting, driver_share):
    """T = 5 over 2 actors and, with the driver's share, the driver (2 + 2 + 1 tasks; else the
    driver is group rank 0 with no task and no column), 4 steps of a Gram weighting: Grams,
    directions and parameters equal the loop engine's to 1e-5; the bytes each rank counted as
    sent equal ``expected_collective_bytes`` (the docs page's formulas) times the steps."""
    taskset, batches = tiny_taskset(5), tiny_batches(5, count=STEPS)
    weights_of = GRAM_WEIGHTINGS[weighting]
    *reference, reference_model, loop = gram_weighting_steps(weights_of, "loop", taskset, batches)
    options = {"actors": 2, "transport": "collective", "driver_share": driver_share}
    *sharded, model, engine = gram_weighting_steps(
        weights_of, "ray_sharded", taskset, batches, **options
    )
    report = engine.report()
    assert (report["transport"], report["transport_reason"]) == ("collective", "requested")
    for expected, got in zip(reference, sharded, strict=True):
        assert_close_lists(expected, got)
    for p_ref, p_sharded in zip(reference_model.parameters(), model.parameters(), strict=True):
        assert torch.allclose(p_ref, p_sharded, atol=1e-5, rtol=1e-5)
    assert (engine.stats.prefetched, engine.stats.prefetch_dropped) == (STEPS - 1, 0)
    # charged as on the other transports: a replayed encoder forward per actor, one per-task
    # heads pass per worker (the stacked heads have ``forward_per_task``), the rest as loop
    workers = 2 + driver_share
    passes = {"encoder_forward": 3, "heads_forward": 1 + workers, "heads_backward_input": workers}
    assert_charged_passes(engine, loop, passes, STEPS, 32)
    # the group's layout, from the engine's shards: the driver is rank 0 in either case
    counts = [len(shard) for shard in engine.task_shards]
    bounds = list(engine.column_bounds)
    if not driver_share:
        counts, bounds = [0, *counts], [0, *bounds]
    assert counts == ([2, 2, 1] if driver_share else [0, 3, 2])
    per_exchange = expected_collective_bytes(5, engine.num_shared, counts, bounds, 4)
    expected = [
        {kind: STEPS * nbytes for kind, nbytes in rank.items() if nbytes} for rank in per_exchange
    ]
    assert engine.collective_bytes_sent == expected
    engine.close()


def test_collective_actor_killed_reforms_the_group_and_keeps_the_numbers() -> None:
    """SIGKILL an actor (by PID) once while its prefetched rows are computed, before the Gram,
    and once between the Gram and Σ aₜgₜ: each time the run goes on with a replacement in a new
    generation of the group, with the loop engine's numbers."""
    taskset, batches = tiny_taskset(4), tiny_batches(4, count=STEPS)
    weights_of = GRAM_WEIGHTINGS["mgda"]
    *reference, _, _ = gram_weighting_steps(weights_of, "loop", taskset, batches)
    kill = {1: "before_gram", 2: "before_combination"}
    options = {"actors": 2, "transport": "collective"}
    *sharded, _, engine = gram_weighting_steps(
        weights_of, "ray_sharded", taskset, batches, kill=kill, **options
    )
    for expected, got in zip(reference, sharded, strict=True):
        assert_close_lists(expected, got)
    assert engine.stats.restarts == 2
    assert engine._group_host.generation == 2  # formed, then re-formed after each death
    engine.close()


def test_options_model_takes_collective_and_names_an_unknown_option() -> None:
    from mtlbench.cluster.sharded import RayShardedEngine, RayShardedOptions

    assert RayShardedEngine.options_model is RayShardedOptions
    assert RayShardedOptions.model_validate({"transport": "collective"}).transport == "collective"
    with pytest.raises(ValueError, match="chunk"):
        RayShardedOptions.model_validate({"chunk": 2})
    with pytest.raises(ValueError, match="driver_share"):
        RayShardedOptions.model_validate({"driver_share": "yes"})
