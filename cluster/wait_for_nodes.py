"""Wait until a Ray cluster has N live nodes: ``python -m mtlbench.cluster.wait_for_nodes``.

Used by the SLURM recipe between ``ray start`` on every node and the suite: the head may take a
few seconds to answer, and the workers to join. Exit code 0 when the nodes are there, 1 on
timeout (with one line saying how many joined).
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time


def live_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node["Alive"])


def wait_for_nodes(count: int, timeout_s: float, poll_s: float = 1.0) -> int:
    """Block until this (connected) driver sees ``count`` live nodes; returns how many it sees.

    Raises TimeoutError naming how many joined when ``timeout_s`` passes first (the caller
    adds the time allowed to the message).
    """
    deadline = time.monotonic() + timeout_s
    while (alive := live_nodes()) < count:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{alive} of {count} Ray nodes joined")
        time.sleep(poll_s)
    return alive


def head_answers(address: str, timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (the head's GCS port).

    Checked before ``ray.init``: against an address where nothing listens, ``ray.init`` keeps
    retrying for about a minute inside Ray before it raises, which would overrun short timeouts.
    """
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def connect_with_retry(address: str, timeout_s: float, poll_s: float = 2.0) -> None:
    """Connect to the head at ``address``, retrying while it is still starting."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        if head_answers(address):
            try:
                ray.init(address=address, logging_level=logging.ERROR)
                return
            except (ConnectionError, RuntimeError):
                pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no Ray head answered at {address}")
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="head address, host:port")
    parser.add_argument("--nodes", type=int, required=True, help="live nodes to wait for")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds")
    args = parser.parse_args(argv)
    import ray

    started = time.monotonic()
    try:
        connect_with_retry(args.address, args.timeout)
        alive = wait_for_nodes(args.nodes, max(args.timeout - (time.monotonic() - started), 0.0))
    except TimeoutError as error:
        print(f"wait_for_nodes: {error} within {args.timeout:g} s", file=sys.stderr)
        return 1
    finally:
        if ray.is_initialized():
            ray.shutdown()  # a connected driver: this only disconnects
    print(f"{alive} Ray nodes up at {args.address}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
