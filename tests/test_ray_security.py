"""Ray is not an open door: every Ray mtlbench (or a test) starts listens on loopback only.

Checked on the real listening sockets of Ray's processes (psutil), not on configuration:
- ``cluster._ray_setup.connect()`` with no address (what ``mtlbench run --executor ray`` and the
  ``ray_sharded`` engine do) starts a Ray whose every server is bound to 127.0.0.1, and keeps
  Ray's token authentication on (a fresh process, no ``RAY_*`` variables, its own HOME);
- a plain ``ray.init()`` inside the test session (as several test modules do) is loopback-only
  too: ``tests/conftest.py`` arranges it, which is what allows the tests to disable tokens.
The recipes' token set-up is checked in tests/test_cluster_recipes.py.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil


def listening_sockets(root_pid: int) -> list[tuple[str, str, int]]:
    """(process name, bound address, port) of every listening TCP socket of ``root_pid`` and its
    descendants (a driver that started Ray: GCS, raylet, agents and workers descend from it)."""
    root = psutil.Process(root_pid)
    pids = {root.pid, *(child.pid for child in root.children(recursive=True))}
    found = []
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.pid in pids:
            name = psutil.Process(connection.pid).name()
            found.append((name, connection.laddr.ip, connection.laddr.port))
    return found


def is_loopback(address: str) -> bool:
    parsed = ipaddress.ip_address(address)
    mapped = getattr(parsed, "ipv4_mapped", None)  # "::ffff:127.0.0.1": IPv4 loopback on v6
    return (mapped or parsed).is_loopback


def test_is_loopback_tells_loopback_from_all_interfaces() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.2", "::ffff:10.0.0.1"]))


DRIVER = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from test_ray_security import listening_sockets
import ray
from mtlbench.cluster._ray_setup import connect

started = connect(num_cpus=1)

@ray.remote
def auth_mode_of_a_worker():
    return os.environ.get("RAY_AUTH_MODE")

mode = ray.get(auth_mode_of_a_worker.remote())
print(json.dumps({"started": started, "worker_auth_mode": mode,
                  "sockets": listening_sockets(os.getpid())}))
ray.shutdown()
"""


def test_local_ray_of_mtlbench_listens_on_loopback_only_with_token_auth(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)  # Ray writes the token it creates under ~/.ray
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["started"] is True
    names = {name for name, _, _ in report["sockets"]}
    assert {"gcs_server", "raylet"} <= names, report["sockets"]  # Ray's servers were seen
    exposed = [s for s in report["sockets"] if not is_loopback(s[1])]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert report["worker_auth_mode"] == "token"
    token = (tmp_path / ".ray" / "auth_token").read_text()
    assert len(token) == 64


def test_plain_ray_init_in_the_test_session_is_loopback_only() -> None:
    import ray

    assert os.environ["RAY_AUTH_MODE"] == "disabled"  # tests/conftest.py: loopback, so allowed
    # sockets this test process held before Ray (e.g. a torch.distributed store left by an
    # earlier test) are not Ray's: only what ray.init opened is judged
    before = set(listening_sockets(os.getpid()))
    ray.init(num_cpus=1, include_dashboard=False)
    try:
        sockets = [s for s in listening_sockets(os.getpid()) if s not in before]
    finally:
        ray.shutdown()
    assert {"gcs_server", "raylet"} <= {name for name, _, _ in sockets}
    assert [s for s in sockets if not is_loopback(s[1])] == []
