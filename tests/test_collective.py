"""Collective exchange (``cluster/collective.py``): gloo on the CPU, 2 Ray actors and the driver.

The driver is rank 0 (it hosts the store and solves), two real Ray actors ranks 1 and 2, on a
local Ray (``start_local(num_cpus=2)``, loopback only). Checked against one process's float64
arithmetic: the all-reduced Gram equals J Jᵀ, the gathered direction Σₜ wₜ gₜ, the bytes each rank
counted the algorithm's formula; a group re-formed after a member is killed works; one rank alone
(the single-GPU path) works.
"""

from __future__ import annotations

import subprocess
import threading

import _collective_members
import numpy as np
import pytest
import ray
import torch
from mtlbench.cluster._ray_setup import start_local
from mtlbench.cluster.collective import (
    CollectiveMember,
    GroupHost,
    OutgoingRows,
    ShardLayout,
    expected_collective_bytes,
    run_exchange,
)
from ray import cloudpickle

TOLERANCE = 1e-5  # relative to the largest entry; float32 exchange against a float64 reference


@pytest.fixture(scope="module")
def local_ray():
    start_local(num_cpus=2)
    cloudpickle.register_pickle_by_value(_collective_members)
    yield
    cloudpickle.unregister_pickle_by_value(_collective_members)
    ray.shutdown()


def jacobian(num_tasks: int, num_params: int, seed: int) -> torch.Tensor:
    """A random (T, P) float32 Jacobian."""
    return torch.randn(num_tasks, num_params, generator=torch.Generator().manual_seed(seed))


def solver(gram: torch.Tensor) -> torch.Tensor:
    """Some weights that depend on the Gram (the test checks they reach every rank)."""
    return torch.softmax(-gram.diagonal() / gram.diagonal().max(), dim=0)


def assert_close(actual: torch.Tensor | np.ndarray, reference: torch.Tensor) -> None:
    actual = torch.tensor(np.asarray(actual), dtype=torch.float64)
    scale = reference.abs().max().item()
    assert (actual - reference).abs().max().item() <= TOLERANCE * scale


def exchange_among(actors, host: GroupHost, driver: CollectiveMember, rows, layout) -> None:
    """One exchange of J = ``rows`` with the driver as rank 0, checked against float64."""
    starts = [0, *np.cumsum(layout.task_counts).tolist()]
    calls = [
        actor.exchange.remote(
            rows[starts[rank] : starts[rank + 1]].numpy(),
            list(layout.task_counts),
            list(layout.column_bounds),
        )
        for rank, actor in enumerate(actors, start=1)
    ]
    # the driver writes its rows into the send buffer piece by piece, as VJPs would
    own_rows = OutgoingRows(layout, 0)
    for index, row in enumerate(rows[: starts[1]]):
        own_rows.write_row(index, list(row.split([3, 1, layout.num_params - 4])))
    gram, weights, direction = run_exchange(driver, own_rows, layout, solver)
    reference = rows.double()
    expected_gram = reference @ reference.T
    assert_close(gram, expected_gram)
    assert direction is not None
    assert_close(direction, weights.double() @ reference)  # Σₜ wₜ gₜ
    expected_bytes = expected_collective_bytes(
        layout.num_tasks, layout.num_params, layout.task_counts, layout.column_bounds, 4
    )
    counted = [driver.traffic.steps[-1]]
    for actor_gram, actor_weights, actor_bytes in ray.get(calls, timeout=60):
        assert_close(actor_gram, expected_gram)
        assert np.array_equal(actor_weights, weights.numpy())
        counted.append(actor_bytes)
    assert counted == [{k: v for k, v in rank.items() if v} for rank in expected_bytes]


def form_group(actors, host: GroupHost, ranks) -> CollectiveMember:
    """Every actor joins the host's current generation, at its rank, with the driver as 0."""
    address = host.address()
    joins = [actor.join.remote(address, rank) for actor, rank in zip(actors, ranks, strict=True)]
    driver = CollectiveMember(address, 0, store=host.store)
    assert ray.get(joins, timeout=60) == [address.generation] * len(actors)
    return driver


def test_gram_direction_and_bytes_over_gloo_then_a_killed_member_is_replaced(local_ray) -> None:
    member_class = ray.remote(num_cpus=0.5)(_collective_members.ExchangeMember)
    actors = [member_class.remote() for _ in range(2)]
    host = GroupHost(3)
    assert host.address().loopback
    listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
    assert f"127.0.0.1:{host.port} " in listening  # the store binds loopback only
    driver = form_group(actors, host, [1, 2])
    # uneven tasks and columns, then a rank with no task and a rank with no column
    exchange_among(
        actors, host, driver, jacobian(5, 37, 0), ShardLayout((2, 1, 2), (0, 10, 25, 37))
    )
    # a step that wants no direction (NaN weights: every rank skips the gather), then the group
    # is still in step: the next exchange is exact
    layout = ShardLayout.even(3, 8, 3)
    rows = jacobian(3, 8, 5)
    skipped = [
        actor.exchange.remote(rows[rank : rank + 1].numpy(), [1, 1, 1], list(layout.column_bounds))
        for rank, actor in enumerate(actors, start=1)
    ]
    assert run_exchange(driver, rows[:1], layout, lambda gram: None)[2] is None
    assert all(np.isnan(weights).all() for _, weights, _ in ray.get(skipped, timeout=60))
    exchange_among(actors, host, driver, jacobian(4, 9, 1), ShardLayout((0, 3, 1), (0, 4, 4, 9)))

    # rank 2 is killed while ranks 0 and 1 wait for it inside an exchange: both get an error
    # (gloo sees the connection close), not a hang; then the group is re-formed without it
    layout = ShardLayout.even(6, 20, 3)
    rows = jacobian(6, 20, 4)
    waiting = actors[0].exchange.remote(rows[2:4].numpy(), [2, 2, 2], list(layout.column_bounds))
    threading.Timer(1.0, ray.kill, args=(actors[1],), kwargs={"no_restart": True}).start()
    with pytest.raises(RuntimeError, match=r"[Cc]onnection closed"):
        run_exchange(driver, rows[:2], layout, solver)
    with pytest.raises(ray.exceptions.RayTaskError, match=r"[Cc]onnection closed"):
        ray.get(waiting, timeout=60)
    actors[1] = member_class.remote()
    driver.close()
    host.next_generation()
    driver = form_group(actors, host, [1, 2])
    assert host.generation == 1
    exchange_among(actors, host, driver, jacobian(6, 50, 2), ShardLayout.even(6, 50, 3))
    driver.close()
    host.close()


def test_one_rank_alone_is_the_single_device_path() -> None:
    host = GroupHost(1)
    member = CollectiveMember(host.address(), 0, store=host.store)
    rows = jacobian(3, 11, 3)
    gram, weights, direction = run_exchange(member, rows, ShardLayout.even(3, 11, 1), solver)
    reference = rows.double()
    assert_close(gram, reference @ reference.T)
    assert direction is not None
    assert_close(direction, weights.double() @ reference)
    assert member.traffic.steps == [{}]  # nothing leaves a lone rank
    assert expected_collective_bytes(3, 11, [3], [0, 11], 4) == [
        {"reshard": 0, "gram": 0, "weights": 0, "direction": 0}
    ]
    # a step that wants no direction: NaN weights tell every rank to skip the gather
    _, weights, direction = run_exchange(member, rows, ShardLayout.even(3, 11, 1), lambda g: None)
    assert direction is None and bool(weights.isnan().all())
    member.close()
    host.close()


def test_expected_bytes_by_hand_and_layout_errors_name_the_field() -> None:
    # T = 5, P = 37, ranks own (2, 1, 2) tasks and (10, 15, 12) columns, float32
    assert expected_collective_bytes(5, 37, [2, 1, 2], [0, 10, 25, 37], 4) == [
        {"reshard": 2 * 27 * 4, "gram": 25 * 4, "weights": 2 * 5 * 4, "direction": 0},
        {"reshard": 1 * 22 * 4, "gram": 25 * 4, "weights": 0, "direction": 15 * 4},
        {"reshard": 2 * 25 * 4, "gram": 25 * 4, "weights": 0, "direction": 12 * 4},
    ]
    with pytest.raises(ValueError, match="column_bounds"):
        ShardLayout((1, 1), (0, 5))
    with pytest.raises(ValueError, match="column_bounds"):
        ShardLayout((1, 1), (0, 5, 3))
    with pytest.raises(ValueError, match="task_counts"):
        expected_collective_bytes(3, 5, [1, 1], [0, 2, 5], 4)


def test_outgoing_rows_hold_each_ranks_block_of_the_rows() -> None:
    layout = ShardLayout((2, 3), (0, 4, 11))
    rows = jacobian(3, 11, 6)
    written = OutgoingRows(layout, 1)
    for index, row in enumerate(rows):  # pieces that cross the column boundary at 4
        written.write_row(index, [row[:3], row[3:9].view(2, 3), row[9:]])
    packed = OutgoingRows.packed(rows, layout, 1)
    assert torch.equal(written.buffer, packed.buffer)
    assert torch.equal(written.blocks[0], rows[:, :4]) and torch.equal(
        written.blocks[1], rows[:, 4:]
    )
    with pytest.raises(ValueError, match="pieces"):
        written.write_row(0, [rows[0, :5]])
