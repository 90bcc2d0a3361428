"""Processes for ``test_node_shared.py``: importable by name, so that spawned children find
them (pytest's importlib mode gives test modules names a child cannot import)."""

from __future__ import annotations

from mtlbench.cluster.node_shared import BarrierAborted, NodeBarrier, SharedArena

WIDTH = 1000


def member(layout, rank: int, exchange_id: int, results) -> None:
    """Write row ``rank`` (value rank + 1), meet the others, then sum every row."""
    arena = SharedArena.attach(layout)
    arena["rows"][rank].fill_(rank + 1.0)
    NodeBarrier(layout.barrier_paths, rank).arrive_and_wait(exchange_id, timeout_s=60)
    results.put((rank, arena["rows"].sum(dim=1).tolist()))


def waiter(layout, exchange_id: int, results) -> None:
    """Member 0 of a two-member barrier whose peer never comes: reports how it left."""
    try:
        NodeBarrier(layout.barrier_paths, 0).arrive_and_wait(exchange_id, timeout_s=60)
        results.put("left")
    except BarrierAborted:
        results.put("aborted")
