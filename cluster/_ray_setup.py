"""Connecting to Ray: one place that decides which cluster a process talks to, and how safely.

``connect(address)`` joins ``address`` (``host:port``, ``ray://host:10001``, ``auto``), else
``RAY_ADDRESS``, else starts a local cluster with :func:`start_local`. Returns whether this call
started the cluster, so the caller that started it is the one that shuts it down.

Security (a Ray cluster runs whatever code a client sends it):

- A local cluster (:func:`start_local`, the only ``ray.init`` that starts Ray in mtlbench) listens
  on the loopback interface only: Ray 2.60 binds its gRPC servers (GCS, raylet, workers, agents)
  to every interface unless the node's IP is 127.0.0.1, and it turns a requested 127.0.0.1 into
  the machine's network address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the single-machine
  mode Ray uses on macOS and Windows). ``start_local`` sets that mode for its ``ray.init`` only.
  Authentication is left to ``RAY_AUTH_MODE``: unset, Ray 2.60 turns token authentication on
  for a new local cluster (it says so in one warning line and creates ``~/.ray/auth_token`` if
  missing), which keeps other users of the same machine out too. Only for a loopback-only
  cluster may a caller set ``RAY_AUTH_MODE=disabled`` (the tests do).
- A cluster on a network address is started outside mtlbench (``cluster/recipes``), always with
  ``RAY_AUTH_MODE=token``; a client reaches it with the same token (``RAY_AUTH_TOKEN``,
  ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``). mtlbench never disables authentication
  for a connection to an address.

``MTLBENCH_RAY_RUNTIME_ENV`` (a JSON object) is passed to ``ray.init`` as the runtime
environment of this driver's workers, e.g. ``{"env_vars": {"HF_HOME": "/scratch"}}``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

RUNTIME_ENV_VAR = "MTLBENCH_RAY_RUNTIME_ENV"
# Ray's switch between a multi-node cluster and one bound to 127.0.0.1 (read at import by
# ``ray._private.ray_constants`` and by every Ray process Ray starts).
SINGLE_MACHINE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def _runtime_env() -> dict[str, Any] | None:
    text = os.environ.get(RUNTIME_ENV_VAR)
    return json.loads(text) if text else None


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Inside: Ray treats this machine as a single-node cluster at 127.0.0.1 (so every server it
    starts binds the loopback interface). The processes it starts keep that setting."""
    from ray._private import ray_constants

    saved_env = os.environ.get(SINGLE_MACHINE_VAR)
    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_VAR] = "0"
    # Hand-set: this process imported Ray before the variable was set; Ray has no public switch.
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        if saved_env is None:
            os.environ.pop(SINGLE_MACHINE_VAR, None)
        else:
            os.environ[SINGLE_MACHINE_VAR] = saved_env


def start_local(num_cpus: int | None = None, **init_options: Any) -> Any:
    """Start a Ray cluster on this machine that listens on loopback only (see the module notes).

    num_cpus: CPUs Ray may schedule (None: all); init_options: further ``ray.init`` keywords
    (``num_gpus``, ``object_store_memory``, ``runtime_env``, ...). Authentication: Ray's
    default (token) unless the caller set ``RAY_AUTH_MODE``. Returns ``ray.init``'s context
    (``.address_info["gcs_address"]``: where other drivers on this machine join it).
    """
    import ray

    options: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "configure_logging": False,
        "runtime_env": _runtime_env(),
        **init_options,
    }
    with _loopback_only():
        context = ray.init(address="local", num_cpus=num_cpus, **options)
    node_ip = ray.util.get_node_ip_address()
    if node_ip not in LOOPBACK_ADDRESSES:
        ray.shutdown()
        raise RuntimeError(f"a local Ray must listen on loopback only; it started at {node_ip}")
    return context


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Make sure this process is connected to Ray. True if this call started a local cluster."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local"):
        start_local(num_cpus)
        return True
    ray.init(
        address=address,
        logging_level=logging.WARNING,
        configure_logging=False,
        runtime_env=_runtime_env(),
    )
    return False
