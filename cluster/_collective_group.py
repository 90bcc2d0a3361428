"""Forming a ``torch.distributed`` process group among Ray actors and the driver, privately.

The pattern Ray Train uses to give its workers a torch process group (a rendezvous store that
one process hosts, every member building its backend from the store's address, its rank and the
world size), with one difference: nothing here touches the process's *default* group
(``dist.init_process_group``). The driver may run DeepSpeed, whose engine owns the default
group; an actor may be reused by another engine. So each member builds a backend object itself:

- ``ProcessGroupGloo(store, rank, size, options)`` on the CPU, ``ProcessGroupNCCL(store, rank,
  size, options)`` on a GPU (torch 2.13 exposes both constructors in ``torch.distributed``).
  The exchange calls the backend's own collectives (``allreduce``, ``broadcast``,
  ``alltoall_base``), which take tensors and options and return a ``Work``; none of them looks
  the group up in torch's global registry. ``dist.new_group`` was the alternative, but every
  variant of it (``new_group``, ``split_group``, ``new_subgroups``) derives the group from the
  default one, which must exist first and span every process.
- The rendezvous store is a ``TCPStore`` hosted by the driver (:class:`GroupHost`). Each group
  lives under its own prefix of that store (``PrefixStore("mtlbench-collective/<generation>/")``):
  after an actor is replaced, the members form a new generation on the same store, with no key
  of the abandoned group in the way.
- Where the store listens: torch's ``TCPStore`` binds every interface when it opens its own
  socket, whatever host name it is given. When every member runs on the driver's node the host
  opens the listening socket itself on 127.0.0.1 and hands it over (``master_listen_fd``), and
  gloo's devices bind 127.0.0.1 too: nothing listens beyond loopback, as for the project's local
  Ray (``cluster/_ray_setup.py``). Across nodes, the driver's node address.

A member counts the bytes it sends, per step and by kind (:class:`ByteCounter`); the exchange
steps themselves are in ``cluster/collective.py``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist

Backend = Literal["gloo", "nccl"]
STORE_PREFIX = "mtlbench-collective"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class GroupAddress:
    """Everything a member needs to join one generation of a group (picklable: sent to actors).

    host, port: the rendezvous store. world_size: members, ranks 0 … world_size − 1.
    generation: which group of that store (a new one after a member is replaced).
    backend: ``gloo`` (CPU tensors) or ``nccl`` (CUDA tensors). timeout_s: how long a member
    waits for its peers, in the rendezvous and in every collective, in seconds.
    """

    host: str
    port: int
    world_size: int
    generation: int
    backend: Backend
    timeout_s: float

    @property
    def loopback(self) -> bool:
        """True when every member runs on the store's node (and binds loopback only)."""
        return ipaddress.ip_address(self.host).is_loopback


@dataclass
class ByteCounter:
    """Bytes one member sent to other members, by kind, for each step.

    ``sent_bytes``: the current step's counts, e.g. ``{"reshard": 4096, "gram": 256}``;
    ``steps``: the closed steps' counts, oldest first. What a rank sends to itself is not counted
    (it never leaves the device).
    """

    sent_bytes: dict[str, int] = field(default_factory=dict)
    steps: list[dict[str, int]] = field(default_factory=list)

    def add(self, kind: str, nbytes: int) -> None:
        """Count ``nbytes`` sent under ``kind`` (a kind with nothing sent gets no entry)."""
        if nbytes:
            self.sent_bytes[kind] = self.sent_bytes.get(kind, 0) + int(nbytes)

    def next_step(self) -> dict[str, int]:
        """Close the current step; returns its counts."""
        closed = self.sent_bytes
        self.steps.append(closed)
        self.sent_bytes = {}
        return closed


def _backend_for(device: torch.device) -> Backend:
    return "nccl" if device.type == "cuda" else "gloo"


class GroupHost:
    """A group's rendezvous store, hosted by the driver for as long as the group may be re-formed.

    world_size: members (the driver, when it is one, is rank 0). device: the members' device kind
    (``cpu`` → gloo, ``cuda`` → NCCL). all_local: every member runs on this node (the store and
    gloo then bind 127.0.0.1); else ``node_address`` (this node's address, e.g. Ray's
    ``ray.util.get_node_ip_address()``) is bound. timeout_s: see :class:`GroupAddress`.
    """

    def __init__(
        self,
        world_size: int,
        device: torch.device | str = "cpu",
        *,
        all_local: bool = True,
        node_address: str | None = None,
        timeout_s: float = 120.0,
    ):
        if world_size < 1:
            raise ValueError(f"world_size: must be >= 1, got {world_size}")
        if not all_local and not node_address:
            raise ValueError("node_address: required when members run on other nodes")
        self.world_size = world_size
        self.backend = _backend_for(torch.device(device))
        self.timeout_s = timeout_s
        self.host = LOOPBACK if all_local else str(node_address)
        # The listening socket is opened here so that it binds ``self.host`` only (see the
        # module notes). The store takes its descriptor over and closes it when it is destroyed,
        # so the Python socket lets go of it (a second close could hit a reused descriptor).
        listening = socket.create_server((self.host, 0))
        self.port = int(listening.getsockname()[1])
        descriptor = listening.detach()
        try:
            self.store: dist.TCPStore | None = dist.TCPStore(
                self.host,
                self.port,
                None,  # members come and go across generations: no fixed count to wait for
                True,
                timeout=datetime.timedelta(seconds=timeout_s),
                wait_for_workers=False,
                master_listen_fd=descriptor,
                use_libuv=True,
            )
        except Exception:
            os.close(descriptor)
            raise
        self.generation = 0

    def address(self, generation: int | None = None) -> GroupAddress:
        """The address of ``generation`` (default: the current one)."""
        return GroupAddress(
            self.host,
            self.port,
            self.world_size,
            self.generation if generation is None else generation,
            self.backend,
            self.timeout_s,
        )

    def next_generation(self) -> GroupAddress:
        """A fresh group on the same store, for every member to join (after a replacement)."""
        self.generation += 1
        return self.address()

    def close(self) -> None:
        """Drop the host's reference to the store: it stops serving (and closes its socket) once
        no member of this process holds it either. Members' groups stay usable until their own
        ``close``."""
        self.store = None


def _node_address() -> str:
    """This process's node address: Ray's when Ray is connected, else the host name's."""
    import ray

    if ray.is_initialized():
        return str(ray.util.get_node_ip_address())
    return socket.gethostbyname(socket.gethostname())


def _gloo_backend(store: Any, rank: int, address: GroupAddress) -> Any:
    # The stubs name only the base ``Options``; gloo's own (with ``_devices``) is ``_Options``.
    options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
    # gloo's listening pair binds the interface named here: loopback when every member is local,
    # else this member's own node address (Ray's, inside a Ray process).
    bind = LOOPBACK if address.loopback else _node_address()
    options._devices = [dist.ProcessGroupGloo.create_device(hostname=bind)]
    options._timeout = datetime.timedelta(seconds=address.timeout_s)
    return dist.ProcessGroupGloo(store, rank, address.world_size, options)


def _nccl_backend(store: Any, rank: int, address: GroupAddress, device: torch.device) -> Any:
    # Imported here: CPU builds of torch have no ProcessGroupNCCL.
    from torch.distributed import ProcessGroupNCCL

    torch.cuda.set_device(device)
    options = ProcessGroupNCCL.Options()
    options._timeout = datetime.timedelta(seconds=address.timeout_s)
    return ProcessGroupNCCL(store, rank, address.world_size, options)


class CollectiveMember:
    """One rank of one generation of a group: its backend, its device and its byte counter.

    address: from :meth:`GroupHost.address`. rank: 0 … world_size − 1. device: where its
    tensors live (a CUDA device for NCCL). store: the host's own store, for the driver's member
    (else the member connects to ``address`` as a client). Joining blocks until every rank of
    the generation has joined (at most ``address.timeout_s``).
    """

    def __init__(
        self,
        address: GroupAddress,
        rank: int,
        device: torch.device | str = "cpu",
        store: Any = None,
    ):
        if not 0 <= rank < address.world_size:
            raise ValueError(f"rank: must be in [0, {address.world_size}), got {rank}")
        self.address = address
        self.rank = rank
        self.world_size = address.world_size
        self.device = torch.device(device)
        if _backend_for(self.device) != address.backend:
            raise ValueError(f"device: {self.device} cannot join a {address.backend} group")
        timeout = datetime.timedelta(seconds=address.timeout_s)
        if store is None:
            store = dist.TCPStore(address.host, address.port, None, False, timeout=timeout)
        prefixed = dist.PrefixStore(f"{STORE_PREFIX}/{address.generation}/", store)
        if address.backend == "nccl":
            self.backend = _nccl_backend(prefixed, rank, address, self.device)
        else:
            self.backend = _gloo_backend(prefixed, rank, address)
        self._store = store  # the client connection the backend's store wraps
        self.traffic = ByteCounter()

    def close(self) -> None:
        """Leave the group: abort its communicators (peers may already be gone)."""
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.abort()
            self.backend = None
