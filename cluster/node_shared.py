"""Node-local shared tensors: one file under ``/dev/shm`` that a driver and its actors on the same
machine all map, so that a block one process writes is read by another with no message.

Used by engine ``ray_sharded`` (``transport: shared_memory``) for what crosses between the driver
and same-node actors at every step: the replicas' parameters, the Jacobian blocks of the
parameter-shard exchange and the combined direction. Only the tiny Gram blocks and weights, and
the calls that order the steps, still go through Ray.

Why hand-written rather than Ray's object store (also shared memory on one node): an object is
written once and sealed, so every step pays a fresh object per block (allocated, sealed,
registered with its owner, fetched by reference): about 4 ms per MB-sized block on the 2-core CI
machine, for a copy that takes 0.3 ms. Here the buffers are created once per engine and rewritten
in place. Why files rather than ``multiprocessing.shared_memory``: before Python 3.13, every
process that attaches a segment registers it with its resource tracker, which unlinks it when
that process exits, so a killed actor would destroy the driver's buffers.

A driver killed with SIGKILL cannot unlink its file; the next arena created on the machine
removes the files of drivers that are no longer alive (the driver's pid is in the name).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import select
import shutil
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

SHM_DIR = "/dev/shm"
PREFIX = "mtlbench-arena"
ALIGN = 64  # bytes: every tensor starts on a cache line (and on its dtype's alignment)
NONCE = "_nonce"
_NAME = re.compile(rf"^{PREFIX}-(\d+)-")  # the arena file and its barrier FIFOs


@dataclass(frozen=True)
class ArenaLayout:
    """Where each named tensor lies in the arena's file: name → (byte offset, shape, dtype)."""

    path: str
    nbytes: int
    entries: dict[str, tuple[int, tuple[int, ...], torch.dtype]]
    barrier_paths: tuple[str, ...] = ()  # one FIFO per barrier member (see NodeBarrier)
    nonce: int = 0  # written into the file by its creator: ``attach`` checks it is that file


def plan_layout(
    path: str, tensors: dict[str, tuple[tuple[int, ...], torch.dtype]], members: int = 0
) -> ArenaLayout:
    """Pack ``tensors`` (name → (shape, dtype)) one after another, each aligned to ``ALIGN``,
    after an int64 nonce; name a barrier FIFO for each of ``members`` processes."""
    entries, offset = {}, 0
    for name, (shape, dtype) in {NONCE: ((1,), torch.int64), **tensors}.items():
        entries[name] = (offset, tuple(int(s) for s in shape), dtype)
        offset += -(-math.prod(shape) * dtype.itemsize // ALIGN) * ALIGN
    barrier = tuple(f"{path}-barrier-{rank}" for rank in range(members))
    nonce = int.from_bytes(os.urandom(7), "little") + 1
    return ArenaLayout(path, max(offset, ALIGN), entries, barrier, nonce)


def shared_memory_room() -> int:
    """Free bytes in ``/dev/shm`` (0 where there is none, e.g. macOS)."""
    if not os.path.isdir(SHM_DIR):
        return 0
    return shutil.disk_usage(SHM_DIR).free


def _remove_orphans() -> None:
    """Unlink arena files whose creating process is gone (a driver killed before it cleaned up)."""
    for name in os.listdir(SHM_DIR):
        match = _NAME.match(name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            _unlink(os.path.join(SHM_DIR, name))
        except PermissionError:
            pass  # alive, another user's


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _unlink_all(paths: tuple[str, ...]) -> None:
    for path in paths:
        _unlink(path)


class SharedArena:
    """Named tensors in one shared file: ``create`` in the driver, ``attach`` in an actor.

    ``arena[name]`` is a tensor of the layout's shape and dtype over the mapped file: writes by
    any process are seen by all (they must be ordered by the caller, here by Ray calls).
    The creator unlinks the file in ``close()`` or when the arena is garbage-collected.
    """

    def __init__(self, layout: ArenaLayout, owner: bool):
        self.layout = layout
        raw = torch.from_file(layout.path, shared=True, size=layout.nbytes, dtype=torch.uint8)
        self._tensors: dict[str, Tensor] = {}
        for name, (offset, shape, dtype) in layout.entries.items():
            stop = offset + math.prod(shape) * dtype.itemsize
            self._tensors[name] = raw[offset:stop].view(dtype).view(shape)
        files = (layout.path, *layout.barrier_paths)
        self._finalizer = weakref.finalize(self, _unlink_all, files) if owner else None

    @classmethod
    def create(
        cls, tensors: dict[str, tuple[tuple[int, ...], torch.dtype]], members: int = 0
    ) -> SharedArena:
        """A new zero-filled arena holding ``tensors`` (name → (shape, dtype)), with the FIFOs of
        a barrier among ``members`` processes (0: none).

        Raises OSError naming ``/dev/shm`` when it is missing or has too little room.
        """
        if not os.path.isdir(SHM_DIR):
            raise OSError(f"{SHM_DIR} does not exist on this machine (no node-local shared memory)")
        _remove_orphans()
        path = os.path.join(SHM_DIR, f"{PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        layout = plan_layout(path, tensors, members)
        room = shared_memory_room()
        if layout.nbytes > room:
            raise OSError(
                f"{SHM_DIR} has {room / 2**20:.0f} MiB free, the arena needs "
                f"{layout.nbytes / 2**20:.0f} MiB"
            )
        with open(path, "wb") as handle:  # sized but sparse: pages are taken when written
            handle.truncate(layout.nbytes)
        for fifo in layout.barrier_paths:
            os.mkfifo(fifo, 0o600)
        arena = cls(layout, owner=True)
        arena[NONCE].fill_(layout.nonce)
        return arena

    @classmethod
    def attach(cls, layout: ArenaLayout) -> SharedArena:
        """Map an arena another process created on this machine.

        Raises OSError when this process cannot see that file (another machine or container
        that shares the Ray node, a Ray client driver): missing, or holding another nonce.
        """
        if not os.path.exists(layout.path) or os.path.getsize(layout.path) != layout.nbytes:
            raise OSError(f"{layout.path}: not here (the arena lives on another machine?)")
        arena = cls(layout, owner=False)
        if int(arena[NONCE]) != layout.nonce:
            raise OSError(f"{layout.path}: holds another arena (a different machine's file)")
        return arena

    def __getitem__(self, name: str) -> Tensor:
        return self._tensors[name]

    def close(self) -> None:
        """Unlink the file (creator only); mappings stay valid until their tensors are freed."""
        if self._finalizer is not None:
            self._finalizer()


class BarrierAborted(RuntimeError):
    """The driver called the exchange off (a peer failed); the caller's work is discarded."""


class NodeBarrier:
    """A barrier among K processes on one machine, through one named pipe (FIFO) per member.

    Member k, done with exchange ``exchange_id``, writes that id (8 bytes, atomic in a pipe) into
    every other member's pipe, then reads its own pipe until it holds K − 1 copies of the id.
    A pipe's write and read are system calls ordered by the kernel, so what a member wrote to
    shared memory before arriving is visible to every member that leaves the barrier (on any
    CPU architecture, unlike a flag polled in shared memory). Ids must grow: one read may return
    messages of a later exchange (a phase that follows at once), which are kept for it, while
    those of earlier ones (an attempt abandoned after a failure) are dropped, so each attempt
    must use a new, larger id. The driver calls an exchange off with ``abort``: members waiting
    for it, or arriving at it later, raise ``BarrierAborted``.

    Why hand-written: Ray orders work only through the driver (a member's result reaches the
    others after a round trip through the owner: 7-9 ms measured on the CI machine at the end
    of a step, against 0.1 ms here), and neither Python nor Ray offers a named cross-process
    barrier.
    """

    def __init__(self, paths: tuple[str, ...], rank: int | None):
        """paths: one FIFO per member (an arena layout's ``barrier_paths``); rank: this member,
        or None for a driver that only aborts (it computes no share of its own)."""
        # O_RDWR: opening never blocks, and the pipe keeps a reader while its member is replaced
        self._own = os.open(paths[rank], os.O_RDWR | os.O_NONBLOCK) if rank is not None else None
        self._peers = [
            os.open(path, os.O_RDWR | os.O_NONBLOCK)
            for index, path in enumerate(paths)
            if index != rank
        ]
        self._early: Counter[int] = Counter()  # messages read for later exchanges (± their id)

    def _post(self, value: int) -> None:
        message = value.to_bytes(8, "little", signed=True)
        for fd in self._peers:
            os.write(fd, message)

    def arrive_and_wait(
        self,
        exchange_id: int,
        timeout_s: float,
        check: Callable[[], None] | None = None,
        check_every_s: float = 0.2,
    ) -> None:
        """Tell every peer this member is done with ``exchange_id``; wait until all peers are.

        check: called every ``check_every_s`` seconds while waiting; it raises to stop waiting
        (the driver, a member when it computes a share itself, checks that no actor died:
        nobody else would release it).
        """
        own = self._own
        if own is None:
            raise RuntimeError("barrier: a process that only aborts (rank None) cannot arrive")
        self._post(exchange_id)
        self._early = Counter({v: n for v, n in self._early.items() if abs(v) >= exchange_id})
        if self._early.pop(-exchange_id, 0):
            raise BarrierAborted(f"exchange {exchange_id} called off by the driver")
        needed, pending = len(self._peers) - self._early.pop(exchange_id, 0), b""
        deadline = time.monotonic() + timeout_s
        while needed > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"barrier: peers did not arrive within {timeout_s:.0f} s")
            wait_s = remaining if check is None else min(remaining, check_every_s)
            if not select.select([own], [], [], wait_s)[0]:
                if check is not None:
                    check()
                continue
            try:
                pending += os.read(own, 4096)
            except BlockingIOError:
                continue
            whole = len(pending) - len(pending) % 8
            for offset in range(0, whole, 8):
                value = int.from_bytes(pending[offset : offset + 8], "little", signed=True)
                if value == exchange_id:
                    needed -= 1
                elif value == -exchange_id:
                    raise BarrierAborted(f"exchange {exchange_id} called off by the driver")
                elif abs(value) > exchange_id:  # a later exchange's: kept for it
                    self._early[value] += 1
            pending = pending[whole:]

    def abort(self, exchange_id: int) -> None:
        """Driver: release every member waiting in ``exchange_id`` (they raise BarrierAborted)."""
        self._post(-exchange_id)

    def close(self) -> None:
        for fd in [*self._peers, *([self._own] if self._own is not None else [])]:
            os.close(fd)
        self._peers, self._own = [], None
