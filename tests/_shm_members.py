"""Processes for ``test_node_shared.py``: importable by name, so that spawned children find
them (pytest's importlib mode gives test modules names a child cannot import)."""

from __future__ import annotations

import time

from mtlbench.cluster.node_shared import BarrierAborted, NodeBarrier, SharedArena

WIDTH = 1000
STAGGER_S = 0.3  # member k writes k · STAGGER_S late: member 0 must wait for the others


def member(layout, rank: int, exchange_id: int, results) -> None:
    """Write row ``rank`` (value rank + 1) after a rank-dependent delay, meet the others, then
    sum every row: without a working barrier the early members would read zeros."""
    arena = SharedArena.attach(layout)
    time.sleep(rank * STAGGER_S)
    arena["rows"][rank].fill_(rank + 1.0)
    NodeBarrier(layout.barrier_paths, rank).arrive_and_wait(exchange_id, timeout_s=60)
    results.put((rank, arena["rows"].sum(dim=1).tolist()))


def waiter(layout, exchange_id: int, timeout_s: float, results) -> None:
    """Member 0 of a two-member barrier whose peer never comes: reports how it left."""
    try:
        NodeBarrier(layout.barrier_paths, 0).arrive_and_wait(exchange_id, timeout_s=timeout_s)
        results.put("left")
    except BarrierAborted:
        results.put("aborted")
    except TimeoutError:
        results.put("timed out")
