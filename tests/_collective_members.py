"""A Ray actor for ``test_collective.py``: one member of a collective group, driven by the test.

Shipped to the workers by value (``register_pickle_by_value``): pytest's importlib mode gives
test modules names a Ray worker cannot import.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from mtlbench.cluster.collective import CollectiveMember, GroupAddress, ShardLayout, run_exchange


class ExchangeMember:
    """Holds one :class:`CollectiveMember` at a time; ``join`` again to move to a new generation."""

    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.member: CollectiveMember | None = None

    def pid(self) -> int:
        return os.getpid()

    def join(self, address: GroupAddress, rank: int) -> int:
        """Leave the current group, if any; join ``address`` as ``rank``. Returns its generation."""
        if self.member is not None:
            self.member.close()
        self.member = CollectiveMember(address, rank)
        return address.generation

    def exchange(
        self, own_rows: np.ndarray, task_counts: list[int], column_bounds: list[int]
    ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """One exchange of ``own_rows`` (T_r, P); returns (Gram, weights, bytes sent)."""
        assert self.member is not None, "join first"
        layout = ShardLayout(tuple(task_counts), tuple(column_bounds))
        gram, weights, _ = run_exchange(self.member, torch.tensor(own_rows), layout)
        return gram.numpy(), weights.numpy(), self.member.traffic.steps[-1]
