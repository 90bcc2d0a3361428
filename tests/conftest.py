"""Test set-up: the tests folder on sys.path (for _problems/_method_checks), Ray and MLflow quiet.

Every Ray a test starts (through ``cluster._ray_setup.start_local`` or a plain ``ray.init()``)
is a single-machine cluster bound to 127.0.0.1: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set
here, before any test module imports Ray, and is inherited by every Ray process. Only because of
that may token authentication be off in tests (``RAY_AUTH_MODE=disabled``).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # allowed for a loopback-only Ray alone
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
