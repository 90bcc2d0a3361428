"""The options of engine ``ray_sharded`` (a suite's ``engine_options``): their pydantic model,
which the suite loader validates against, and the checks the engine's constructor makes itself
(with the same one-line messages) when it is built directly. Explained in
``docs/engines/ray-sharded.md``.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

ACTORS_ENV = "MTLBENCH_RAY_ACTORS"
TRANSPORTS = ("auto", "shared_memory", "object_store", "collective")
GRAM_STRATEGIES = ("parameter", "gather")


class RayShardedOptions(BaseModel):
    """``engine_options`` of ``ray_sharded``: one field per keyword of the engine's constructor."""

    model_config = ConfigDict(extra="forbid")

    actors: int | None = Field(
        default=None,
        ge=1,
        description=(
            f"K, the number of Ray actors. Default: ${ACTORS_ENV}, else one per device besides "
            "the driver's share (the cluster's GPUs when gpus_per_actor > 0, else 2, less 1 "
            "when the driver shares); at most T, or T - 1 when the driver shares."
        ),
    )
    gram: Literal["parameter", "gather"] = Field(
        default="parameter",
        description=(
            "How the T x T Gram is assembled: 'parameter' (all-to-all by parameter shard, "
            "partial Grams summed) or 'gather' (every Jacobian row sent to the driver)."
        ),
    )
    cpus_per_actor: float = Field(default=1.0, ge=0, description="Ray CPUs reserved per actor.")
    gpus_per_actor: float = Field(default=0.0, ge=0, description="Ray GPUs reserved per actor.")
    threads_per_actor: int | None = Field(
        default=None,
        ge=1,
        description="torch threads per actor; default cpus_per_actor rounded, at least 1.",
    )
    chunk_size: int = Field(
        default=64,
        ge=1,
        description=(
            "Tasks per batched VJP on a worker; lower it when a worker's memory is short "
            "(on the CPU, 1, a plain VJP per task, ran fastest on the benchmark's MLP)."
        ),
    )
    shard_representation: bool = Field(
        default=False,
        description=(
            "Compute MGDA-UB's representation gradients on the actors (worth it only for heavy "
            "heads) instead of on the driver."
        ),
    )
    max_restarts: int = Field(
        default=3, ge=0, description="Actor failures survived within one step before giving up."
    )
    ready_timeout_s: float = Field(
        default=120.0, gt=0, description="Seconds allowed to place and start the actors."
    )
    transport: Literal["auto", "shared_memory", "object_store", "collective"] = Field(
        default="auto",
        description=(
            "How the exchange's bytes move: 'collective' (torch.distributed among the workers: "
            "NCCL on GPUs, gloo on CPUs), 'shared_memory' (one node-local arena), "
            "'object_store' (Ray's, works across machines) or 'auto' (collective for GPU "
            "actors; else shared memory when every actor is on the driver's machine and "
            "/dev/shm has room; else the object store)."
        ),
    )
    prefetch: bool = Field(
        default=True,
        description=(
            "Start the next step's exchange before the driver's forward once a step asked for "
            "the parameter-shard Gram (dropped uncharged when never asked for)."
        ),
    )
    driver_share: StrictBool | None = Field(
        default=None,
        description=(
            "Whether the driver computes rank 0's share of the tasks; default: when its device "
            "is of the actors' kind."
        ),
    )


def checked_options(**options: object) -> RayShardedOptions:
    """The engine's keywords checked (one-line ``engine_options.<name>: ...`` ValueErrors for
    the cases a suite author meets), then validated by ``RayShardedOptions``."""
    gram, transport = options.get("gram", "parameter"), options.get("transport", "auto")
    if gram not in GRAM_STRATEGIES:
        raise ValueError(f"engine_options.gram: expected 'parameter' or 'gather', got {gram!r}")
    if transport not in TRANSPORTS:
        raise ValueError(
            f"engine_options.transport: expected one of {', '.join(TRANSPORTS)}, got {transport!r}"
        )
    cpus, gpus = options.get("cpus_per_actor", 1.0), options.get("gpus_per_actor", 0.0)
    if transport == "shared_memory" and isinstance(gpus, int | float) and gpus > 0:
        raise ValueError(
            "engine_options.transport: shared_memory holds CPU tensors; GPU actors "
            "(gpus_per_actor > 0) use collective or object_store"
        )
    if any(isinstance(value, int | float) and value < 0 for value in (cpus, gpus)):
        raise ValueError("engine_options.cpus_per_actor / gpus_per_actor: must be >= 0")
    chunk_size = options.get("chunk_size", 64)
    if isinstance(chunk_size, int) and chunk_size < 1:
        raise ValueError(f"engine_options.chunk_size: must be >= 1, got {chunk_size}")
    driver_share = options.get("driver_share")
    if driver_share not in (None, True, False):
        raise ValueError(
            f"engine_options.driver_share: expected true, false or none (auto), "
            f"got {driver_share!r}"
        )
    actors = options.get("actors")
    if isinstance(actors, int) and actors < 1:
        raise ValueError(f"engine_options.actors: must be >= 1, got {actors}")
    return RayShardedOptions.model_validate(options)


def requested_actors(options: RayShardedOptions) -> int:
    """K as asked: the option, else ``$MTLBENCH_RAY_ACTORS``, else 0 (decided at start)."""
    requested = options.actors or int(os.environ.get(ACTORS_ENV, "0") or 0)
    if requested < 0:
        raise ValueError(f"{ACTORS_ENV}: must be >= 1, got {requested}")
    return requested
