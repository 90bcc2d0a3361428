"""Connecting to Ray: one place that decides which cluster a process talks to.

``connect(address)`` joins ``address`` (``host:port``, ``ray://host:10001``, ``auto``), else
``RAY_ADDRESS``, else starts a local cluster on this machine. A local start sets
``RAY_AUTH_MODE=disabled`` unless the caller chose a mode (Ray 2.60 warns about token
authentication on every start otherwise). Returns whether this call started the cluster, so the
caller that started it is the one that shuts it down.

``MTLBENCH_RAY_RUNTIME_ENV`` (a JSON object) is passed to ``ray.init`` as the runtime
environment of this driver's workers, e.g. ``{"env_vars": {"HF_HOME": "/scratch"}}``.
"""

from __future__ import annotations

import json
import logging
import os

RUNTIME_ENV_VAR = "MTLBENCH_RAY_RUNTIME_ENV"


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Make sure this process is connected to Ray. True if this call started a local cluster."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env = (
        json.loads(os.environ[RUNTIME_ENV_VAR]) if os.environ.get(RUNTIME_ENV_VAR) else None
    )
    if address in (None, "local"):
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=False,
            runtime_env=runtime_env,
        )
        return True
    ray.init(
        address=address,
        logging_level=logging.WARNING,
        configure_logging=False,
        runtime_env=runtime_env,
    )
    return False
