"""Test set-up: the tests folder on sys.path (for _problems/_method_checks), Ray and MLflow quiet."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
