"""Node-local shared tensors and the pipe barrier (``cluster/node_shared.py``), across real
processes: what one writes before arriving, every other reads after leaving; an abort releases a
waiting member; files are removed by their creator and orphans of dead creators are swept."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch
from _shm_members import WIDTH, member, waiter
from mtlbench.cluster.node_shared import (
    PREFIX,
    SHM_DIR,
    BarrierAborted,
    NodeBarrier,
    SharedArena,
    plan_layout,
)

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="no /dev/shm on this machine")
MEMBERS = 3


def test_rows_written_before_the_barrier_are_read_by_every_member_after_it() -> None:
    arena = SharedArena.create({"rows": ((MEMBERS, WIDTH), torch.float32)}, MEMBERS)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    driver = NodeBarrier(arena.layout.barrier_paths, None)
    for exchange_id in (1, 2):
        arena["rows"].zero_()
        if exchange_id == 2:
            # stale arrivals of exchange 1 in every pipe (an abandoned attempt): they must not
            # count towards exchange 2, or member 0 would leave before the others wrote
            for _ in range(MEMBERS - 1):
                driver._post(1)
        processes = [
            context.Process(target=member, args=(arena.layout, rank, exchange_id, results))
            for rank in range(MEMBERS)
        ]
        for process in processes:
            process.start()
        seen = dict(results.get(timeout=120) for _ in range(MEMBERS))
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0
        expected = [float(WIDTH * (rank + 1)) for rank in range(MEMBERS)]
        assert seen == dict.fromkeys(range(MEMBERS), expected)
    driver.close()
    files = [arena.layout.path, *arena.layout.barrier_paths]
    assert all(os.path.exists(path) for path in files)
    arena.close()
    assert not any(os.path.exists(path) for path in files)


def test_abort_releases_a_member_waiting_for_a_peer_that_never_comes() -> None:
    arena = SharedArena.create({"x": ((1,), torch.float32)}, 2)
    driver = NodeBarrier(arena.layout.barrier_paths, None)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    # an abort of another exchange is skipped: the member keeps waiting, here until its timeout
    driver.abort(6)
    process = context.Process(target=waiter, args=(arena.layout, 7, 1.5, results))
    process.start()
    assert results.get(timeout=120) == "timed out"
    process.join(timeout=60)
    # its own exchange's abort releases it at once
    process = context.Process(target=waiter, args=(arena.layout, 8, 60.0, results))
    process.start()
    driver.abort(8)
    assert results.get(timeout=50) == "aborted"
    process.join(timeout=60)
    driver.close()
    arena.close()


def test_messages_of_a_later_phase_read_early_are_kept_for_it() -> None:
    """One read can return the next phase's arrival (or abort) with the current one: it must be
    kept for that phase, not dropped with the stale ones (a member would wait forever)."""
    arena = SharedArena.create({"x": ((1,), torch.float32)}, 2)
    first, second = (NodeBarrier(arena.layout.barrier_paths, rank) for rank in (0, 1))
    for exchange_id in (3, 4, 5, -6):  # 3: stale; 4, 5: two phases; -6: an early abort
        first._post(exchange_id)
    second.arrive_and_wait(4, timeout_s=5)  # one read returns 3, 4, 5 and -6
    second.arrive_and_wait(5, timeout_s=0.5)  # already arrived: no wait
    with pytest.raises(BarrierAborted):
        second.arrive_and_wait(6, timeout_s=0.5)
    first._post(7)
    first._post(3)  # stale again: must not count for 8
    with pytest.raises(TimeoutError):
        second.arrive_and_wait(8, timeout_s=0.3)
    for barrier in (first, second):
        barrier.close()
    arena.close()


def test_arena_layout_aligns_every_tensor_and_views_have_the_dtypes() -> None:
    tensors = {
        "a": ((3,), torch.float32),  # 12 bytes
        "count": ((), torch.int64),
        "b": ((2, 5), torch.float64),
    }
    layout = plan_layout("/unused", tensors)
    offsets = {name: entry[0] for name, entry in layout.entries.items()}
    # the creator's nonce first, then each tensor on its own 64-byte boundary
    assert offsets == {"_nonce": 0, "a": 64, "count": 128, "b": 192} and layout.nbytes == 320
    arena = SharedArena.create(tensors)
    arena["b"].fill_(2.5)
    arena["count"].fill_(7)
    assert arena["a"].dtype == torch.float32 and arena["b"].shape == (2, 5)
    assert float(arena["b"].sum()) == 25.0 and int(arena["count"]) == 7
    assert float(arena["a"].abs().sum()) == 0.0  # zero-filled, untouched by its neighbours
    arena.close()


def test_too_large_an_arena_names_dev_shm_and_leaves_no_file() -> None:
    free = os.statvfs(SHM_DIR).f_bavail * os.statvfs(SHM_DIR).f_frsize
    before = set(os.listdir(SHM_DIR))
    with pytest.raises(OSError, match=r"/dev/shm has .* MiB free"):
        SharedArena.create({"huge": ((free // 4 + 2**20,), torch.float32)})
    assert set(os.listdir(SHM_DIR)) <= before


def test_files_of_a_dead_creator_are_swept_by_the_next_arena() -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    pid = int(dead.stdout)
    orphans = [
        os.path.join(SHM_DIR, f"{PREFIX}-{pid}-abc123{suffix}") for suffix in ("", "-barrier-0")
    ]
    for path in orphans:
        open(path, "wb").close()
    arena = SharedArena.create({"x": ((1,), torch.float32)})
    assert not any(os.path.exists(path) for path in orphans)
    assert os.path.exists(arena.layout.path)  # its own (live) file stays
    arena.close()


def test_attach_refuses_a_file_it_cannot_see_or_that_holds_another_arena() -> None:
    """A process that shares the Ray node id but not the driver's /dev/shm (a Ray client driver,
    another container) must fall back, not read zeros: a missing file or a foreign nonce raises."""
    arena = SharedArena.create({"x": ((4,), torch.float32)})
    assert float(SharedArena.attach(arena.layout)["x"].sum()) == 0.0  # the real one maps
    missing = dataclasses.replace(arena.layout, path=arena.layout.path + "-elsewhere")
    with pytest.raises(OSError, match="not here"):
        SharedArena.attach(missing)
    foreign = dataclasses.replace(arena.layout, nonce=arena.layout.nonce + 1)
    with pytest.raises(OSError, match="holds another arena"):
        SharedArena.attach(foreign)
    arena.close()
